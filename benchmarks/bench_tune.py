#!/usr/bin/env python
"""How long does `tnedit tune` take on Gemma-3-270M with the 1,000 shared Tatoeba en–ja pairs, and what does it find?

Runs ``tnedit.tune.run_tune`` exactly as ``tnedit tune MODEL --lang ja --keep en --data en-ja.train.tsv
--max-neurons 500 --max-ppl-increase 0.10 -o OUT`` would (into a temporary directory), and prints the
wall time of each stage measured in the same run: identify (the candidate pool), the greedy rounds, the
Optuna trials and the validation check, then the chosen point and the front's best point.

Model: ``--model DIR``, default the real Gemma-3-270M from ``make models``. Data: ``--data``, default
the shared Tatoeba file. The target is ≤ 20 min on a 2-core CPU.

The last line is machine-readable, e.g. ``tune_s=780.1 target_ratio=2.0e+04 kept_ratio=1.05 n_neurons=350``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TATOEBA = REPO.parent / "shared" / "data" / "tatoeba" / "en-{lang}.train.tsv"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the real Gemma-3-270M)")
    ap.add_argument("--data", default=None, help="TSV with en and --lang columns (default: the shared Tatoeba file)")
    ap.add_argument("--lang", default="ja")
    ap.add_argument("--keep", default="en")
    ap.add_argument("--limit", type=int, default=None, help="pairs to read (default: all 1,000)")
    ap.add_argument("--max-neurons", type=int, default=500)
    ap.add_argument("--max-ppl-increase", type=float, default=0.10)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return ap.parse_args()


class StageClock:
    """A reporter that notes when each stage starts: identify's passes, then tune's progress bars."""

    def __init__(self, inner):
        self.inner, self.starts = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def progress(self, total, desc, unit="batch", initial=0):
        stage = desc.split(":", 1)[1].strip() if desc.startswith("tune:") else "identify (pool)"
        self.starts.setdefault(stage, time.perf_counter())
        return self.inner.progress(total, desc, unit=unit, initial=initial)

    def durations(self, end: float) -> dict[str, float]:
        """Seconds from each stage's start to the next's (the last one includes validation and writing)."""
        names, starts = list(self.starts), [*self.starts.values(), end]
        return {name: starts[i + 1] - starts[i] for i, name in enumerate(names)}


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tests.support.models import real_model_dir
    from tnedit.reporting import TqdmReporter
    from tnedit.tune.pipeline import run_tune
    from tnedit.tune.settings import TuneSettings

    model = args.model or str(real_model_dir("gemma3-270m"))
    data = args.data or str(TATOEBA).replace("{lang}", args.lang)
    clock = StageClock(TqdmReporter())
    with tempfile.TemporaryDirectory() as tmp:
        settings = TuneSettings(model=model, lang=args.lang, keep=args.keep.split(","), data=[data], limit=args.limit,
                                max_neurons=args.max_neurons, max_ppl_increase=args.max_ppl_increase,
                                output=str(Path(tmp) / "out"))
        started = time.perf_counter()
        result = run_tune(settings, reporter=clock)
        total = time.perf_counter() - started
    stages = clock.durations(started + total)
    best = max((p for p in result.points if p.feasible), key=lambda p: p.target_ratio)
    chosen = result.chosen
    print(f"model {model}; data {data}; {torch.get_num_threads()} threads")
    for name, seconds in stages.items():
        print(f"  {name:<16} {seconds:7.1f} s  ({seconds / total:.0%})")
    print(f"  total            {total:7.1f} s  (target ≤ 1200 s on 2 cores)")
    print(f"front's best point within the calibration budget: {best.measurement.label}, {best.measurement.prefix} "
          f"neurons, {args.lang} ×{best.target_ratio:.3g}, worst kept ×{best.worst_kept:.4f}")
    print(f"chosen: {chosen.measurement.label}, {chosen.measurement.prefix} neurons, {args.lang} "
          f"×{chosen.target_ratio:.3g}, worst kept ×{chosen.worst_kept:.4f}; validation {chosen.validation}")
    print(f"tune_s={total:.1f} target_ratio={chosen.target_ratio:.3g} kept_ratio={chosen.worst_kept:.4f} "
          f"n_neurons={chosen.measurement.prefix}")


if __name__ == "__main__":
    main()
