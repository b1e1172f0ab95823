"""identify.selection: the global top-k ranking, ties and NaN scores."""

from __future__ import annotations

import numpy as np

from tnedit.identify.selection import select_top


def test_select_top_ties_and_nan():
    scores = np.array([[0.5, np.nan, 0.5], [0.9, 0.1, 0.5]])
    got = select_top(scores, [0, 1], 4)
    assert [n.key for n in got] == [(1, 0), (0, 0), (0, 2), (1, 2)]
    assert [n.key for n in select_top(scores, [0], 3)] == [(0, 0), (0, 2), (0, 1)]
