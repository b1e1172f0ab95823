"""identify.stats: η² by hand and the F-test p-value against scipy."""

from __future__ import annotations

import numpy as np
import pytest

from tnedit.identify import stats


def test_eta_squared_by_hand():
    vals = np.array([1.0, 2, 3, 4, 5, 6])
    labels = [0, 0, 0, 1, 1, 1]
    # SS_total = 17.5, SS_between = 3(2 − 3.5)² + 3(5 − 3.5)² = 13.5
    assert float(stats.eta_squared(vals, labels)) == pytest.approx(13.5 / 17.5)
    sums = stats.eta_squared_from_sums(np.array([6.0]), np.array([14.0]), 3, np.array([15.0]), np.array([77.0]), 3)
    assert sums[0] == pytest.approx(13.5 / 17.5)
    # F = 13.5 / (4 / 4) = 13.5 on (1, 4) degrees of freedom
    p_own = stats.f_test_pvalue(13.5 / 17.5, 6, use_scipy=False)
    assert float(p_own) == pytest.approx(0.021312, abs=1e-5)


def test_pvalue_own_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(0)
    eta = np.concatenate([rng.uniform(0, 1, 200), [0.0, 1e-9, 0.5, 0.999999, 1.0]])
    for n in (5, 24, 1000, 2000):
        own = stats.f_test_pvalue(eta, n, use_scipy=False)
        with np.errstate(divide="ignore"):
            f = eta / ((1 - eta) / (n - 2))
        ref = scipy_stats.f.sf(f, 1, n - 2)
        np.testing.assert_allclose(own, ref, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(stats.f_test_pvalue(eta, n), ref, rtol=1e-12, atol=1e-15)
    for a, b in [(0.5, 2.0), (3.0, 0.5), (50.0, 0.5)]:
        x = np.linspace(0, 1, 41)
        np.testing.assert_allclose(stats.betainc_regularized(a, b, x), special.betainc(a, b, x),
                                   rtol=1e-9, atol=1e-13)
