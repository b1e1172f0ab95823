"""Recipe validation, overrides, and the step runner with its skip-if-unchanged stamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import make_tiny
from tnedit.errors import RecipeError
from tnedit.recipes import Recipe, load_recipe, parse_override

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
model: {name: some/model}
languages: [ja]
edits:
  - {name: e1, neurons: "ja:1", op: zero}
"""


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.model.name and recipe.languages and recipe.edits


def test_paper_recipes_cover_the_paper():
    for slug in ("llama3-8b", "mistral-7b-v0.3", "aya-expanse-8b"):
        recipe = load_recipe(ROOT / "recipes" / f"{slug}-paper.yaml")
        assert set(recipe.languages) == {"ja", "ko", "nl", "it"}
        assert recipe.identify.k == 1000 and recipe.identify.type == "both" and recipe.identify.layers is None
        refs = {e.neurons for e in recipe.edits}
        assert refs == {f"{lang}:{t}" for lang in ("ja", "ko", "nl", "it") for t in (1, 2)}


def test_defaults_and_name(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL, "my-run.yaml"))
    assert recipe.name == "my-run" and recipe.output == str(Path("runs") / "my-run")
    assert recipe.identify.k == 1000 and recipe.evaluate.control == "random"


@pytest.mark.parametrize(
    "text,needle",
    [
        (MINIMAL + "identfy: {k: 3}\n", "unknown key 'identfy'; did you mean 'identify'?"),
        (MINIMAL + "identify: {kk: 3}\n", "identify: unknown key 'kk'; did you mean 'k'?"),
        (MINIMAL.replace("op: zero", "opp: zero"), "edits[0]: unknown key 'opp'; did you mean 'op'?"),
        (MINIMAL + "identify: {k: many}\n", "identify.k: expected int"),
        (MINIMAL + "identify: {k: true}\n", "identify.k: expected int"),
        (MINIMAL + "languages: ja\n", "languages: expected a list"),
        ("languages: [ja]\n", "'model.name' is required"),
        (MINIMAL.replace("op: zero", "op: scale"), "needs a factor"),
        (MINIMAL + "evaluate: {metrics: [vibes]}\n", "unknown ['vibes']"),
        (MINIMAL + "push: {edit: nope}\n", "names no edit"),
        ("model: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["identify.k=500", "edits.0.op=scale", "edits.0.factor=0.5", "model.device=cuda"])
    assert recipe.identify.k == 500 and recipe.model.device == "cuda"
    assert recipe.edits[0].op == "scale" and recipe.edits[0].factor == 0.5
    assert parse_override("identify.layers=0-5") == (["identify", "layers"], "0-5")
    with pytest.raises(RecipeError, match="did you mean 'k'"):
        load_recipe(path, ["identify.kk=5"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        load_recipe(path, ["identify.k"])
    with pytest.raises(RecipeError, match="not a valid index"):
        load_recipe(path, ["edits.3=1"])


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
    return write(tmp_path, text)


def test_runner_end_to_end_and_skips(tmp_path, capsys, monkeypatch):
    from tnedit.cli import main

    recipe = _tiny_recipe(tmp_path, monkeypatch)
    out = tmp_path / "run"

    def run(*extra: str) -> dict:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["run", str(recipe), "--quiet", "--json", *extra])
            raise SystemExit(0)
        captured = capsys.readouterr()
        assert info.value.code in (0, None), captured.err
        return json.loads(captured.out)

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
    from tnedit.cli import main

    recipe = _tiny_recipe(tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--quiet", "--set", "evaluate.positions=last", "--set", "edits.0.layers=0-1"])
        raise SystemExit(0)
    assert info.value.code in (0, None), capsys.readouterr().err
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
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--quiet", "--set", "evaluate.positions=last", "--set", "edits.0.layers=0-1",
              "--set", f"edits.0.top_k={k}"])
        raise SystemExit(0)
    assert info.value.code in (0, None), capsys.readouterr().err
    expected = [[n["layer"], n["index"]] for n in kept[:k]]
    baked = json.loads((out / "edits" / "ja-t1" / "tnedit.json").read_text())
    assert [[a, b] for a, b, _ in baked["edit"]["neurons"]] == expected
    edit = json.loads((out / "reports" / "ja-t1" / "report.json").read_text())["edit"]
    assert edit["n_neurons"] == k and edit["edit_sha256"] == _rows_sha256(baked["edit"]["neurons"])


def _rows_sha256(rows: list) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()
