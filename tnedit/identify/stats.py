"""Statistics for language specificity: the correlation ratio η² and its one-way ANOVA F-test.

The paper reports the share of selected neurons whose activation separates English from L2
sentences (η² > 0.1, p < .05). η² comes from running fp64 sums, so no per-sentence activations are
kept; the p-value uses scipy when it is installed and an own incomplete-beta function otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tnedit.formats.neurons import Neuron

ETA2_THRESHOLD = 0.1
P_THRESHOLD = 0.05


def eta_squared(values: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[Any]) -> np.ndarray:
    """Correlation ratio η² = SS_between / SS_total of ``values`` grouped by ``labels``.

    ``values`` is (N,) or (N, k) (one column per neuron); returns a float or a (k,) array.
    """
    x = np.asarray(values, dtype=np.float64)
    lab = np.asarray(labels)
    mean = x.mean(axis=0)
    ss_total = ((x - mean) ** 2).sum(axis=0)
    ss_between = np.zeros_like(mean)
    for g in np.unique(lab):
        xg = x[lab == g]
        ss_between = ss_between + len(xg) * (xg.mean(axis=0) - mean) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = np.where(ss_total > 0, ss_between / np.where(ss_total > 0, ss_total, 1.0), 0.0)
    return eta


def eta_squared_from_sums(
    sum_a: np.ndarray, sumsq_a: np.ndarray, n_a: int, sum_b: np.ndarray, sumsq_b: np.ndarray, n_b: int
) -> np.ndarray:
    """η² for two groups from running fp64 sums and sums of squares (no per-sentence dumps)."""
    n = n_a + n_b
    total = sum_a + sum_b
    mean = total / n
    ss_total = sumsq_a + sumsq_b - total * total / n
    ss_between = n_a * (sum_a / n_a - mean) ** 2 + n_b * (sum_b / n_b - mean) ** 2
    ok = ss_total > 1e-12 * np.maximum(sumsq_a + sumsq_b, 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = np.where(ok, ss_between / np.where(ok, ss_total, 1.0), 0.0)
    return np.clip(eta, 0.0, 1.0)


def _betacf(a: float, b: float, x: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), vectorised."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < tiny, tiny, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, iterations + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-15):
            break
    return h


def betainc_regularized(a: float, b: float, x: np.ndarray | float) -> np.ndarray:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes 6.4), vectorised in x."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    out = np.empty_like(x)
    edge0, edge1 = x <= 0.0, x >= 1.0
    inner = ~(edge0 | edge1)
    out[edge0], out[edge1] = 0.0, 1.0
    xi = x[inner]
    if xi.size:
        ln_bt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * np.log(xi) + b * np.log1p(-xi)
        bt = np.exp(ln_bt)
        direct = xi < (a + 1.0) / (a + b + 2.0)
        res = np.empty_like(xi)
        if direct.any():
            res[direct] = bt[direct] * _betacf(a, b, xi[direct]) / a
        if (~direct).any():
            res[~direct] = 1.0 - bt[~direct] * _betacf(b, a, 1.0 - xi[~direct]) / b
        out[inner] = res
    return out


def f_test_pvalue(
    eta2: np.ndarray | float, n_total: int, groups: int = 2, *, use_scipy: bool | None = None
) -> np.ndarray:
    """One-way ANOVA p-value for a correlation ratio η² over ``n_total`` samples in ``groups`` groups.

    ``F = (η² / (g − 1)) / ((1 − η²) / (N − g))``; p = P(F(g−1, N−g) > F). Uses scipy.stats when
    importable (``use_scipy=None``), else the regularized incomplete beta function above.
    """
    eta = np.clip(np.asarray(eta2, dtype=np.float64), 0.0, 1.0)
    d1, d2 = float(groups - 1), float(n_total - groups)
    if d2 <= 0:
        return np.full_like(eta, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (eta / d1) / ((1.0 - eta) / d2)
    if use_scipy is not False:
        try:
            from scipy import stats

            return np.asarray(stats.f.sf(f, d1, d2), dtype=np.float64)
        except ImportError:
            if use_scipy:
                raise
    # P(F > f) = I_{d2 / (d2 + d1 f)}(d2 / 2, d1 / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(np.isinf(f), 0.0, d2 / (d2 + d1 * f))
    return betainc_regularized(d2 / 2.0, d1 / 2.0, x)


def eta2_summary(
    neurons: Sequence[Neuron],
    eta2: np.ndarray,
    n_total: int,
    eta_min: float = ETA2_THRESHOLD,
    p_max: float = P_THRESHOLD,
) -> dict[str, Any]:
    """Per-neuron η² and p of a selected set, and the share with η² > eta_min and p < p_max."""
    if not neurons:
        return {"eta2_share": None, "eta2": [], "eta2_p": []}
    vals = np.array([eta2[n.layer, n.index] for n in neurons], dtype=np.float64)
    p = f_test_pvalue(vals, n_total)
    share = float(np.mean((vals > eta_min) & (p < p_max)))
    return {
        "eta2_share": round(share, 6),
        "eta2_threshold": eta_min,
        "p_threshold": p_max,
        "eta2_n": n_total,
        "eta2": [round(float(v), 6) for v in vals],
        "eta2_p": [float(f"{v:.4g}") for v in p],
    }
