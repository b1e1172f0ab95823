"""edit.numeric: patching weight slices in place."""

from __future__ import annotations


def test_weights_that_were_already_inf_may_stay(tmp_path):
    import numpy as np

    from tnedit.edit import patch_slices

    weight = np.full((2, 3), 2.0, dtype=np.float32)
    weight[0, 1] = np.inf
    patch_slices(weight, "F32", 1, [1], [3.0])
    assert np.isinf(weight[0, 1]) and weight[1, 1] == 6.0
