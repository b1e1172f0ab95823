"""A mixture-of-experts model through every verb, as a user runs them: identify names expert neurons, inspect
and the summaries count them per expert, apply bakes them, evaluate measures them at the last token with a
control drawn from the same experts, revert restores the source's bytes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.support.checkpoints import sha
from tests.support.hostile import run_cli
from tests.support.paths import TATOEBA
from tests.support.tiny_moe import make_tiny_moe
from tnedit.formats.neurons import load_neurons

DATA = str(TATOEBA / "en-ja.train.tsv")


def neurons_per_layer_and_expert(neurons) -> dict[int, Counter]:
    counts: dict[int, Counter] = {}
    for n in neurons.neurons:
        counts.setdefault(n.layer, Counter())["dense" if n.expert is None else n.label.split(":")[1]] += 1
    return counts


@pytest.mark.parametrize("model_type", ["qwen2_moe", "gpt_oss"])
def test_identify_apply_evaluate_revert_an_moe_model(model_type, tmp_path, capsys):
    model = make_tiny_moe(model_type, tmp_path)
    out = tmp_path / "identify"
    code, stdout, err = run_cli(["identify", str(model), "--data", DATA, "--lang", "ja", "--limit", "12", "--k", "12",
                                 "-o", str(out), "--quiet", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)["sets"][0]
    neurons = load_neurons(out / "neurons-ja-type1.json")
    assert any(isinstance(n.expert, int) for n in neurons.neurons)  # routed-expert neurons are named as such
    assert sum(summary["per_expert"].values()) == len(neurons) == 12
    raw = json.loads((out / "neurons-ja-type1.json").read_text())["neurons"]
    assert all(("expert" in entry) == (n.expert is not None) for entry, n in zip(raw, neurons.neurons, strict=True))

    code, stdout, err = run_cli(["inspect", str(out / "neurons-ja-type1.json"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["per_expert"] == neurons.per_expert_counts()

    code, _, err = run_cli(["identify", str(model), "--control", "random", "--like", str(out / "neurons-ja-type1.json"),
                            "-o", str(tmp_path / "control.json"), "--seed", "3", "--quiet"], capsys)
    assert code == 0, err
    drawn = load_neurons(tmp_path / "control.json")
    assert neurons_per_layer_and_expert(drawn) == neurons_per_layer_and_expert(neurons)
    assert not drawn.keys() & neurons.keys()

    edited = tmp_path / "edited"
    code, _, err = run_cli(["apply", str(model), str(out / "neurons-ja-type1.json"), "-o", str(edited), "--quiet"],
                           capsys)
    assert code == 0, err
    card = (edited / "README.md").read_text()
    assert "| layer | neurons edited | per expert |" in card
    for layer, counts in neurons_per_layer_and_expert(neurons).items():
        experts = " ".join(f"{e}:{n}" for e, n in sorted(counts.items()))
        assert f"| {layer} | {sum(counts.values())} | {experts} |" in card
    common = ["--data", DATA, "--lang", "ja", "--n-pairs", "8", "--skip", "100", "--n-qa", "0", "--n-gen", "1",
              "--n-langid", "2", "--max-new-tokens", "3", "--quiet"]
    code, _, err = run_cli(["evaluate", str(model), "--neurons", str(out / "neurons-ja-type1.json"), "--positions",
                            "last", "--control", "random", *common, "-o", str(tmp_path / "report")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    per_expert = report["edit"]["per_expert"]
    assert sum(n for counts in per_expert.values() for n in counts.values()) == len(neurons)
    assert "edited per expert" in (tmp_path / "report" / "report.md").read_text()
    control = [tuple(x) for x in report["control"]["neurons"]]
    edited_keys = {n.key for n in neurons.neurons}
    assert not edited_keys & set(control)
    def per_projection(keys):  # (layer, expert) -> neurons
        return Counter((k[0], k[2] if len(k) > 2 else None) for k in keys)

    assert per_projection(control) == per_projection(edited_keys)  # as many in each expert of each layer

    code, _, err = run_cli(["evaluate", str(model), str(edited), *common, "-o", str(tmp_path / "baked")], capsys)
    assert code == 0, err
    back = tmp_path / "back"
    code, _, err = run_cli(["revert", str(edited), "-o", str(back), "--quiet"], capsys)
    assert code == 0, err
    for weights in model.glob("*.safetensors"):
        assert sha(back / weights.name) == sha(weights)
