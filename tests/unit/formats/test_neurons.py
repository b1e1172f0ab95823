"""formats.neurons: neuron lists and files parsed, their error type, the atomic save."""

from __future__ import annotations

import json
import subprocess

import pytest

from tnedit.formats.neurons import Neuron, NeuronSet


def test_inline_neuron_list_longer_than_a_file_name(tmp_path):
    """A list of hundreds of neurons is no valid file name (ENAMETOOLONG); it must still parse as a list."""
    from tnedit.formats.neurons import read_neuron_argument

    pairs = [(layer, index) for layer in range(30) for index in range(0, 600, 7)]
    text = ",".join(f"{layer}:{index}" for layer, index in pairs)
    assert len(text) > 4096
    neuron_set, label = read_neuron_argument(text)
    assert [n.key for n in neuron_set.neurons] == pairs
    assert label == "--neurons"


def test_neuron_format_error_is_a_tnedit_error_and_a_value_error():
    from tnedit.errors import InputError, NeuronSetError
    from tnedit.formats.neurons import NeuronFormatError, parse_neuron_list

    assert issubclass(NeuronFormatError, NeuronSetError) and issubclass(NeuronFormatError, InputError)
    with pytest.raises(ValueError):
        parse_neuron_list("3:²")


def test_neuron_set_save_is_atomic_and_cleans_stale_temporaries(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".neurons.json.tnedit-tmp-{dead.pid}"
    stale.write_text("half")
    path = NeuronSet([Neuron(1, 2)]).save(tmp_path / "neurons.json")
    assert json.loads(path.read_text())["neurons"] == [{"layer": 1, "index": 2}]
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["neurons.json"]
