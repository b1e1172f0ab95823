"""Evaluation metrics, each one pure function over arrays or tensors.

Representation metrics take numpy arrays of last-token states, ``(N, D)`` per language and layer,
row i of the English array parallel to row i of the L2 array. Language-model metrics take torch
tensors of logits or log-probabilities. QA and language-ID metrics take strings. Nothing here
loads a model or knows about conditions; :mod:`tnedit.evaluate` feeds these functions.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# --- representation ------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def row_cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine between row i of ``x`` and row i of ``y`` (fp64)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"row_cosines: shapes differ {x.shape} vs {y.shape}")
    return np.sum(_unit_rows(x) * _unit_rows(y), axis=-1)


def mean_pair_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine over the parallel pairs (x_i, y_i)."""
    return float(np.mean(row_cosines(x, y)))


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (Sattolo's algorithm: one n-cycle)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never a fixed point
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def nonparallel_cosine(x: np.ndarray, y: np.ndarray, perm: np.ndarray) -> float:
    """Mean cosine over mismatched pairs (x_i, y_perm(i)): the floor for :func:`mean_pair_cosine`."""
    return mean_pair_cosine(x, np.asarray(y)[np.asarray(perm)])


def knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """For each row, the indices of its k most cosine-similar other rows (self excluded).

    Ties resolve to the lower index, so the result is deterministic.
    """
    n = x.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k-NN needs 0 < k < N, got k={k}, N={n}")
    u = _unit_rows(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mutual k-NN alignment: mean_i |kNN_x(i) ∩ kNN_y(i)| / k on L2-normalised rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("mutual_knn: x and y must have the same number of rows")
    nx, ny = knn_indices(x, k), knn_indices(y, k)
    overlap = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(nx, ny, strict=True)]
    return float(np.mean(overlap) / k)


def centroid_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine between the mean row of ``x`` and the mean row of ``y``."""
    cx = np.asarray(x, dtype=np.float64).mean(axis=0)
    cy = np.asarray(y, dtype=np.float64).mean(axis=0)
    return float(np.dot(cx, cy) / max(np.linalg.norm(cx) * np.linalg.norm(cy), 1e-24))


def centroid_cosine_matrix(groups: Sequence[np.ndarray]) -> np.ndarray:
    """(G, G) cosines between the centroids of ``groups``."""
    c = _unit_rows(np.stack([np.asarray(g, dtype=np.float64).mean(axis=0) for g in groups]))
    return c @ c.T


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project the rows of ``x`` onto its first two principal components (numpy SVD).

    Returns ``(coords (N, 2), explained variance ratio (2,))``. Each component's sign is fixed so
    that its largest-magnitude loading is positive, which makes the result deterministic.
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:2].copy()
    for i in range(comps.shape[0]):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    coords = xc @ comps.T
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    if coords.shape[1] < 2:  # one feature: pad the second axis
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        ratio = np.pad(ratio, (0, 2 - ratio.shape[0]))
    return coords, ratio


def mid_layers(num_layers: int) -> list[int]:
    """The middle third of the layers (at least one): where Type-1 edits should show."""
    lo = num_layers // 3
    hi = max(lo + 1, (2 * num_layers) // 3)
    return list(range(lo, min(hi, num_layers)))


# --- language model ------------------------------------------------------------------------------


def next_token_nll(logp: Any, input_ids: Any, attention_mask: Any) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of targets.

    ``logp`` holds the next-token log-probabilities at every real position of the batch, row-major
    (``log_softmax(logits[attention_mask.bool()])``, see :func:`real_logprobs`). Targets are the
    real tokens at positions ≥ 1: the first token (BOS where the tokenizer adds one) is never a
    target, and neither is padding. Works for right or left padding.
    """
    import torch

    mask = attention_mask.bool()
    pad = torch.zeros_like(mask[:, :1])
    next_ids = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)[mask]
    has_next = (torch.cat([mask[:, 1:], pad], dim=1) & mask)[mask]
    picked = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
    return float(-(picked[has_next]).double().sum()), int(has_next.sum())


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return float(np.exp(nll_sum / n_tokens)) if n_tokens else float("nan")


