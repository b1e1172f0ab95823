"""Bad recipes and bad pushes: one line, exit 2, nothing written; and where a recipe's paths point.

Recipe cases fail while the recipe loads, before `tnedit run` writes anything (recipe.json, stamps,
identify results). Push cases fail before any request: the Hub endpoint is a dead loopback port.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.support.hostile import expect_clean_failure, run_cli
from tests.support.paths import REPO as ROOT
from tnedit.errors import RecipeError
from tnedit.recipes import load_recipe
from tnedit.reporting import NullReporter


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.support.tiny import make_tiny

    return make_tiny("llama", tmp_path_factory.mktemp("hostile-recipes"), subdir="tiny")


@pytest.fixture
def lab(tiny_model, tmp_path) -> Path:
    """tmp_path/models/tiny (a model), tmp_path/data/en-ja.tsv; recipes go in tmp_path/recipes."""
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny")
    (tmp_path / "data").mkdir()
    rows = "en\tja\nThe cat sits.\t猫が座る。\nI like tea.\t私はお茶が好きです。\n"
    (tmp_path / "data" / "en-ja.tsv").write_text(rows, encoding="utf-8")
    (tmp_path / "recipes").mkdir()
    return tmp_path


BASE = """
model: {name: ../models/tiny, dtype: float32, device: cpu}
languages: [ja]
data: {source: "../data/en-{lang}.tsv", identify_rows: 2, evaluate_rows: 2}
identify: {type: 1, k: 4, batch_size: 2}
edits:
  - {name: ja-t1, neurons: "ja:1"}
