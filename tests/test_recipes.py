"""Recipe validation, overrides, and the step runner with its skip-if-unchanged stamps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.tiny import make_tiny
from tnedit.errors import RecipeError
from tnedit.recipes import Recipe, load_recipe, parse_override
from tnedit.recipes.schema import STEPS
from tnedit.settings import recipe_keys, setting_fields

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
        (MINIMAL + "identify: {method: magic}\n", "identify.method must be 'transfer' or 'lape', got 'magic'"),
        (MINIMAL + "identify: {type: 3}\n", "identify.type must be 1, 2 or both, got 3"),
        (MINIMAL + "identify: {type: true}\n", "identify.type must be 1, 2 or both, got True"),
        (MINIMAL + "identify: {type: 1.0}\n", "identify.type must be 1, 2 or both, got 1.0"),
        (MINIMAL + "identify: {data: x.tsv}\n", "identify: unknown key 'data'"),
        (MINIMAL.replace("op: zero", "op: add"), "edits[0].op must be zero or scale, got 'add'"),
        (MINIMAL.replace("op: zero", "op: 1"), "edits[0].op must be zero or scale, got '1'"),
        (MINIMAL.replace("op: zero", "op: [zero]"), "edits[0].op: expected str, got ['zero']"),
        (MINIMAL.replace("op: zero", "op: scale, factor: half"), "edits[0].factor: expected float, got 'half'"),
        (MINIMAL + "evaluate: {positions: first}\n", "evaluate.positions must be all, last or prompt"),
        (MINIMAL + "evaluate: {positions: null}\n", "evaluate.positions: expected str, got None"),
        (MINIMAL + "evaluate: {control: always}\n", "evaluate.control must be random or none, got 'always'"),
        (MINIMAL + "evaluate: {languages: [ko]}\n", "evaluate: unknown key 'languages'"),
        (MINIMAL + "push: {dir: x}\n", "push: unknown key 'dir'"),
    ],
)
def test_bad_recipes(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert needle in str(info.value) and str(path) in str(info.value)


# --- the steps nest the verbs' settings classes ---------------------------------------------------------

# Keys a recipe step has besides its verb's settings fields.
RECIPE_ONLY = {"identify": {"lape_languages"}, "edits": {"name"}, "evaluate": {"enabled", "metrics"}, "push": {"edit"}}
# Defaults a recipe has that its verb does not: a random control, no push without a repo, a private repo.
RECIPE_DEFAULTS = {("evaluate", "control"): "random", ("push", "repo"): None, ("push", "private"): True}
# The keys recipes accepted before the steps nested the settings classes: each must keep working.
EARLIER_KEYS = {
    "identify": {"method", "type", "k", "layers", "batch_size", "lape_languages"},
    "edits": {"name", "neurons", "op", "factor", "top_k", "layers"},
    "evaluate": {"enabled", "control", "positions", "seed", "metrics", "n_qa", "n_gen"},
    "push": {"repo", "private", "edit"},
}
# What the runner fills from the recipe's model, languages, data and edits: no step key may shadow it.
FILLED_BY_RUNNER = {
    "identify": {"model", "lang", "langs", "data", "limit", "dtype", "device", "revision", "output"},
    "edits": {"model", "out", "revision", "overwrite"},
    "evaluate": {"original", "languages", "edited", "neurons", "op", "factor", "top_k", "layers", "data", "skip",
                 "n_pairs", "dtype", "device", "revision"},
    "push": {"dir"},
}


def _verbs() -> dict[str, type]:
    from tnedit.edit.settings import ApplySettings
    from tnedit.evaluate.settings import EvaluateSettings
    from tnedit.hub import PushSettings
    from tnedit.identify.settings import IdentifySettings

    return {"identify": IdentifySettings, "edits": ApplySettings, "evaluate": EvaluateSettings, "push": PushSettings}


@pytest.mark.parametrize("section", sorted(STEPS))
def test_every_recipe_key_is_a_settings_field(section):
    step, verb = STEPS[section], _verbs()[section]
    assert issubclass(step, verb), "a recipe step nests its verb's settings class"
    keys = set(recipe_keys(step))
    verb_fields = {f.name for f in dataclasses.fields(verb)}
    assert keys - verb_fields == RECIPE_ONLY[section]
    assert keys & verb_fields <= set(recipe_keys(verb)), "a step opens no field its verb keeps from recipes"
    assert EARLIER_KEYS[section] <= keys
    assert not keys & FILLED_BY_RUNNER[section]


@pytest.mark.parametrize("section", sorted(STEPS))
def test_step_defaults_and_types_are_the_settings(section):
    step, verb = STEPS[section], _verbs()[section]
    own = {f.name: f for f in setting_fields(step)}
    for f in setting_fields(verb):
        expected = RECIPE_DEFAULTS.get((section, f.name), f.default)
        assert own[f.name].default == expected, f"{section}.{f.name}"
        if (section, f.name) != ("push", "repo"):  # a recipe may leave push.repo empty: no push
            assert own[f.name].type == f.type, f"{section}.{f.name}"
            assert own[f.name].info.help == f.info.help, f"{section}.{f.name}"


def test_a_step_leaves_its_verb_alone():
    """not_in_recipe changes the step's own copies of the fields, not the verb's."""
    verbs = _verbs()
    for section, step in STEPS.items():
        hidden = set(recipe_keys(verbs[section])) - set(recipe_keys(step))
        for name in hidden:
            assert verbs[section].__dataclass_fields__[name] is not step.__dataclass_fields__[name]


def test_runner_builds_the_verbs_own_settings(tmp_path):
    from tnedit.identify.settings import IdentifySettings
    from tnedit.recipes.runner import verb_settings

    recipe = load_recipe(write(tmp_path, MINIMAL + "identify: {k: 7, layers: 0-3}\n"))
    settings = verb_settings(recipe.identify, IdentifySettings, model="m", limit=5)
    assert type(settings) is IdentifySettings
    assert (settings.model, settings.k, settings.layers, settings.limit) == ("m", 7, "0-3", 5)


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