def real_logprobs(logits: Any, attention_mask: Any | None = None) -> Any:
    """(T_real, V) fp32 log-probabilities of the next token at every real position, row-major.

    ``logits`` is (B, T, V) with its ``attention_mask``, or already (T_real, V) rows (mask None).
    """
    import torch

    rows = logits if attention_mask is None else logits[attention_mask.bool()]
    return torch.log_softmax(rows.float(), dim=-1)


def kl_divergence(logp: Any, logq: Any) -> Any:
    """Per-row KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v) from log-probabilities (N, V).

    Terms in the inputs' precision, summed in fp64: identical inputs give exactly 0.
    """
    import torch

    return (logp.exp() * (logp - logq)).sum(-1, dtype=torch.float64)


def top1_agreement(logp: Any, logq: Any) -> Any:
    """Per-row bool: do P and Q have the same most likely next token?"""
    return logp.argmax(-1) == logq.argmax(-1)


def topk_logprobs(logp: Any, k: int) -> tuple[Any, Any]:
    """The k largest log-probabilities per row and their token ids (all of them when k ≥ V).

    Row 0 of the result's columns is the argmax, so top-1 agreement stays exact.
    """
    k = min(int(k), logp.shape[-1])
    values, index = logp.topk(k, dim=-1)
    return index, values


def kl_from_topk(index: Any, top_logp: Any, logq: Any) -> Any:
    """KL(P ‖ Q) with P known only on its top-k tokens plus one bucket for the rest.

    This is the exact KL between P and Q coarse-grained onto {top-k tokens of P, everything
    else}: a lower bound on the full KL (data-processing inequality), equal to it when k = V.
    """
    import torch

    top_logp = top_logp.double()
    logq_top = logq.double().gather(-1, index)
    kl = (top_logp.exp() * (top_logp - logq_top)).sum(-1)
    if index.shape[-1] < logq.shape[-1]:
        p_rest = (1.0 - top_logp.exp().sum(-1)).clamp(min=0.0)
        q_rest = (1.0 - logq_top.exp().sum(-1)).clamp(min=1e-300)
        rest = torch.where(p_rest > 0, p_rest * (torch.log(p_rest.clamp(min=1e-300)) - torch.log(q_rest)), 0.0)
        kl = kl + rest
    return kl


def top1_from_topk(index: Any, logq: Any) -> Any:
    return index[:, 0] == logq.argmax(-1)


# --- QA (SQuAD-style, per character for CJK) -----------------------------------------------------

CJK_LANGS = frozenset({"ja", "zh", "ko"})