output: ../out
"""


def recipe(lab: Path, text: str = BASE, name: str = "r.yaml", **replace: str) -> Path:
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = lab / "recipes" / name
    path.write_text(text, encoding="utf-8")
    return path


def inputs(lab: Path, *extra: Path) -> list[Path]:
    return [lab / "models" / "tiny", lab / "data", *(lab / "recipes").iterdir(), *extra]


def refused(lab: Path, case: str, path: Path, capsys, *needles: str, args: tuple[str, ...] = ()) -> str:
    """`tnedit run PATH` (no --dry-run: the refusal must come before anything is written)."""
    return expect_clean_failure(case, ["run", str(path), "--quiet", *args], capsys, watch=[lab],
                                inputs=inputs(lab), needles=needles).stderr


# --- 7. the output never overlaps the model, and names stay inside it ------------------------------


@pytest.mark.parametrize(
    "output,case",
    [("../models/tiny", "output is the model directory"), ("../models/tiny/run", "output inside the model"),
     ("../models", "output contains the model")],
)
def test_output_overlapping_the_model(lab, capsys, output, case):
    path = recipe(lab, **{"output: ../out": f"output: {output}"})
    refused(lab, f"run: {case}", path, capsys, "output:", "must not be the source directory")


def test_output_holding_the_data(lab, capsys):
    path = recipe(lab, **{"output: ../out": "output: ../data"})
    refused(lab, "run: output holds the data file", path, capsys, "holds the input", "en-ja.tsv")


def test_output_is_the_working_directory(lab, capsys, monkeypatch):
    path = recipe(lab, **{"output: ../out": "output: ."})
    monkeypatch.chdir(lab / "recipes")
    refused(lab, "run: output is the working directory", path, capsys, "working directory")


@pytest.mark.parametrize("name", ["../escape", "a/b", "/tmp/abs", ".", "x\\y"])
def test_edit_names_are_plain(lab, capsys, name):
    path = recipe(lab, **{"name: ja-t1": f"name: {json.dumps(name)}"})
    refused(lab, f"run: edit name {name}", path, capsys, "edits[0].name", name)


def test_run_name_is_plain(lab, capsys):
    path = recipe(lab, "name: ../../up\n" + BASE.replace("output: ../out\n", ""))
    refused(lab, "run: recipe name ../../up", path, capsys, "name", "../../up")


# --- 9. malformed recipes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,case,needle",
    [
        (BASE + "identfy: {k: 3}\n", "misspelt key", "did you mean 'identify'?"),
        ("model: [\n", "not YAML", "not valid YAML at line"),
        ("- a\n- b\n", "a list, not a mapping", "got a YAML list"),
        ("just text\n", "a scalar, not a mapping", "got a YAML str"),
        ("", "an empty file", "the recipe is empty"),
        ("# only a comment\n", "only comments", "the recipe is empty"),
        (BASE.replace("identify_rows: 2", "identify_rows: 0"), "identify_rows 0", "data.identify_rows"),
        (BASE.replace('"ja:1"', '"ja:2"'), "neurons ja:2, identify type 1", "names no neuron set"),
        (BASE.replace('"ja:1"', '"ko:1"'), "neurons ko:1, languages [ja]", "names no neuron set"),
        (BASE.replace("../models/tiny", '"${TNEDIT_TEST_NOT_SET}/tiny"'), "unset ${VAR}", "TNEDIT_TEST_NOT_SET"),
    ],
)
def test_malformed_recipes(lab, capsys, monkeypatch, text, case, needle):
    monkeypatch.delenv("TNEDIT_TEST_NOT_SET", raising=False)
    path = recipe(lab, text)
    err = refused(lab, f"run: {case}", path, capsys, needle)
    assert str(path) in err


def test_recipe_not_utf8(lab, capsys):
    path = lab / "recipes" / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    refused(lab, "run: recipe not UTF-8", path, capsys, "not UTF-8")


def test_recipe_missing(lab, capsys):
    expect_clean_failure("run: recipe file missing", ["run", str(lab / "recipes" / "nope.yaml")], capsys,
                         watch=[lab], inputs=inputs(lab), needles=["recipe file not found"])


@pytest.mark.parametrize(
    "override,case,needle",
    [
        ("model.name.x=1", "--set into a string", "is '../models/tiny', not a mapping"),
        ("languages.0.x=1", "--set into a list item", "not a mapping"),
        ("identify.k=[", "--set value not YAML", "not valid YAML"),
        ("edits.5.name=x", "--set index out of range", "'5' is not an index"),
        ("identify.k", "--set without =", "KEY.PATH=VALUE"),
        ("identify.kk=3", "--set misspelt key", "did you mean 'k'?"),
        ("identify.k=many", "--set wrong type", "identify.k: expected int"),
        ("edits.0.name=../x", "--set edit name ../x", "edits[0].name"),
    ],
)
def test_bad_overrides(lab, capsys, override, case, needle):
    refused(lab, f"run: {case}", recipe(lab), capsys, needle, args=("--set", override))


# --- --dry-run checks what the run reads --------------------------------------------------------


@pytest.mark.parametrize(
    "old,new,case,needle",
    [
        ("../models/tiny", "../models/nope", "model directory missing", "model.name"),
        ("../models/tiny", "not a hub id!", "model neither a directory nor a Hub id", "not a Hub id"),
        ("../models/tiny", "../data/en-ja.tsv", "model is a file", "is not a directory"),
        ("../data/en-{lang}.tsv", "../data/en-{lang}.jsonl", "data file missing", "en-ja.jsonl"),
        ('"ja:1"', "../sets/missing.json", "neurons file missing", "missing.json"),
    ],
)
def test_dry_run_checks_inputs(lab, capsys, old, new, case, needle):
    path = recipe(lab, **{old: new})
    for dry in ((), ("--dry-run",)):
        refused(lab, f"run{' --dry-run' if dry else ''}: {case}", path, capsys, needle, args=dry)


def test_dry_run_accepts_a_hub_id_and_resolves_paths(lab, capsys, monkeypatch):
    monkeypatch.chdir(lab / "data")  # anywhere but the recipe's directory
    path = recipe(lab, **{"../models/tiny": "some-owner/some-model"})
    code, out, err = run_cli(["run", str(path), "--dry-run"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed["model"]["name"] == "some-owner/some-model"
    assert printed["data"]["source"] == str(lab / "data" / "en-{lang}.tsv")
    assert printed["output"] == str(lab / "out")
    assert not (lab / "out").exists()


# --- path resolution ---------------------------------------------------------------------------------


def test_paths_are_relative_to_the_recipe_not_the_cwd(lab, monkeypatch):
    (lab / "sets").mkdir()
    (lab / "sets" / "n.json").write_text("[[1, 3]]\n")
    (lab / "recipes" / "owner").mkdir()
    (lab / "recipes" / "owner" / "model").mkdir()  # a Hub-id-shaped name that exists beside the recipe
    extra = '  - {name: ja-t1, neurons: "ja:1"}\n  - {name: file, neurons: ../sets/n.json}\n' \
            '  - {name: home, neurons: "~/n.json"}\n'
    path = recipe(lab, BASE.replace('  - {name: ja-t1, neurons: "ja:1"}\n', extra))
    for cwd in (lab, lab / "data", Path("/")):
        monkeypatch.chdir(cwd)
        r = load_recipe(path)
        assert r.model.name == str(lab / "models" / "tiny")
        assert r.data.source == str(lab / "data" / "en-{lang}.tsv")
        assert r.output == str(lab / "out")
        assert [e.neurons for e in r.edits] == ["ja:1", str(lab / "sets" / "n.json"), str(Path.home() / "n.json")]
        assert load_recipe(path, ["model.name=owner/model"]).model.name == "owner/model", "--set is cwd-relative"
        hub = load_recipe(recipe(lab, **{"../models/tiny": "owner/model"}, name="hub.yaml"))
        assert hub.model.name == str(lab / "recipes" / "owner" / "model"), "an existing local path wins"
        assert load_recipe(recipe(lab, **{"../models/tiny": "owner/elsewhere"}, name="hub2.yaml")).model.name == \
            "owner/elsewhere", "a Hub id stays a Hub id"


def test_overrides_are_relative_to_the_working_directory(lab, monkeypatch):
    monkeypatch.chdir(lab / "data")
    r = load_recipe(recipe(lab), ["data.source=en-{lang}.tsv", "output=../elsewhere"])
    assert r.data.source == str(lab / "data" / "en-{lang}.tsv")
    assert r.output == str(lab / "elsewhere")
    assert r.model.name == str(lab / "models" / "tiny"), "values not overridden stay recipe-relative"


def test_default_output_is_under_the_working_directory(lab):
    r = load_recipe(recipe(lab, BASE.replace("output: ../out\n", ""), name="named.yaml"))
    assert r.output == str(Path("runs") / "named")


def test_environment_variables(lab, monkeypatch):
    text = BASE.replace("../models/tiny", '"${TNEDIT_TEST_MODELS:-../models}/tiny"')
    monkeypatch.delenv("TNEDIT_TEST_MODELS", raising=False)
    assert load_recipe(recipe(lab, text)).model.name == str(lab / "models" / "tiny")
    other = lab / "elsewhere"
    shutil.copytree(lab / "models", other)
    monkeypatch.setenv("TNEDIT_TEST_MODELS", str(other))
    assert load_recipe(recipe(lab, text)).model.name == str(other / "tiny")


def test_demo_recipe_finds_the_models_make_converts(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    demo = ROOT / "recipes" / "gemma3-270m-demo.yaml"
    monkeypatch.setenv("TNEDIT_MODELS", str(tmp_path / "models"))
    assert load_recipe(demo).model.name == str(tmp_path / "models" / "gemma3-270m")
    monkeypatch.delenv("TNEDIT_MODELS")
    r = load_recipe(demo)
    assert r.model.name == str(ROOT / ".cache" / "models" / "gemma3-270m")
    assert r.output == str(ROOT / "runs" / "gemma3-270m-demo"), "make demo writes where it always did"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*-paper.yaml")), ids=lambda p: p.name)
def test_paper_recipes_read_the_shared_tatoeba_split(path, monkeypatch, tmp_path):
    from tnedit.recipes import check_inputs

    monkeypatch.chdir(tmp_path)
    r = load_recipe(path)
    assert r.data.source == str(ROOT.parent / "shared" / "data" / "tatoeba" / "en-{lang}.train.tsv")
    assert r.output == str(ROOT / "runs" / path.stem)
    if not (ROOT.parent / "shared" / "data" / "tatoeba").is_dir():
        pytest.skip("the shared Tatoeba split is not on this machine")
    check_inputs(r, str(path))  # the Hub model and every language's file


def test_run_help_cites_recipes_that_exist(capsys):
    code, out, _ = run_cli(["run", "--help"], capsys)
    cited = re.findall(r"recipes/[\w.-]+\.yaml", out)
    assert code == 0 and cited
    for name in cited:
        assert (ROOT / name).is_file(), name


def test_identify_step_appears_atomically(lab, monkeypatch):
    """A run stopped inside the identify step leaves no identify directory and no temporary."""
    from tnedit.recipes import RecipeRunner

    def interrupted(self, directory):
        (directory / "neurons-ja-type1.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(RecipeRunner, "_identify_into", interrupted)
    r = load_recipe(recipe(lab))
    with pytest.raises(KeyboardInterrupt):
        RecipeRunner(r, reporter=NullReporter()).run()
    out = lab / "out"
    assert sorted(p.name for p in out.iterdir()) == ["recipe.json"]
    assert json.loads((out / "recipe.json").read_text())["model"]["name"] == str(lab / "models" / "tiny")


def test_missing_identify_output_names_the_file(lab):
    from tnedit.recipes import RecipeRunner

    r = load_recipe(recipe(lab))
    runner = RecipeRunner(r, reporter=NullReporter())
    with pytest.raises(RecipeError, match=r"wrote no .*neurons-ja-type1\.json"):
        runner._neuron_file(r.edits[0])


# --- 8. push ------------------------------------------------------------------------------------------

TOKEN = "hf_hostile_SECRET_token"


@pytest.fixture(scope="module")
def edited_checkpoint(tiny_model, tmp_path_factory) -> Path:
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.formats.neurons import Neuron

    out = tmp_path_factory.mktemp("hostile-push") / "edited"
    apply_to_checkpoint(str(tiny_model), make_edit_spec([Neuron(0, 1)]), out, reporter=NullReporter())
    return out


@pytest.fixture
def push_lab(edited_checkpoint, tmp_path, monkeypatch) -> Path:
    """A private edited checkpoint, a token in the environment, and a Hub endpoint nobody listens on."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return Path(shutil.copytree(edited_checkpoint, tmp_path / "edited"))


