"""Representation and language-model metrics, each one pure function over arrays or tensors.

Representation metrics take numpy arrays of last-token states, ``(N, D)`` per language and layer,
row i of the English array parallel to row i of the L2 array. Language-model metrics take torch
tensors of logits or log-probabilities. Nothing here loads a model or knows about conditions; QA
scoring is in :mod:`tnedit.evaluate.answers`, output-language identification in
:mod:`tnedit.evaluate.langid`. torch is imported inside the language-model functions, so the
representation metrics run without it.
"""

from __future__ import annotations

from collections.abc import Sequence
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

