"""Hostile input for mixture-of-experts models: expert neurons where the model has none (or the reverse), unknown
MoE variants, quantized expert storage. Each case lands in the bad-input matrix: one line, exit 2, nothing
written, inputs untouched, and never a silent skip of the experts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostile import expect_clean_failure
from tests.support.paths import TATOEBA
from tests.support.tiny import make_tiny
from tests.support.tiny_moe import make_tiny_moe

DATA = str(TATOEBA / "en-ja.train.tsv")


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    return make_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("moe"))


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    return make_tiny("llama", tmp_path_factory.mktemp("dense"))


def _neurons(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _copy_with_config(source: Path, target: Path, **changes: Any) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


EXPERT_ON_DENSE = [{"layer": 1, "expert": 0, "index": 3}]
DENSE_ON_MOE_LAYER = [{"layer": 1, "index": 3}]
EXPERT_ON_DENSE_LAYER = [{"layer": 0, "expert": 2, "index": 3}]
NO_SUCH_EXPERT = [{"layer": 1, "expert": 9, "index": 3}]
INDEX_PAST_EXPERT = [{"layer": 2, "expert": 1, "index": 16}]
BAD_EXPERT = [{"layer": 1, "expert": "routed", "index": 3}]


@pytest.mark.parametrize(
    ("case", "entries", "model", "needles"),
    [
        ("apply: expert neurons on a dense model", EXPERT_ON_DENSE, "dense", ["names an expert", "no experts"]),
        ("apply: a dense neuron on an MoE layer", DENSE_ON_MOE_LAYER, "moe", ["mixture-of-experts layer", "'expert'"]),
        ("apply: an expert on a dense layer of an MoE model", EXPERT_ON_DENSE_LAYER, "moe", ["dense MLP layer"]),
        ("apply: an expert the layer lacks", NO_SUCH_EXPERT, "moe", ["no expert 9", "0..3"]),
        ("apply: an index past the expert's width", INDEX_PAST_EXPERT, "moe", ["index 16", "0..15"]),
        ("apply: an expert that is neither a number nor shared", BAD_EXPERT, "moe", ["'expert'", "'routed'"]),
    ],
)
def test_apply_refuses_neurons_the_model_does_not_have(case, entries, model, needles, moe, dense, tmp_path, capsys):
    source = moe if model == "moe" else dense
    neurons = _neurons(tmp_path / "neurons.json", entries)
    expect_clean_failure(case, ["apply", str(source), str(neurons), "-o", str(tmp_path / "out"), "--quiet"], capsys,
                         watch=[tmp_path], inputs=[source, neurons], needles=needles)


def test_evaluate_refuses_expert_neurons_on_a_dense_model(dense, tmp_path, capsys):
    neurons = _neurons(tmp_path / "neurons.json", EXPERT_ON_DENSE)
    args = ["evaluate", str(dense), "--neurons", str(neurons), "--data", DATA, "--lang", "ja", "--n-pairs", "4",
            "-o", str(tmp_path / "report"), "--quiet"]
    expect_clean_failure("evaluate: expert neurons on a dense model", args, capsys, watch=[tmp_path],
                         inputs=[dense, neurons], needles=["names an expert"])


@pytest.mark.parametrize("verb", ["identify", "apply", "evaluate"])
def test_an_unknown_moe_variant_is_named_never_skipped(verb, tmp_path, capsys):
    """A hybrid MoE type outside the registry (jamba) fails on its type, before any expert could be skipped."""
    model = make_tiny_moe("jamba", tmp_path)
    neurons = _neurons(tmp_path / "neurons.json", [{"layer": 1, "expert": 0, "index": 3}])
    out = str(tmp_path / "out")
    args = {
        "identify": ["identify", str(model), "--data", DATA, "--lang", "ja", "--limit", "4", "-o", out],
        "apply": ["apply", str(model), str(neurons), "-o", out],
        "evaluate": ["evaluate", str(model), "--neurons", str(neurons), "--data", DATA, "--lang", "ja",
                     "--n-pairs", "4", "-o", out],
    }[verb]
    expect_clean_failure(f"{verb}: an unknown mixture-of-experts variant (jamba)", [*args, "--quiet"], capsys,
                         watch=[tmp_path], inputs=[model, neurons], needles=["'jamba'", "mixture-of-experts variant"])


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_quantized_expert_storage_is_refused(method, moe, tmp_path, capsys):
    model = _copy_with_config(moe, tmp_path / method, quantization_config={"quant_method": method})
    neurons = _neurons(tmp_path / "neurons.json", [{"layer": 1, "expert": 0, "index": 3}])
    expect_clean_failure(f"apply: quantized expert storage ({method})",
                         ["apply", str(model), str(neurons), "-o", str(tmp_path / "out"), "--quiet"], capsys,
                         watch=[tmp_path], inputs=[model, neurons], needles=[method, "expert storage"])
