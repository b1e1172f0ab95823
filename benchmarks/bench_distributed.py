#!/usr/bin/env python
"""Data-parallel identify on CPU: one process against ``torchrun --nproc-per-node 2``, measured in one run.

Both run the real ``tnedit identify`` on the same model (the real Gemma-3-270M from ``make models``, else
a random Llama of a few layers), sentences (``--n`` shared Tatoeba en–ja pairs) and settings
(``--type both --k 200``). The machine's cores are shared out the same way in both: the single process
gets every core as torch threads, each of the two ranks half of them. The order alternates over
``--repeats``; each figure is the median of the identify time that ``--json`` reports (model loading and
interpreter start are outside it) and of the wall time of the whole command.

Equality is checked on the outputs: the neuron lists in the same order, and the largest difference
between the scores files. The last line is machine-readable, e.g.
``ranks=2 speedup=1.42 wall_speedup=1.21 identify_s_1=41.0 identify_s_2=28.9 same_order=True max_score_diff=6e-11``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_identify import REPO, TATOEBA, default_model  # the same model and sentences as bench-identify


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: real Gemma-3-270M, else a random Llama)")
    ap.add_argument("--n", type=int, default=300, help="sentence pairs")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    return ap.parse_args()


def identify_command(model: str, n: int, batch_size: int, out: Path) -> list[str]:
    return ["identify", model, "--data", str(TATOEBA), "--limit", str(n), "--lang", "ja", "--type", "both",
            "--k", "200", "--batch-size", str(batch_size), "--device", "cpu", "-o", str(out), "--quiet", "--json"]


def timed(cmd: list[str], threads: int) -> tuple[float, float]:
    """(identify seconds from --json, wall seconds) of one command."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"command failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr[-2000:]}")
    return float(json.loads(run.stdout)["seconds"]), wall


def compare(one: Path, many: Path) -> tuple[bool, float]:
    """(same neurons in the same order for both types, largest score difference)."""
    import numpy as np
    from safetensors.numpy import load_file

    same = True
    for t in (1, 2):
        lists = [[(x["layer"], x["index"]) for x in json.loads((d / f"neurons-ja-type{t}.json").read_text())["neurons"]]
                 for d in (one, many)]
        same = same and lists[0] == lists[1]
    a, b = load_file(str(one / "scores-ja.safetensors")), load_file(str(many / "scores-ja.safetensors"))
    worst = max(float(np.nanmax(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    return same, worst


def main() -> None:
    args = parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    model = args.model or default_model(work)
    tnedit = [sys.executable, "-m", "tnedit"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
                "-m", "tnedit"]
    runs: dict[str, list[tuple[float, float]]] = {"one": [], "many": []}
    for r in range(args.repeats):
        for name in sorted(runs, reverse=bool(r % 2)):
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            if name == "one":
                runs[name].append(timed([*tnedit, *identify_command(model, args.n, args.batch_size, out)], cores))
            else:
                threads = max(1, cores // args.ranks)
                runs[name].append(timed([*torchrun, *identify_command(model, args.n, args.batch_size, out)], threads))
            print(f"run {r} {name}: identify {runs[name][-1][0]:.1f}s, wall {runs[name][-1][1]:.1f}s")
    same, worst = compare(work / "one", work / "many")
    one = [statistics.median(x[i] for x in runs["one"]) for i in (0, 1)]
    many = [statistics.median(x[i] for x in runs["many"]) for i in (0, 1)]
    print(f"model {model}; {args.n} pairs; --type both --k 200; {cores} cores: one process with {cores} threads, "
          f"{args.ranks} ranks with {max(1, cores // args.ranks)} each")
    print(f"ranks={args.ranks} speedup={one[0] / many[0]:.2f} wall_speedup={one[1] / many[1]:.2f} "
          f"identify_s_1={one[0]:.1f} identify_s_{args.ranks}={many[0]:.1f} same_order={same} "
          f"max_score_diff={worst:.2g}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
