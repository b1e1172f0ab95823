"""Recipe validation, overrides, and the recipe steps against the verbs' settings classes (no run).

The step runner on a tiny model is in ``tests/integration/test_recipes.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT
from tnedit.errors import RecipeError
from tnedit.recipes import Recipe, load_recipe, parse_override
from tnedit.recipes.schema import STEPS
from tnedit.settings import recipe_keys, setting_fields


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
        (MINIMAL + "tune: {enabled: true, max_neurons: 0}\n", "tune: --max-neurons must be an integer of at least 1"),
        (MINIMAL + "tune: {enabled: true, keep: [ja]}\n", "tune: --keep ja: includes --lang ja"),
        (MINIMAL + "tune: {lang: ko}\n", "tune: unknown key 'lang'"),
        (MINIMAL.replace('"ja:1"', '"ja:selective"'), "names no neuron set the identify step writes"),
    ],
)
def test_bad_recipes(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert needle in str(info.value) and str(path) in str(info.value)


# --- the steps nest the verbs' settings classes ---------------------------------------------------------

# Keys a recipe step has besides its verb's settings fields.
RECIPE_ONLY = {"identify": {"lape_languages", "enabled"}, "tune": {"enabled", "keep_data"}, "edits": {"name"},
               "evaluate": {"enabled", "metrics"}, "push": {"edit"}}
# Defaults a recipe has that its verb does not: a random control, no push without a repo, a private repo.
RECIPE_DEFAULTS = {("evaluate", "control"): "random", ("push", "repo"): None, ("push", "private"): True}
# The keys recipes accepted before the steps nested the settings classes: each must keep working.
EARLIER_KEYS = {
    "identify": {"method", "type", "k", "layers", "batch_size", "lape_languages"},
    "tune": set(),
    "edits": {"name", "neurons", "op", "factor", "top_k", "layers"},
    "evaluate": {"enabled", "control", "positions", "seed", "metrics", "n_qa", "n_gen"},
    "push": {"repo", "private", "edit"},
}
# What the runner fills from the recipe's model, languages, data and edits: no step key may shadow it.
FILLED_BY_RUNNER = {
    "identify": {"model", "lang", "langs", "data", "limit", "dtype", "device", "revision", "output"},
    "tune": {"model", "lang", "data", "limit", "dtype", "device", "revision", "output", "resume"},
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
    from tnedit.tune.settings import TuneSettings

    return {"identify": IdentifySettings, "tune": TuneSettings, "edits": ApplySettings, "evaluate": EvaluateSettings,
            "push": PushSettings}


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


def test_the_mmlu_prox_recipe_is_the_papers_experiment(tmp_path):
    """Type-1 top-1,000 of ja/ko/it at the prompt positions with a random control, each edit benchmarked on
    its own language's MMLU-ProX (5-shot) through the harness."""
    from tnedit.recipes.runner import RecipeRunner

    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-mmlu-prox.yaml", [f"output={tmp_path / 'out'}"])
    assert set(recipe.languages) == {"ja", "ko", "it"}
    assert recipe.identify.k == 1000 and recipe.identify.type == 1 and recipe.identify.layers is None
    assert recipe.evaluate.positions == "prompt" and recipe.evaluate.control == "random"
    runner = RecipeRunner(recipe)
    (tmp_path / "out" / "identify").mkdir(parents=True)
    for edit in recipe.edits:
        lang = edit.neurons.split(":")[0]
        (tmp_path / "out" / "identify" / f"neurons-{lang}-type1.json").write_text("{}")  # what identify writes
        settings = runner._evaluate_settings(edit, tmp_path / "out" / "edits" / edit.name).resolve()
        assert settings.lm_eval == [f"mmlu_prox_{lang}"] and settings.lm_eval_fewshot == 5
        assert settings.neurons is not None and settings.positions == "prompt"
