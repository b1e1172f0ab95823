"""identify.controls: random controls like a set, the overlap numbers of compare, a model's shape."""

from __future__ import annotations

import pytest

from tnedit.errors import InputError, TneditError
from tnedit.formats.neurons import Method, Neuron, NeuronSet
from tnedit.identify.controls import compare, model_shape, random_control


def _like_set() -> NeuronSet:
    neurons = [Neuron(layer, i, score=1.0) for layer in (0, 1, 2) for i in range(0, 60, 3)]
    return NeuronSet(neurons=neurons, method=Method(kind="transfer", type=1, language="ja", layers=[0, 1, 2], k=60))


def test_random_control_properties():
    like = _like_set()
    a = random_control(like, 4, 64, seed=42)
    b = random_control(like, 4, 64, seed=42)
    c = random_control(like, 4, 64, seed=7)
    assert len(a) == len(like) == 60 and a.neurons == b.neurons and a.neurons != c.neurons
    assert {n.layer for n in a.neurons} <= {0, 1, 2}
    assert not (a.keys() & like.keys()) and len(a.keys()) == 60
    assert a.method.kind == "random" and a.method.seed == 42 and a.method.layers == [0, 1, 2]
    matched = random_control(like, 4, 64, seed=1, match_layers=True)
    assert matched.per_layer_counts() == like.per_layer_counts()
    with pytest.raises(TneditError, match="only"):
        random_control(like, 4, 64, seed=1, k=3 * 64)
    with pytest.raises(TneditError, match="out of range"):
        random_control(like, 2, 64, seed=1)


def test_compare_numbers():
    a = NeuronSet([Neuron(0, 1), Neuron(0, 2), Neuron(1, 3)])
    b = NeuronSet([Neuron(0, 2), Neuron(1, 3), Neuron(2, 4), Neuron(2, 5)])
    cmp = compare(a, b)
    assert (cmp.size_a, cmp.size_b, cmp.intersection) == (3, 4, 2)
    assert cmp.overlap == pytest.approx(2 / 3) and cmp.overlap_b == pytest.approx(0.5)
    assert cmp.jaccard == pytest.approx(2 / 5)
    assert cmp.per_layer == [{"layer": 0, "a": 2, "b": 1, "both": 1}, {"layer": 1, "a": 1, "b": 1, "both": 1},
                             {"layer": 2, "a": 0, "b": 2, "both": 0}]


def test_unknown_model_shape_for_control(tmp_path):
    like = _like_set()
    with pytest.raises(InputError, match="model"):
        model_shape("not/a-local-model", like)
