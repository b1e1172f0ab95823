#!/usr/bin/env python
"""How much does `identify` cost beyond the forward passes it cannot avoid?

What is compared, on the same sentences, batch size, dtype and device:

* **identify**: ``tnedit.identify.run_identify`` for one language, Type-1 (centroid pass over the N
  English + N L2 sentences with hooks and fp64 sums, score pass over the N L2 sentences with the
  vectorised score, then η² and the global top-k). No files are written.
* **plain**: the same two passes as plain batched forward passes of the base model (no LM head,
  no hooks): 2N sentences, then N sentences, with the same right-padded batches.
  ``identify/forward`` = identify wall time ÷ plain wall time (target ≤ 1.25).
* **reference**: the structure of the paper's code — one sentence at a time (batch size 1), and for
  every layer the d × m matrix R + a_i v_i is materialised to take its cosine with the centroid.
  Timed on a subset (``--reference-n``) and extrapolated per sentence to the full run (2N centroid
  forwards + N scoring steps). ``speedup_vs_reference`` = reference estimate ÷ identify.

Model: ``--model DIR``; default the real Gemma-3-270M from ``make models`` when present, else a
random Llama of a few layers. ``--random-llama8b`` builds a randomly initialised Llama-3-8B-shaped
model (hidden 4096, intermediate 14336, 32 layers, vocab 128256, bf16) from a LlamaConfig, no
download; use it on a GPU. Sentences: ``--data`` (TSV), default the shared Tatoeba en–ja file when
present, else the built-in corpus.

Several GPUs: run the script under the launcher, e.g.
``torchrun --standalone --nproc-per-node 8 benchmarks/bench_identify.py --random-llama8b --device cuda``
(``make bench-identify-gpus GPUS=8``). Each rank takes its share of the batches, identify adds the ranks'
sums, the plain passes run the same shares, and rank 0 prints; ``sentences_per_s`` is then of all ranks.

The last line is machine-readable, e.g.
``identify/forward=1.12 speedup_vs_reference=35.2 sentences_per_s=40.1 ranks=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TATOEBA = REPO.parent / "shared" / "data" / "tatoeba" / "en-ja.train.tsv"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: real Gemma-3-270M, else a random Llama)")
    ap.add_argument("--random-llama8b", action="store_true", help="random Llama-3-8B-shaped model (bf16), no download")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", default="auto", help="auto (checkpoint's; bf16 for --random-llama8b), float32, bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=200, help="sentence pairs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reference-n", type=int, default=6, help="sentences timed for the reference loop")
    ap.add_argument("--data", default=None, help="TSV with en and ja columns")
    ap.add_argument("--lang", default="ja")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return ap.parse_args()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_random_llama(args, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.tiny import make_tokenizer
    from tnedit.architectures import get_architecture
    from tnedit.model.loading import LoadedModel

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 128),
        num_key_value_heads=max(1, args.hidden // 512), max_position_embeddings=8192, rope_theta=500000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    tok = make_tokenizer(add_bos=True)
    tok.padding_side = "right"
    name = f"random-llama(h{args.hidden},m{args.intermediate},L{args.layers})"
    return LoadedModel(model=model, tokenizer=tok, arch=get_architecture("llama"), config=cfg.to_dict(),
                       name_or_path=name)


def default_model(tmp: Path) -> str:
    from tests.support.models import MARKER, models_cache

    real = models_cache() / "gemma3-270m"
    if (real / MARKER).is_file():
        return str(real)
    from tests.support.tiny import make_tiny

    return str(make_tiny("llama", tmp, subdir="bench-llama", num_hidden_layers=6, hidden_size=256,
                         intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4))


def load_pairs(args):
    from tnedit.corpus import load_corpus

    data = args.data or (str(TATOEBA) if TATOEBA.is_file() else None)
    corpus = load_corpus(data, ["en", args.lang])
    if len(corpus) > args.n:
        corpus = corpus.slice(0, args.n)
    return corpus


def plain_passes(lm, texts_list, batch_size, device, world=None) -> float:
    """Seconds of plain forward passes; under a launcher each rank runs its share and the slowest counts."""
    import torch

    from tnedit.model.batching import encode_batches
    from tnedit.model.distributed import SINGLE

    world = world or SINGLE
    base = lm.base_model()
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for texts in texts_list:
            for batch in encode_batches(lm.tokenizer, texts, batch_size, lm.device, only=world.owns):
                base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    sync(device)
    world.step_done()  # waits for every rank
    return time.perf_counter() - t0


def reference_loop(lm, en, l2, centroids, device) -> tuple[float, float]:
    """Seconds per sentence: (bs-1 centroid forward, bs-1 forward + materialised scores)."""
    import torch

    from tnedit.model.batching import encode_batches
    from tnedit.model.capture import LastTokenCapture

    layers = list(range(lm.num_layers))
    cents = {layer: torch.as_tensor(centroids[layer], device=lm.out_proj(layer).weight.device).float()
             for layer in layers}
    sync(device)
    t0 = time.perf_counter()
    with LastTokenCapture(lm, ["h"], layers) as cap:
        for s in en:
            cap.run(next(encode_batches(lm.tokenizer, [s], 1, lm.device)))
    sync(device)
    t_centroid = (time.perf_counter() - t0) / len(en)
    sums = {layer: None for layer in layers}
    t0 = time.perf_counter()
    with LastTokenCapture(lm, ["r", "a"], layers) as cap, torch.inference_mode():
        for s in l2:
            st = cap.run(next(encode_batches(lm.tokenizer, [s], 1, lm.device)))
            for layer in layers:
                w = lm.out_proj(layer).weight
                v = (w if lm.arch.layout == "linear" else w.t()).float()
                if layer in st.out_scale:
                    v = v * st.out_scale[layer][0].float().unsqueeze(1)
                r = st.r[layer][0].float()
                c = cents[layer]
                moved = r.unsqueeze(1) + v * st.a[layer][0].float().unsqueeze(0)  # d × m: R + a_i v_i
                score = (c @ moved) / (c.norm() * moved.norm(dim=0)) - (c @ r) / (c.norm() * r.norm())
                sums[layer] = score if sums[layer] is None else sums[layer] + score
    sync(device)
    t_score = (time.perf_counter() - t0) / len(l2)
    return t_centroid, t_score


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile

    import torch

    from tnedit.identify.pipeline import run_identify
    from tnedit.identify.settings import IdentifySettings, default_layers
    from tnedit.model.distributed import join_world, leave_world
    from tnedit.model.loading import load_model, parse_dtype, pick_device
    from tnedit.reporting import NullReporter

    if args.threads:
        torch.set_num_threads(args.threads)
    world = join_world(args.device)  # under torchrun: before the model, so each rank builds it on its own GPU

    def say(line: str) -> None:
        if world.is_main:  # rank 0 reports for every rank
            print(line)

    device = pick_device(args.device)
    if device.type == "cuda" and world.is_distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    tmp = Path(tempfile.mkdtemp(prefix="bench-identify-"))
    t_load = time.perf_counter()
    if args.random_llama8b:
        dtype = parse_dtype(args.dtype)
        lm = build_random_llama(args, device, torch.bfloat16 if dtype == "auto" else dtype)
    else:
        model = args.model or default_model(tmp)
        lm = load_model(model, dtype=args.dtype, device=str(device))
    t_load = time.perf_counter() - t_load
    corpus = load_pairs(args)
    en, l2 = corpus.column("en"), corpus.column(args.lang)
    n = len(l2)
    say(f"model: {lm.name_or_path} ({lm.arch.name}, {lm.num_layers} layers, hidden {lm.hidden_size}, "
          f"intermediate {lm.intermediate_size}, {str(lm.dtype).replace('torch.', '')}) on {device}; "
          f"loaded in {t_load:.1f}s; threads {torch.get_num_threads()}")
    say(f"data: {corpus.source}: {n} en–{args.lang} pairs; batch size {args.batch_size}")

    # warm-up: kernels, allocator, tokenizer caches
    plain_passes(lm, [l2[: 2 * args.batch_size]], args.batch_size, device, world)
    k = min(1000, len(default_layers(1, lm.num_layers)) * lm.intermediate_size)
    settings = IdentifySettings(model=lm.name_or_path, langs=[args.lang], type=1, k=k, batch_size=args.batch_size)
    quiet = NullReporter()
    warm = corpus.slice(0, min(n, max(10, args.batch_size)))
    run_identify(settings, lm=lm, corpus=warm, reporter=quiet)

    t_plain_a = plain_passes(lm, [en + l2, l2], args.batch_size, device, world)
    sync(device)
    t0 = time.perf_counter()
    result = run_identify(settings, lm=lm, corpus=corpus, reporter=quiet)
    sync(device)
    t_identify = time.perf_counter() - t0
    t_plain_b = plain_passes(lm, [en + l2, l2], args.batch_size, device, world)
    t_plain = min(t_plain_a, t_plain_b)
    say(f"plain forward passes (2N + N = {3 * n} sentences, no hooks): {t_plain:.2f}s "
          f"(runs: {t_plain_a:.2f}s, {t_plain_b:.2f}s)")
    say(f"identify (centroid pass 2N + score pass N, fp64 statistics): {t_identify:.2f}s")

    ref_n = max(1, min(args.reference_n, n))
    t_c1, t_s1 = reference_loop(lm, en[:ref_n], l2[:ref_n], result.stats[args.lang].centroids[1], device)
    t_reference = 2 * n * t_c1 + n * t_s1
    say(f"reference loop (batch 1, materialised R + a_i v_i), timed on {ref_n} sentences: "
          f"{t_c1 * 1000:.1f} ms/centroid sentence, {t_s1 * 1000:.1f} ms/scored sentence → "
          f"{t_reference:.1f}s estimated for the full run")
    counts = result.neuron_sets[(args.lang, 1)].per_layer_counts()
    say(f"top-{k} Type-1 per layer: {counts}")
    ratio = t_identify / t_plain
    speedup = t_reference / t_identify
    per_s = 3 * n / t_identify
    say(f"identify/forward={ratio:.2f} speedup_vs_reference={speedup:.1f} sentences_per_s={per_s:.1f} "
          f"ranks={world.size}")
    leave_world()


if __name__ == "__main__":
    main()
