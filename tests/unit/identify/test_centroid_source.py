"""The centroid source a neuron set records (``method.centroids``): written when not the default, read back, checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tnedit.errors import InputError, NeuronSetError
from tnedit.formats.descriptions import centroids_text
from tnedit.formats.neurons import Method, ModelInfo, Neuron, NeuronSet, neuron_set_from_dict
from tnedit.formats.scores import ScoresFile
from tnedit.identify.selection import select_from_scores

MODEL = ModelInfo("m", "llama", 2, 3, "fp2:0")


def _set(**method: object) -> NeuronSet:
    return NeuronSet([Neuron(1, 2, score=0.5)], MODEL, Method(kind="transfer", type=2, language="ja", **method))


def test_the_default_is_not_written_and_reads_back():
    plain = _set()
    written = plain.to_dict()
    assert "centroids" not in written["method"]
    # Byte-identical to a set written before the field existed: the same JSON without the key.
    before = dict(written, method={k: v for k, v in written["method"].items() if k != "centroids"})
    assert plain.to_json() == json.dumps(before, indent=1, ensure_ascii=False) + "\n"
    assert neuron_set_from_dict(written, "old.json").method.centroids == "layer-outputs"
    assert centroids_text(plain.method) is None


def test_hidden_states_is_written_and_reads_back():
    authors = _set(centroids="hidden-states")
    written = authors.to_dict()
    assert written["method"]["centroids"] == "hidden-states"
    assert neuron_set_from_dict(json.loads(authors.to_json()), "a.json").method.centroids == "hidden-states"
    assert authors.sha256() != _set().sha256()
    assert "hidden-states" in centroids_text(authors.method)


@pytest.mark.parametrize("value", ["raw", None, 1, ["hidden-states"]])
def test_a_bad_centroid_source_is_refused(value):
    written = _set().to_dict()
    written["method"]["centroids"] = value
    expected = r"x\.json: key 'method\.centroids' must be layer-outputs or hidden-states"
    with pytest.raises(NeuronSetError, match=expected):
        neuron_set_from_dict(written, "x.json")


def _scores(method: dict) -> ScoresFile:
    scores = {t: np.arange(6, dtype=np.float64).reshape(2, 3) for t in (1, 2)}
    return ScoresFile("ja", scores, None, MODEL, {1: [0], 2: [1]}, method, 4, 4)


def test_select_keeps_the_scores_files_centroid_source():
    assert select_from_scores(_scores({}), 2, 2).method.centroids == "layer-outputs"  # written before the key
    assert select_from_scores(_scores({"centroids": "hidden-states"}), 2, 2).method.centroids == "hidden-states"
    with pytest.raises(InputError, match="metadata key 'method' has centroids 'after-norm'; expected layer-outputs"):
        select_from_scores(_scores({"centroids": "after-norm"}), 2, 2)
