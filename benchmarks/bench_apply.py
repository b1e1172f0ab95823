"""apply time ÷ `cp -r` of the same checkpoint, and apply's peak RSS, measured in one run.

Builds (once, cached) a random Llama-shaped bf16 checkpoint of >= 2 GB in several shards, edits
1,000 neurons spread over all layers with the real `tnedit apply` command, and prints a last line:
``apply/copy=1.10 peak_rss_mb=450 largest_tensor_mb=64 baseline_rss_mb=60 sha256/copy=0.90 cores=8``.

``sha256/copy`` is a lower bound measured in the same run: SHA-256 of every shard (which
provenance requires apply to record) on all cores, writing nothing, divided by cp's wall time. A
file's digest cannot be split across cores, so where this exceeds 1.3 no implementation that
records output digests can reach apply/copy 1.3 on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tnedit.checkpoint import available_cores

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TNEDIT_BENCH_CACHE", ROOT / ".cache" / "bench"))
# TinyLlama-1.1B shape: 22 layers, hidden 2048, intermediate 5632, vocab 32000 → 2.2 GB in bf16.
SHAPE = dict(hidden=2048, intermediate=5632, layers=22, vocab=32000, heads=32, kv_heads=4)
SHARD_BYTES = 800 * 1024 * 1024


def tensor_shapes(s: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    head_dim = s["hidden"] // s["heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], s["hidden"]))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (s["hidden"],)),
            (f"{p}.self_attn.q_proj.weight", (s["hidden"], s["hidden"])),
            (f"{p}.self_attn.k_proj.weight", (s["kv_heads"] * head_dim, s["hidden"])),
            (f"{p}.self_attn.v_proj.weight", (s["kv_heads"] * head_dim, s["hidden"])),
            (f"{p}.self_attn.o_proj.weight", (s["hidden"], s["hidden"])),
            (f"{p}.post_attention_layernorm.weight", (s["hidden"],)),
            (f"{p}.mlp.gate_proj.weight", (s["intermediate"], s["hidden"])),
            (f"{p}.mlp.up_proj.weight", (s["intermediate"], s["hidden"])),
            (f"{p}.mlp.down_proj.weight", (s["hidden"], s["intermediate"])),
        ]
    out += [("model.norm.weight", (s["hidden"],)), ("lm_head.weight", (s["vocab"], s["hidden"]))]
    return out


def build_checkpoint(path: Path, shape: dict[str, int] = SHAPE, shard_bytes: int = SHARD_BYTES) -> Path:
    """Random bf16 weights written shard by shard, so building needs about one shard of memory."""
    marker = path / ".complete"
    if marker.is_file():
        return path
    import torch
    from safetensors.torch import save_file

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, dims in tensor_shapes(shape):
        t = (torch.randn(dims, generator=gen) * 0.02).to(torch.bfloat16)
        if size + t.numel() * 2 > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * 2
        shards[i - 1] = {}
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "vocab_size": shape["vocab"],
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    marker.write_text("ok\n")
    return path


def neurons_csv(path: Path, n: int, seed: int = 0, shape: dict[str, int] = SHAPE,
                layers: list[int] | None = None) -> Path:
    """``n`` random neurons spread over ``layers`` (default: every layer), as a layer,index CSV."""
    rng = random.Random(seed)
    chosen = layers if layers is not None else list(range(shape["layers"]))
    picks = rng.sample(range(len(chosen) * shape["intermediate"]), n)
    rows = sorted((chosen[p // shape["intermediate"]], p % shape["intermediate"]) for p in picks)
    path.write_text("layer,index\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def timed(cmd: list[str]) -> Timing:
    """Wall seconds, CPU seconds (user + system) and peak RSS of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return Timing(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


# SHA-256 of every shard, one file per core at a time: the hashing that provenance obliges apply to do.
HASH_ONLY = """
import sys
from pathlib import Path

from tnedit.checkpoint import available_cores
from tnedit.checkpoint import sha256_files
sha256_files([Path(f) for f in sys.argv[1:]])
"""


def settle(seconds: float = 3.0) -> None:
    """Flush dirty pages and let the disk finish (writeback, discards of deleted copies), so neither
    command pays for the other's I/O; without the pause, timings here varied threefold."""
    os.sync()
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=CACHE / "work")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build_checkpoint(CACHE / "llama-1.1b-bf16")
        return

    src = CACHE / "llama-1.1b-bf16"
    if not (src / ".complete").is_file():  # build in a child: ru_maxrss survives fork+exec
        subprocess.run([sys.executable, __file__, "--build-only"], check=True)
    size_gb = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1e9
    n_shards = len(list(src.glob("*.safetensors")))
    csv = neurons_csv(CACHE / "neurons-1000.csv", args.neurons)
    largest_mb = SHAPE["hidden"] * SHAPE["intermediate"] * 2 / 2**20
    tnedit = [sys.executable, "-m", "tnedit.cli"]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["cat", *map(str, src.glob("*"))], stdout=subprocess.DEVNULL, check=True)  # warm the cache

    baseline = timed([sys.executable, "-c", "import tnedit.cli.apply, tnedit.edit, safetensors.numpy, tqdm"])
    cores = available_cores()
    shards = sorted(map(str, src.glob("*.safetensors")))
    ratios, hash_ratios, rss = [], [], []
    commands = {
        "copy": ["cp", "-r", str(src), str(work / "out")],
        "apply": [*tnedit, "apply", str(src), str(csv), "-o", str(work / "out"), "--quiet"],
    }
    for r in range(args.repeats):
        # Each command starts from the same state: the other's output deleted and flushed. The order
        # alternates, so neither always inherits memory that the other has just released.
        got = {}
        for name in sorted(commands, reverse=bool(r % 2)):
            settle()
            got[name] = timed(commands[name])
            shutil.rmtree(work / "out")
        copy, apply = got["copy"], got["apply"]
        hashing = timed([sys.executable, "-c", HASH_ONLY, *shards])
        ratios.append(apply.wall_s / copy.wall_s)
        hash_ratios.append(hashing.wall_s / copy.wall_s)
        rss.append(apply.peak_rss_mb)
        print(
            f"run {r}: cp -r {copy.wall_s:.2f}s  apply {apply.wall_s:.2f}s  ratio {ratios[-1]:.2f}  "
            f"sha256 only {hashing.wall_s:.2f}s ({hashing.cpu_s:.2f} cpu-s)  sha256/copy {hash_ratios[-1]:.2f}  "
            f"peak {apply.peak_rss_mb:.0f} MB"
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"checkpoint: {size_gb:.2f} GB in {n_shards} shards, {args.neurons} neurons over {SHAPE['layers']} layers")
    print(
        f"apply/copy={statistics.median(ratios):.2f} peak_rss_mb={max(rss):.0f} "
        f"largest_tensor_mb={largest_mb:.0f} baseline_rss_mb={baseline.peak_rss_mb:.0f} "
        f"sha256/copy={statistics.median(hash_ratios):.2f} cores={cores}"
    )


if __name__ == "__main__":
    main()
