#!/usr/bin/env python
"""Acceptance check: zero the top Type-1 neurons and compare with a random control.

Identifies Type-1 neurons of an L2 on the first ``--train`` Tatoeba pairs, then measures the mean
en–L2 last-token cosine over the middle layers (L/4 .. 3L/4 − 1) on held-out pairs (the rest of the
file) and on the built-in corpus, for: the original model, the top-k zeroed at the last token, and
k random neurons from the same candidate layers zeroed the same way. The edit is a forward pre-hook
on the down projections (``tnedit.edit.RuntimeEdit``, positions="last"), applied to the L2
sentences (``--edit-side l2``, default) or to both sides (``both``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def per_layer_cosine(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(0).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(REPO / ".cache" / "models" / "gemma3-270m"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tatoeba" / "en-ja.train.tsv"))
    ap.add_argument("--lang", default="ja")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edit-side", choices=["l2", "both"], default="l2")
    ap.add_argument("--neurons", default=None, help="use this neuron set instead of identifying")
    ap.add_argument("--out", default=None, help="write a JSON report here")
    ap.add_argument("--on", choices=["both", "heldout", "builtin"], default="both", help="evaluation sentences")
    args = ap.parse_args()

    import numpy as np

    from tnedit.corpus import load_corpus
    from tnedit.evaluate import last_token_states
    from tnedit.formats.neurons import load_neurons
    from tnedit.identify import IdentifySettings, random_control, run_identify
    from tnedit.model.loading import load_model
    from tnedit.reporting import NullReporter

    lm = load_model(args.model, device="cpu")
    corpus = load_corpus(args.data, ["en", args.lang])
    train, held = corpus.split(args.train)
    t0 = time.perf_counter()
    if args.neurons:
        top = load_neurons(args.neurons).top(args.k)
    else:
        settings = IdentifySettings(model=args.model, langs=[args.lang], type=1, k=args.k)
        top = run_identify(settings, lm=lm, corpus=train, reporter=NullReporter()).neuron_sets[(args.lang, 1)]
    t_identify = time.perf_counter() - t0
    ctrl = random_control(top, lm.num_layers, lm.intermediate_size, seed=args.seed)
    num = lm.num_layers
    mid = list(range(num // 4, (3 * num) // 4))
    report = {"model": args.model, "lang": args.lang, "k": len(top), "train_pairs": len(train),
              "identify_seconds": round(t_identify, 1), "per_layer_top": top.per_layer_counts(),
              "middle_layers": mid, "edit_side": args.edit_side, "sets": {}}
    print(f"identify on {len(train)} pairs: {t_identify:.1f}s; top-{len(top)} per layer: {top.per_layer_counts()}")
    builtin = load_corpus(None, ["en", args.lang])
    sets = {}
    if args.on in ("both", "heldout") and len(held):
        sets[f"held-out tatoeba ({len(held)} pairs)"] = (held.column("en"), held.column(args.lang))
    if args.on in ("both", "builtin"):
        sets[f"built-in corpus ({len(builtin)} pairs)"] = (builtin.column("en"), builtin.column(args.lang))
    for name, (en, l2) in sets.items():
        en_base = last_token_states(lm, en)
        l2_base = last_token_states(lm, l2)
        en_top = last_token_states(lm, en, top) if args.edit_side == "both" else en_base
        en_rand = last_token_states(lm, en, ctrl) if args.edit_side == "both" else en_base
        base = per_layer_cosine(en_base, l2_base)
        edit = per_layer_cosine(en_top, last_token_states(lm, l2, top))
        rand = per_layer_cosine(en_rand, last_token_states(lm, l2, ctrl))
        shuffled = per_layer_cosine(en_base, l2_base.roll(1, dims=0))  # non-parallel floor
        row = {
            "baseline": float(np.mean(base[mid])),
            "top_zeroed": float(np.mean(edit[mid])),
            "random_zeroed": float(np.mean(rand[mid])),
            "non_parallel": float(np.mean(shuffled[mid])),
            "per_layer": {"baseline": base.round(4).tolist(), "top_zeroed": edit.round(4).tolist(),
                          "random_zeroed": rand.round(4).tolist(), "non_parallel": shuffled.round(4).tolist()},
        }
        row["drop_top"] = row["baseline"] - row["top_zeroed"]
        row["drop_random"] = row["baseline"] - row["random_zeroed"]
        report["sets"][name] = row
        print(f"{name}: mid-layer en–{args.lang} cosine baseline {row['baseline']:.4f} | top-{len(top)} zeroed "
              f"{row['top_zeroed']:.4f} (drop {row['drop_top']:.4f}) | random zeroed {row['random_zeroed']:.4f} "
              f"(drop {row['drop_random']:.4f}) | non-parallel floor {row['non_parallel']:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