def _tamper_provenance(edited: Path, change) -> None:
    path = edited / "tnedit.json"
    prov = json.loads(path.read_text())
    change(prov)
    path.write_text(json.dumps(prov))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


PUSH_CASES = {
    "DIR missing": (lambda d: shutil.rmtree(d), "no such directory"),
    "DIR is not a tnedit checkpoint": (lambda d: (d / "tnedit.json").unlink(), "not a tnedit checkpoint"),
    "weights differ from tnedit.json": (lambda d: _flip_last_byte(d / "model.safetensors"),
                                        "SHA-256 differs from tnedit.json"),
    "a weight file is missing": (lambda d: (d / "model.safetensors").unlink(), "are missing: model.safetensors"),
    "tnedit.json not JSON": (lambda d: (d / "tnedit.json").write_text("{oops"), "not valid JSON"),
    "tnedit.json without weights": (lambda d: _tamper_provenance(d, lambda p: p.pop("weights")), "'weights'"),
    "tnedit.json without edit.per_layer": (lambda d: _tamper_provenance(d, lambda p: p["edit"].pop("per_layer")),
                                           "'edit.per_layer'"),
    "tnedit.json without source": (lambda d: _tamper_provenance(d, lambda p: p.pop("source")),
                                   "'source.name_or_path'"),
    "tnedit.json weight name ../x": (
        lambda d: _tamper_provenance(d, lambda p: p.update(weights={"../x.safetensors": {"sha256": "0"}})),
        "leaves"),
}