ARTICLES: dict[str, frozenset[str]] = {
    "en": frozenset({"a", "an", "the"}),
    "fr": frozenset({"le", "la", "les", "l", "un", "une", "des"}),
    "de": frozenset({"der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "einer", "eines"}),
    "es": frozenset({"el", "la", "los", "las", "un", "una", "unos", "unas"}),
    "it": frozenset({"il", "lo", "la", "i", "gli", "le", "l", "un", "uno", "una"}),
    "nl": frozenset({"de", "het", "een"}),
}


def _is_cjk_char(ch: str) -> bool:
    return _script(ch) in ("kana", "han", "hangul")


def normalize_answer(text: str, lang: str) -> str:
    """Lower-case, drop punctuation (ASCII and Unicode P*), drop articles, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if (ch in string.punctuation or unicodedata.category(ch).startswith("P")) else ch for ch in text)
    articles = ARTICLES.get(lang, frozenset())
    return " ".join(w for w in text.split() if w not in articles)


def answer_tokens(text: str, lang: str) -> list[str]:
    """Tokens for F1: whitespace words; for ja/zh/ko every CJK character is its own token."""
    norm = normalize_answer(text, lang)
    if lang not in CJK_LANGS:
        return norm.split()
    tokens: list[str] = []
    for word in norm.split():
        run = ""
        for ch in word:
            if _is_cjk_char(ch):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(ch)
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


def token_f1(prediction: str, gold: str, lang: str) -> float:
    pred, ref = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, lang: str) -> float:
    return float(answer_tokens(prediction, lang) == answer_tokens(gold, lang))


def qa_scores(prediction: str, golds: Iterable[str], lang: str) -> tuple[float, float]:
    """(F1, EM), each the maximum over the gold answers."""
    golds = list(golds)
    if not golds:
        raise ValueError("qa_scores: no gold answers")
    return (
        max(token_f1(prediction, g, lang) for g in golds),
        max(exact_match(prediction, g, lang) for g in golds),
    )


# --- output-language identification by script ---------------------------------------------------

_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x3040, 0x30FF, "kana"),
    (0x31F0, 0x31FF, "kana"),
    (0xFF66, 0xFF9F, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xF900, 0xFAFF, "han"),
    (0x20000, 0x2FA1F, "han"),
    (0xAC00, 0xD7AF, "hangul"),
    (0x1100, 0x11FF, "hangul"),
    (0x3130, 0x318F, "hangul"),
    (0x0400, 0x052F, "cyrillic"),
)

LATIN_LANGS = ("en", "fr", "de", "es", "it", "nl")
SCRIPT_LANGS = {"ja": "ja", "ko": "ko", "zh": "zh", "ru": "ru"}

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are was of to in that it you i he she we they this with for not be have".split()),
    "fr": frozenset("le la les et est un une des du je il elle nous vous pas que qui dans pour avec ce sont".split()),
    "de": frozenset("der die das und ist nicht ich ein eine zu sie es mit den auf sich dem ich wir sind auch".split()),
    "es": frozenset("el la los las y es un una que no en por con se del lo para está son muy".split()),
    "it": frozenset("il lo la gli le e è un una di che non per con sono del della mi io ho".split()),
    "nl": frozenset("de het een en is van niet ik dat je op te met zijn ze er wat hij maar".split()),
}
# Letters that only some Latin-script languages use: a weak extra vote each.
_LETTER_HINTS: dict[str, str] = {"ß": "de", "ä": "de", "ö": "de", "ü": "de", "ñ": "es", "¿": "es", "¡": "es",
                                 "ç": "fr", "œ": "fr", "ê": "fr", "â": "fr", "î": "fr", "ò": "it", "ù": "it"}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _script(ch: str) -> str | None:
    cp = ord(ch)
    for lo, hi, name in _RANGES:
        if lo <= cp <= hi:
            return name
    if ch.isalpha():
        return "latin" if "LATIN" in unicodedata.name(ch, "") else "other"
    return None


def script_counts(text: str) -> Counter[str]:
    """Letters per script: kana, han, hangul, cyrillic, latin, other (digits and punctuation ignored)."""
    return Counter(s for s in (_script(ch) for ch in text) if s is not None)


def identify_language(text: str) -> str | None:
    """Script-based language ID: ja (kana present), zh (Han without kana), ko, ru, or for Latin
    script one of en fr de es it nl by stop words ("latin" when undecided); "other" for other
    scripts; None when the text has no letters."""
    counts = script_counts(text)
    if not counts:
        return None
    groups = {
        "cj": counts["kana"] + counts["han"],
        "hangul": counts["hangul"],
        "cyrillic": counts["cyrillic"],
        "latin": counts["latin"],
        "other": counts["other"],
    }
    top = max(groups, key=lambda g: (groups[g], g == "cj"))
    if top == "cj":
        return "ja" if counts["kana"] else "zh"
    if top == "hangul":
        return "ko"
    if top == "cyrillic":
        return "ru"
    if top == "other":
        return "other"
    words = [w.lower() for w in _WORD.findall(text)]
    votes = Counter({lang: sum(w in STOPWORDS[lang] for w in words) for lang in LATIN_LANGS})
    for ch in text.lower():
        if ch in _LETTER_HINTS:
            votes[_LETTER_HINTS[ch]] += 0.5
    ranked = votes.most_common()
    if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return "latin"
    return ranked[0][0]


def stays_in_language(detected: str | None, lang: str) -> bool | None:
    """Whether an output identified as ``detected`` is in ``lang``; None when undecidable
    (no letters, or Latin script without a clear stop-word winner for a Latin-script ``lang``)."""
    if detected is None:
        return None
    if detected == "latin":
        return None if lang in LATIN_LANGS else False
    return detected == lang


def output_language_share(texts: Sequence[str], lang: str) -> dict[str, Any]:
    """Share of ``texts`` identified as ``lang``, among those whose language could be decided."""
    detected = [identify_language(t) for t in texts]
    verdicts = [stays_in_language(d, lang) for d in detected]
    decided = [v for v in verdicts if v is not None]
    return {
        "share": (sum(decided) / len(decided)) if decided else None,
        "n": len(texts),
        "n_decided": len(decided),
        "counts": dict(sorted(Counter("none" if d is None else d for d in detected).items())),
    }
