"""tnedit run on a tiny model: the step runner end to end, its skip-if-unchanged stamps, hook evaluation.

Recipe validation and the schema (pure) are in ``tests/unit/recipes/test_schema.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.hostile import run_cli
from tests.support.tiny import make_tiny


def _tiny_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipe whose paths are relative to its own directory, run from another working directory."""
    make_tiny("llama", tmp_path, subdir="tiny")
    text = """
name: tiny
model: {name: tiny, dtype: float32, device: cpu}
languages: [ja]
data: {source: builtin, identify_rows: 24, evaluate_rows: 12}
identify: {type: 1, k: 8, batch_size: 8}
edits:
  - {name: ja-t1, neurons: "ja:1", op: zero}
evaluate: {control: random, metrics: [representations, perplexity], n_qa: 0, n_gen: 0}
output: run
"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_runner_end_to_end_and_skips(tmp_path, capsys, monkeypatch):
    recipe = _tiny_recipe(tmp_path, monkeypatch)
    out = tmp_path / "run"

    def run(*extra: str) -> dict:
        code, stdout, err = run_cli(["run", str(recipe), "--quiet", "--json", *extra], capsys)
        assert code == 0, err
        return json.loads(stdout)

    first = run()
    assert [s["step"] for s in first["steps"]] == ["identify", "apply", "evaluate"]
    assert not any(s["skipped"] for s in first["steps"])
    assert (out / "identify" / "neurons-ja-type1.json").is_file()
    assert (out / "edits" / "ja-t1" / "tnedit.json").is_file()
    assert (out / "reports" / "ja-t1" / "report.md").is_file()
    assert not list((out / "edits" / "ja-t1").glob(".tnedit*")), "stamps must not land in the checkpoint"
    assert not [p for p in out.rglob("*") if ".tnedit-tmp-" in p.name], "every step's output was renamed into place"
    assert not list((tmp_path / "elsewhere").iterdir()), "nothing is written relative to the working directory"
    stamps = sorted(p.name for p in (out / ".tnedit-steps").iterdir())
    assert stamps == ["apply-ja-t1.json", "evaluate-ja-t1.json", "identify-transfer.json"]
    assert json.loads((out / "recipe.json").read_text())["model"]["name"] == str(tmp_path / "tiny")
    assert first["headline"] and {row["edit"] for row in first["headline"]} == {"ja-t1"}
    card = (out / "edits" / "ja-t1" / "README.md").read_text()
    assert "tnedit:evaluation:start" in card

    second = run()
    assert all(s["skipped"] for s in second["steps"])
    third = run("--set", "identify.k=6")
    assert not any(s["skipped"] for s in third["steps"]), "a changed upstream setting reruns everything after it"
    neurons = json.loads((out / "identify" / "neurons-ja-type1.json").read_text())
    assert len(neurons["neurons"]) == 6
    fourth = run("--set", "identify.k=6", "--set", "evaluate.seed=7")
    assert [s["skipped"] for s in fourth["steps"]] == [True, True, False]
    forced = run("--set", "identify.k=6", "--set", "evaluate.seed=7", "--force")
    assert not any(s["skipped"] for s in forced["steps"])


def test_hook_evaluation_keeps_the_edit_layers(tmp_path, capsys, monkeypatch):
    """positions=last evaluates through a hook, not the baked checkpoint; edits[].layers must reach it."""
    recipe = _tiny_recipe(tmp_path, monkeypatch)
    code, _, err = run_cli(["run", str(recipe), "--quiet", "--set", "evaluate.positions=last", "--set",
                            "edits.0.layers=0-1"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    found = json.loads((out / "identify" / "neurons-ja-type1.json").read_text())["neurons"]
    kept = [n for n in found if n["layer"] in (0, 1)]
    assert kept and len(kept) < len(found), "the fixture should have neurons inside and outside layers 0-1"
    edit = json.loads((out / "reports" / "ja-t1" / "report.json").read_text())["edit"]
    assert edit["source"] == "hook" and edit["positions"] == "last"
    assert edit["n_neurons"] == len(kept)
    assert {int(layer) for layer in edit["per_layer"]} == {n["layer"] for n in kept}
    baked = json.loads((out / "edits" / "ja-t1" / "tnedit.json").read_text())
    assert sum(baked["edit"]["per_layer"].values()) == len(kept)
    # edits[].top_k counts within edits[].layers, in the baked checkpoint and in the hook alike
    k = max(1, len(kept) - 1)
    code, _, err = run_cli(["run", str(recipe), "--quiet", "--set", "evaluate.positions=last", "--set",
                            "edits.0.layers=0-1", "--set", f"edits.0.top_k={k}"], capsys)
    assert code == 0, err
    expected = [[n["layer"], n["index"]] for n in kept[:k]]
    baked = json.loads((out / "edits" / "ja-t1" / "tnedit.json").read_text())
    assert [[a, b] for a, b, _ in baked["edit"]["neurons"]] == expected
    edit = json.loads((out / "reports" / "ja-t1" / "report.json").read_text())["edit"]
    assert edit["n_neurons"] == k and edit["edit_sha256"] == _rows_sha256(baked["edit"]["neurons"])


def _rows_sha256(rows: list) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_a_tune_recipe_tunes_applies_and_evaluates_the_selective_set(tmp_path, capsys, monkeypatch):
    make_tiny("llama", tmp_path, subdir="tiny")
    (tmp_path / "r.yaml").write_text("""
name: tiny-selective
model: {name: tiny, dtype: float32, device: cpu}
languages: [ja]
data: {source: builtin, identify_rows: 300, evaluate_rows: 12}
identify: {enabled: false}
tune: {enabled: true, keep: [en, ko], max_neurons: 12, max_ppl_increase: 0.02, calibration: 16, validation: 16,
       rounds: 2, trials: 2, pool: 32}
edits:
  - {name: ja-selective, neurons: "ja:selective"}
evaluate: {control: none, metrics: [representations, perplexity], n_qa: 0, n_gen: 0}
output: run
""")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["run", "r.yaml", "--quiet", "--json"], capsys)
    assert code == 0, err
    steps = json.loads(stdout)["steps"]
    assert [s["step"] for s in steps] == ["tune", "apply", "evaluate"]
    tuned = json.loads((tmp_path / "run" / "tune" / "neurons-ja-selective.json").read_text())
    applied = json.loads((tmp_path / "run" / "edits" / "ja-selective" / "tnedit.json").read_text())
    assert applied["edit"]["n_neurons"] == len(tuned["neurons"]) <= 12
    assert tuned["method"]["data"]["identify_pairs"] + 16 <= 300  # tune read only the identify rows
    report = json.loads((tmp_path / "run" / "reports" / "ja-selective" / "report.json").read_text())
    (row,) = report["selectivity"]
    assert row["target"] == "ja" and row["kept"] == ["en"]
    card = (tmp_path / "run" / "edits" / "ja-selective" / "README.md").read_text()
    assert "`tnedit tune`" in card and "selectivity (edited)" in card
    again = json.loads(run_cli(["run", "r.yaml", "--quiet", "--json"], capsys)[1])["steps"]
    assert all(s["skipped"] for s in again)
