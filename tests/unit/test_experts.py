"""Expert neurons in files and the neuron space of a mixture-of-experts config, without torch or a model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import tnedit.architectures as architectures
from tnedit.architectures import get_architecture, neuron_space, register_architecture
from tnedit.edit.spec import check_neurons, make_edit_spec
from tnedit.errors import NeuronSetError
from tnedit.experts import space_from_columns
from tnedit.formats.neurons import Neuron, NeuronSet, neuron_set_from_dict

QWEN2_MOE = {"model_type": "qwen2_moe", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 48,
             "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 4,
             "decoder_sparse_step": 1, "mlp_only_layers": [0]}
DEEPSEEK = {"model_type": "deepseek_v3", "num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 48,
            "moe_intermediate_size": 8, "n_routed_experts": 6, "n_shared_experts": 2, "first_k_dense_replace": 2}


def _space(config):
    return neuron_space(config, get_architecture(config["model_type"]))


def test_blocks_follow_the_dense_layer_rules_and_the_shared_width():
    space = _space(QWEN2_MOE)
    assert space.moe and space.width == 4 * 16 + 24
    assert [space.is_moe_layer(layer) for layer in range(4)] == [False, True, True, True]
    assert [(b.expert, b.offset, b.width) for b in space.blocks(1)][-2:] == [(3, 48, 16), ("shared", 64, 24)]
    assert space.neuron(0, 47) == Neuron(0, 47)
    assert space.neuron(3, 70) == Neuron(3, 6, expert="shared")
    stepped = _space({**QWEN2_MOE, "mlp_only_layers": [], "decoder_sparse_step": 2})
    assert [stepped.is_moe_layer(layer) for layer in range(4)] == [False, True, False, True]
    deepseek = _space(DEEPSEEK)
    assert [deepseek.layer_width(layer) for layer in range(3)] == [48, 48, 6 * 8 + 2 * 8]


def test_scores_metadata_round_trips_the_space():
    space = _space(QWEN2_MOE)
    again = space_from_columns(json.loads(json.dumps(space.columns())))
    assert again.layers == space.layers


@pytest.mark.parametrize(
    ("neuron", "needle"),
    [
        (Neuron(1, 3), "mixture-of-experts layer"),
        (Neuron(0, 3, expert=1), "dense MLP layer"),
        (Neuron(1, 3, expert=4), "no expert 4 (routed experts 0..3 and \"shared\")"),
        (Neuron(1, 16, expert=2), "index 16 of e2"),
        (Neuron(1, 24, expert="shared"), "index 24 of shared"),
        (Neuron(0, 48), "index 48"),
        (Neuron(4, 0, expert=0), "layer 4 is out of range"),
    ],
)
def test_neurons_the_model_lacks_are_one_line_errors(neuron, needle):
    with pytest.raises(NeuronSetError, match=None) as info:
        check_neurons([neuron], _space(QWEN2_MOE), "neurons.json")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_set_with_experts_on_a_dense_model_is_refused():
    space = neuron_space({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 16},
                         get_architecture("llama"))
    with pytest.raises(NeuronSetError, match="names an expert, but the model has no experts"):
        check_neurons([Neuron(1, 3, expert=0)], space, "neurons.json")


def test_expert_keys_round_trip_and_dense_files_are_unchanged():
    raw = {"format": "tnedit.neurons/1", "neurons": [{"layer": 1, "expert": 2, "index": 3, "score": 0.5},
                                                      {"layer": 1, "expert": "shared", "index": 0},
                                                      {"layer": 0, "index": 7}]}
    neuron_set = neuron_set_from_dict(raw, "neurons.json")
    assert [n.expert for n in neuron_set.neurons] == [2, "shared", None]
    assert json.loads(neuron_set.to_json())["neurons"] == raw["neurons"]
    assert neuron_set.per_expert_counts() == {"e2": 1, "dense": 1, "shared": 1}
    dense = NeuronSet([Neuron(0, 7, score=0.1)])
    assert "expert" not in dense.to_json() and dense.per_expert_counts() == {}


@pytest.mark.parametrize("value", [-1, True, 1.5, "routed", [1]])
def test_a_bad_expert_value_names_the_entry(value):
    raw = {"format": "tnedit.neurons/1", "neurons": [{"layer": 1, "expert": value, "index": 3}]}
    with pytest.raises(NeuronSetError, match=r"neurons\[0\]: 'expert' must be a non-negative integer or \"shared\""):
        neuron_set_from_dict(raw, "neurons.json")


def test_the_same_index_in_two_experts_is_two_neurons():
    spec = make_edit_spec([Neuron(1, 3, expert=0), Neuron(1, 3, expert=1), Neuron(1, 3, expert=0)], "zero")
    assert len(spec.neurons) == 2 and len(spec.duplicates) == 1
    assert [(e.layer, e.expert, e.indices) for e in spec.by_layer()] == [(1, 0, (3,)), (1, 1, (3,))]
    assert spec.per_expert_counts() == {1: {"e0": 1, "e1": 1}}


def test_further_moe_families_are_declared_with_the_same_record(monkeypatch):
    monkeypatch.setattr(architectures, "_BY_TYPE", dict(architectures._BY_TYPE))
    custom = replace(get_architecture("olmoe"), name="my_moe", model_types=("my_moe",))
    register_architecture(custom)
    config = {"model_type": "my_moe", "num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 4,
              "num_experts": 3}
    assert get_architecture("my_moe") is custom
    assert _space(config).width == 12


def test_lists_and_csv_name_experts_as_labels_do(tmp_path):
    from tnedit.formats.neurons import load_neurons, parse_neuron_list

    listed = parse_neuron_list("5:e17:301,5:shared:12:0.5,3:7")
    assert listed == [Neuron(5, 301, expert=17), Neuron(5, 12, factor=0.5, expert="shared"), Neuron(3, 7)]
    assert [n.label for n in listed] == ["5:e17:301", "5:shared:12", "3:7"]
    assert parse_neuron_list("3:17:0.5") == [Neuron(3, 17, factor=0.5)]  # a factor third is no expert
    csv_file = tmp_path / "neurons.csv"
    csv_file.write_text("layer,expert,index,factor\n1,e2,3,0.5\n1,2,4,0.25\n0,,9,1\n2,shared,1,0\n")
    assert load_neurons(csv_file).neurons == [Neuron(1, 3, factor=0.5, expert=2), Neuron(1, 4, factor=0.25, expert=2),
                                              Neuron(0, 9, factor=1.0), Neuron(2, 1, factor=0.0, expert="shared")]
    with pytest.raises(NeuronSetError, match="item '5:e-1:3'"):
        parse_neuron_list("5:e-1:3")
    csv_file.write_text("layer,expert,index\n1,routed,3\n")
    with pytest.raises(NeuronSetError, match=r"row 1: 'expert' must be"):
        load_neurons(csv_file)
