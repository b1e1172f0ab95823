"""A second `tnedit apply` on the same local checkpoint ÷ `cp -r` of it, measured side by side in one run.

Builds (once, cached) a random Llama-shaped bf16 checkpoint of 1.2 GB in 3 shards, runs one warm-up apply
per edit to fill the digest cache (a fresh one under the work directory, never the user's), then times the
second apply of each edit against `cp -r`, alternating the order, and prints a last line:
``repeat-apply/copy=2.7 confined/copy=2.1 no-cache/copy=3.7 patched-sha256/copy=1.7 startup/copy=0.6 cores=2``.

- ``repeat-apply``: 1,000 neurons over every layer (as bench_apply), so every shard is edited: the
  sources' digests come from the cache, but each output is new and provenance records its SHA-256.
- ``confined``: 1,000 neurons in the layers of the last shard: the other two are untouched, so they
  are cloned (a reflink where the filesystem allows) or copied by the kernel without being read.
- ``no-cache``: ``repeat-apply`` with ``--no-cache``, as every apply was before the cache: each source is
  hashed too.
- ``patched-sha256``: SHA-256 of as many bytes as the edited outputs hold (what ``repeat-apply`` cannot
  avoid: provenance records each output's digest), on all cores, writing nothing, ÷ cp; ``startup``: the
  interpreter and the imports of apply, doing nothing, ÷ cp. Together they bound ``repeat-apply/copy``
  from below for any implementation in Python that records output digests.

Nothing but the source stays resident between commands: a kept 1.2 GB output made every later command
3-4x slower on the 2-core VM (fresh page-cache pages are slow to come by there), which hid apply's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_apply import CACHE, HASH_ONLY, build_checkpoint, neurons_csv, settle, timed

from tnedit.checkpoint import TIMESTAMP_GRANULARITY_NS, available_cores

# TinyLlama's widths with 11 layers: 1.23 GB in bf16, three shards of 398-418 MB.
SHAPE = dict(hidden=2048, intermediate=5632, layers=11, vocab=32000, heads=32, kv_heads=4)
SHARD_BYTES = 420_000_000
NAME = "llama-1.2b-3shards-bf16"


def wait_until_settled(src: Path) -> None:
    """A checkpoint written less than the timestamp granularity ago is racily clean: no digest of it is
    trusted (tnedit.checkpoint.digests). A user's checkpoint is older; wait until this one is too."""
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in src.iterdir())
    wait = (newest + TIMESTAMP_GRANULARITY_NS) / 1e9 - time.time() + 0.5
    if wait > 0:
        time.sleep(wait)


def down_proj_layers(src: Path, shard: str) -> list[int]:
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    return [i for i in range(SHAPE["layers"]) if index[f"model.layers.{i}.mlp.down_proj.weight"] == shard]


def recorded_weights(out: Path) -> dict[str, dict[str, object]]:
    return json.loads((out / "tnedit.json").read_text())["weights"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=CACHE / "work-repeat")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    src = CACHE / NAME
    if args.build_only:
        build_checkpoint(src, SHAPE, SHARD_BYTES)
        return
    if not (src / ".complete").is_file():
        subprocess.run([sys.executable, __file__, "--build-only"], check=True)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["TNEDIT_CACHE_DIR"] = str(work / "digest-cache")  # inherited by every apply below
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    edits = {
        "repeat-apply": neurons_csv(work / "spread.csv", args.neurons, shape=SHAPE),
        "confined": neurons_csv(work / "confined.csv", args.neurons, shape=SHAPE,
                                layers=down_proj_layers(src, shards[-1])),
    }
    tnedit = [sys.executable, "-m", "tnedit.cli"]
    commands = {"copy": ["cp", "-r", str(src), str(work / "out")]}
    commands |= {name: [*tnedit, "apply", str(src), str(csv), "-o", str(work / "out"), "--quiet"]
                 for name, csv in edits.items()}
    commands["no-cache"] = [*commands["repeat-apply"], "--no-cache"]
    wait_until_settled(src)
    subprocess.run(["cat", *map(str, src.glob("*"))], stdout=subprocess.DEVNULL, check=True)  # warm the cache

    # Warm-up: the first apply of each edit fills the digest cache. Only what it recorded is kept: a resident
    # copy of its output (1.2 GB more page cache) made every later cp -r and apply here 3-4x slower.
    reference: dict[str, dict[str, object]] = {}
    for name in edits:
        settle()
        timed(commands[name])
        reference[name] = recorded_weights(work / "out")
        shutil.rmtree(work / "out")
    reference["no-cache"] = reference["repeat-apply"]

    ratios: dict[str, list[float]] = {name: [] for name in commands if name != "copy"}
    hash_ratios, startup_ratios = [], []
    # The edited outputs' sizes, hashed from their page-cached sources: the bytes a second apply must hash.
    patched = [str(src / f) for f, entry in reference["repeat-apply"].items() if entry.get("edited_tensors")]
    for r in range(args.repeats):
        got = {}
        for name in sorted(commands, reverse=bool(r % 2)):  # alternate: neither always follows the other
            settle()
            got[name] = timed(commands[name]).wall_s
            if name != "copy" and recorded_weights(work / "out") != reference[name]:
                raise SystemExit(f"{name}: the second apply recorded other digests than the first")
            shutil.rmtree(work / "out")
        hashing = timed([sys.executable, "-c", HASH_ONLY, *patched]).wall_s
        startup = timed([sys.executable, "-c", "import tnedit.cli.apply, tnedit.edit.bake, tqdm"]).wall_s
        for name in ratios:
            ratios[name].append(got[name] / got["copy"])
        hash_ratios.append(hashing / got["copy"])
        startup_ratios.append(startup / got["copy"])
        print(f"run {r}: cp -r {got['copy']:.2f}s  second apply {got['repeat-apply']:.2f}s "
              f"(ratio {ratios['repeat-apply'][-1]:.2f})  confined {got['confined']:.2f}s "
              f"(ratio {ratios['confined'][-1]:.2f})  --no-cache {got['no-cache']:.2f}s  "
              f"sha256 of the {len(patched)} edited outputs {hashing:.2f}s  startup {startup:.2f}s")
    shutil.rmtree(work, ignore_errors=True)
    size_gb = sum((src / f).stat().st_size for f in shards) / 1e9
    print(f"checkpoint: {size_gb:.2f} GB in {len(shards)} shards; {args.neurons} neurons over all "
          f"{SHAPE['layers']} layers, or over the layers of {shards[-1]} (confined)")
    print(f"repeat-apply/copy={statistics.median(ratios['repeat-apply']):.2f} "
          f"confined/copy={statistics.median(ratios['confined']):.2f} "
          f"no-cache/copy={statistics.median(ratios['no-cache']):.2f} "
          f"patched-sha256/copy={statistics.median(hash_ratios):.2f} "
          f"startup/copy={statistics.median(startup_ratios):.2f} cores={available_cores()}")


if __name__ == "__main__":
    main()