@pytest.mark.parametrize("case", list(PUSH_CASES))
def test_push_refuses_bad_dirs(push_lab, tmp_path, capsys, case):
    damage, needle = PUSH_CASES[case]
    damage(push_lab)
    kept = [p for p in push_lab.iterdir()] if push_lab.exists() else []
    outcome = expect_clean_failure(f"push: {case}", ["push", str(push_lab), "user/tiny", "--quiet"], capsys,
                                   watch=[tmp_path], inputs=kept, needles=[needle])
    assert TOKEN not in outcome.stderr


@pytest.mark.parametrize("repo", ["not a repo!", "a/b/c", "owner/ends-"])
def test_push_refuses_bad_repo_ids(push_lab, tmp_path, capsys, repo):
    outcome = expect_clean_failure(f"push: repo id {repo!r}", ["push", str(push_lab), repo, "--quiet"], capsys,
                                   watch=[tmp_path], inputs=list(push_lab.iterdir()), needles=["invalid repo id"])
    assert TOKEN not in outcome.stderr


def test_push_dir_checked_before_offline_mode(push_lab, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (push_lab / "tnedit.json").unlink()
    expect_clean_failure("push: not a tnedit checkpoint, offline", ["push", str(push_lab), "user/tiny"], capsys,
                         watch=[tmp_path], inputs=list(push_lab.iterdir()), needles=["not a tnedit checkpoint"])
