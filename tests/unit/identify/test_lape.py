"""identify.lape: language-specific neuron selection on toy activation probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from tnedit.identify import lape


def test_lape_on_toy_probabilities():
    # P[layer, neuron, language] for languages (en, ja)
    p = np.array([
        [[0.9, 0.1], [0.5, 0.5], [0.05, 0.02]],
        [[0.2, 0.95], [0.6, 0.7], [0.8, 0.85]],
    ])
    # 75% quantile, torch.kthvalue style: k = round(12 * .75) = 9 → 9th smallest = 0.8
    sel = lape.select_language_specific(p, ["en", "ja"], top_rate=2 / 6, filter_rate=0.75, bar_rate=0.75)
    assert sel.filter_value == 0.8 and sel.bar_value == 0.8

    def h(x):
        q = np.array(x) / sum(x)
        return float(-(q * np.log(q)).sum())

    # only (0,0), (1,0), (1,2) have some P > 0.8; the 2 lowest entropies are (0,0) and (1,0)
    assert np.isinf(sel.entropy[0, 1]) and np.isinf(sel.entropy[0, 2]) and np.isinf(sel.entropy[1, 1])
    assert sel.entropy[0, 0] == pytest.approx(h([0.9, 0.1]))
    assert [n.key for n in sel.neurons["en"]] == [(0, 0)]
    assert [n.key for n in sel.neurons["ja"]] == [(1, 0)]
    assert sel.neurons["ja"][0].score == pytest.approx(h([0.2, 0.95]))
    wider = lape.select_language_specific(p, ["en", "ja"], layers=[4, 7], top_rate=0.5, filter_rate=0.75, bar_rate=0.75)
    assert [n.key for n in wider.neurons["ja"]] == [(7, 0), (7, 2)]  # 0.85 > 0.8; en's 0.8 is not
    assert [n.key for n in wider.neurons["en"]] == [(4, 0)]
