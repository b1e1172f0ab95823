"""How an edit describes itself: a set whose neurons carry their own factors is never called zeroed."""

from __future__ import annotations


def test_a_set_with_its_own_factors_is_not_called_zeroed():
    from tnedit.edit.spec import make_edit_spec
    from tnedit.formats.neurons import Neuron

    uniform = make_edit_spec([Neuron(0, 1), Neuron(1, 2, factor=0.0)], "zero")
    mixed = make_edit_spec([Neuron(0, 1, factor=-0.38), Neuron(1, 2, factor=-0.21), Neuron(2, 3)], "zero")
    assert uniform.describe() == "zero 2 neurons"
    assert mixed.describe() == "scale 3 neurons by their own factors (-0.38, -0.21, 0)"
    assert make_edit_spec([Neuron(0, 1)], "scale", 0.5).describe() == "scale 1 neurons by 0.5"
