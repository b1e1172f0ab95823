"""From accumulated states and counts to the report's numbers: per-condition summaries and the headline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tnedit.evaluate.metrics import (
    centroid_cosine,
    centroid_cosine_matrix,
    mean_pair_cosine,
    mutual_knn,
    nonparallel_cosine,
    pca_2d,
    perplexity,
)
from tnedit.evaluate.passes import Accumulator, Condition
from tnedit.evaluate.settings import EvaluateSettings
from tnedit.evaluate.tables import conditions


def pca_layer_choice(n_layers: int, count: int) -> list[int]:
    """``count`` layers spread evenly from the first to the last (all of them when there are fewer)."""
    return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, min(count, n_layers))})


def _representation(acc: Accumulator, english: str, lang: str, n_layers: int, perm: np.ndarray,
                    k: int) -> dict[str, list[float]]:
    x, y = acc.h[english], acc.h[lang]
    return {
        "cos_parallel": [mean_pair_cosine(x[i], y[i]) for i in range(n_layers)],
        "cos_nonparallel": [nonparallel_cosine(x[i], y[i], perm) for i in range(n_layers)],
        "mutual_knn": [mutual_knn(x[i], y[i], k) for i in range(n_layers)],
        "centroid_cos": [centroid_cosine(x[i], y[i]) for i in range(n_layers)],
    }


def _pca_and_centroids(acc: Accumulator, langs: list[str], layers: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    pca: dict[str, Any] = {"layers": layers, "languages": langs, "n_per_language": acc.sizes[langs[0]],
                           "coords": [], "explained": []}
    centroids: dict[str, Any] = {"layers": layers, "languages": langs, "matrices": []}
    for layer in layers:
        stacked = np.concatenate([acc.h[lang][layer] for lang in langs])
        coords, ratio = pca_2d(stacked)
        pca["coords"].append(np.round(coords, 5).tolist())
        pca["explained"].append([float(r) for r in ratio])
        centroids["matrices"].append(centroid_cosine_matrix([acc.h[lang][layer] for lang in langs]).tolist())
    return pca, centroids


def _lm_stats(acc: Accumulator, cond: Condition, langs: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for lang in langs:
        n_pos = acc.n_positions[lang]
        compared = cond.name != "original" and n_pos > 0
        out[lang] = {
            "perplexity": perplexity(acc.nll[lang], acc.n_tokens[lang]),
            "nll_sum": acc.nll[lang],
            "n_tokens": acc.n_tokens[lang],
            "kl": acc.kl[lang] / n_pos if compared else None,
            "top1": acc.top1[lang] / n_pos if compared else None,
            "n_positions": n_pos,
        }
    return out


def summarise_condition(acc: Accumulator, cond: Condition, s: EvaluateSettings, n_layers: int,
                        perm: np.ndarray, gen: dict[str, Any]) -> dict[str, Any]:
    """One condition's block of the report: representation per layer, PCA, centroids, LM metrics, generation."""
    en = s.english
    k = min(s.knn_k, acc.sizes[en] - 1)
    langs = [en, *s.languages]
    pca, centroids = _pca_and_centroids(acc, langs, pca_layer_choice(n_layers, s.pca_layers))
    return {
        "name": cond.name,
        "source": cond.kind,
        "positions": cond.positions,
        "n_neurons": cond.n_neurons,
        "kl_method": acc.kl_method,
        "representation": {lang: _representation(acc, en, lang, n_layers, perm, k) for lang in s.languages},
        "centroids": centroids,
        "pca": pca,
        "lm": _lm_stats(acc, cond, langs),
        "knn_k": k,
        **gen,
    }


def headline_rows(data: dict[str, Any], english: str, languages: Sequence[str]) -> list[dict[str, Any]]:
    """One row per condition and L2: mid-layer similarity (and its change), perplexity, KL, top-1, QA, language."""
    mids = data["mid_layers"]
    rows = []
    orig = data["conditions"]["original"]
    for name in conditions(data):
        c = data["conditions"][name]
        for lang in languages:
            rep = c["representation"][lang]
            mid = float(np.mean([rep["cos_parallel"][i] for i in mids]))
            base = float(np.mean([orig["representation"][lang]["cos_parallel"][i] for i in mids]))
            qa = c.get("qa", {}).get(lang) or {}
            floor = float(np.mean([rep["cos_nonparallel"][i] for i in mids]))
            rows.append({
                "condition": name,
                "lang": lang,
                "n_neurons": c["n_neurons"],
                "mid_cos": mid,
                "mid_cos_delta": mid - base,
                "mid_floor": floor,
                "mid_margin": mid - floor,
                "mid_knn": float(np.mean([rep["mutual_knn"][i] for i in mids])),
                "ppl_en": c["lm"][english]["perplexity"],
                "ppl_l2": c["lm"][lang]["perplexity"],
                "kl_en": c["lm"][english]["kl"],
                "kl_l2": c["lm"][lang]["kl"],
                "top1_en": c["lm"][english]["top1"],
                "top1_l2": c["lm"][lang]["top1"],
                "qa_f1": qa.get("f1"),
                "qa_em": qa.get("em"),
                "lang_share": c["output_language"][lang]["share"],
            })
    return rows


def edit_target(data: dict[str, Any], english: str, languages: Sequence[str]) -> str | None:
    """The language the edit is meant to break: its neuron set's (when evaluated here), else the first L2.

    None when the set names a language this evaluation did not read (every language read is then kept).
    """
    method = (data.get("edit") or {}).get("method") or {}
    named = method.get("language")
    if isinstance(named, str) and named:
        return named if named in (english, *languages) else None
    return languages[0] if languages else None


def _before_after(original: dict[str, Any], condition: dict[str, Any], key: str, langs: Sequence[str],
                  field: str) -> dict[str, dict[str, Any]]:
    def value(block: dict[str, Any], lang: str) -> Any:
        return ((block.get(key) or {}).get(lang) or {}).get(field)

    return {lang: {"original": value(original, lang), "edited": value(condition, lang)} for lang in langs}


def selectivity_rows(data: dict[str, Any], english: str, languages: Sequence[str]) -> list[dict[str, Any]]:
    """Per edited condition: the target's perplexity ratio against the worst kept language's, QA and stays."""
    target = edit_target(data, english, languages)
    langs = [english, *languages]
    kept = [lang for lang in langs if lang != target]
    original = data["conditions"]["original"]
    rows = []
    for name in conditions(data):
        if name == "original":
            continue
        c = data["conditions"][name]
        ratios = {lang: c["lm"][lang]["perplexity"] / original["lm"][lang]["perplexity"] for lang in langs}
        worst = max(kept, key=lambda lang: ratios[lang])
        ordered = ([target] if target else []) + kept
        rows.append({
            "condition": name,
            "target": target,
            "kept": kept,
            "ppl_ratio": ratios,
            "target_ppl_ratio": ratios[target] if target else None,
            "worst_kept": worst,
            "worst_kept_ppl_ratio": ratios[worst],
            "selectivity": ratios[target] / ratios[worst] if target else None,
            "qa_f1": _before_after(original, c, "qa", ordered, "f1"),
            "stays": _before_after(original, c, "output_language", ordered, "share"),
        })
    return rows
