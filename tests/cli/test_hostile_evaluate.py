"""Bad input to `tnedit evaluate`: one line, exit 2, nothing written, inputs untouched; and SIGTERM.

Two tiny llamas of identical shapes but different weights live in folders of the same name
(``models/tiny`` and ``other/tiny``), so only the content fingerprint can tell them apart.
Every case fails before a model is loaded, except the signal cases, which stop a real run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.hostile import compare_snapshots, expect_clean_failure, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--n-pairs", "8", "--n-qa", "0", "--n-gen", "0", "--n-langid", "0", "--batch-size", "8", "--quiet"]




def _neuron_set(model_info=None):
    from tnedit.formats.neurons import Method, Neuron, NeuronSet

    picks = [(1, 3), (2, 5), (1, 17), (2, 9), (0, 60), (2, 33), (1, 8)]
    return NeuronSet([Neuron(a, b, score=1.0 - i / 10) for i, (a, b) in enumerate(picks)],
                     method=Method(kind="manual", layers=[0, 1, 2]), model=model_info)


def _model_info(path: Path):
    from tnedit.checkpoint import open_checkpoint
    from tnedit.formats.neurons import ModelInfo

    ckpt = open_checkpoint(path)
    return ModelInfo(str(path), ckpt.model_type, ckpt.num_layers, ckpt.intermediate_size, ckpt.fingerprint())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """models/tiny, other/tiny (same shapes and folder name, other weights), ed (edited from models/tiny),
    neurons.json (for models/tiny), other-neurons.json (for other/tiny), data.tsv and qa.jsonl."""
    from tests.support.tiny import make_tiny
    from tnedit.corpus import builtin_corpus
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.reporting import NullReporter

    root = tmp_path_factory.mktemp("hostile-evaluate")
    model = make_tiny("llama", root, subdir="models/tiny")
    other = make_tiny("llama", root, seed=1, subdir="other/tiny")
    ns = _neuron_set(_model_info(model))
    ns.save(root / "neurons.json")
    _neuron_set(_model_info(other)).save(root / "other-neurons.json")
    apply_to_checkpoint(str(model), make_edit_spec(ns, "zero"), root / "ed", neuron_set=ns,
                        neuron_source=str(root / "neurons.json"), reporter=NullReporter())
    corpus = builtin_corpus()
    rows = ["en\tja", *(f"{en}\t{ja}" for en, ja in corpus.pairs("en", "ja")[:40])]
    (root / "data.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    qa = {"id": "q1", "en": {"question": "Capital of Japan?", "answers": ["Tokyo"]},
          "ja": {"question": "日本の首都は？", "answers": ["東京"]}}
    (root / "qa.jsonl").write_text(json.dumps(qa, ensure_ascii=False) + "\n", encoding="utf-8")
    return root


@dataclass
class World:
    root: Path
    model: Path
    other: Path
    ed: Path
    neurons: Path
    other_neurons: Path
    data: Path
    qa: Path

    @property
    def inputs(self) -> list[Path]:
        return [self.model, self.other, self.ed, self.neurons, self.other_neurons, self.data, self.qa]


@pytest.fixture
def world(built, tmp_path) -> World:
    """A private copy of everything, so a case may watch all of tmp_path."""
    for item in built.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
    t = tmp_path
    return World(t, t / "models" / "tiny", t / "other" / "tiny", t / "ed", t / "neurons.json",
                 t / "other-neurons.json", t / "data.tsv", t / "qa.jsonl")


def baked(w: World, *extra: str, out: Path | None = None, edited: Path | None = None) -> list[str]:
    return ["evaluate", str(w.model), str(edited or w.ed), "--lang", "ja", "-o", str(out or w.root / "report"),
            *QUICK, *extra]


def hook(w: World, *extra: str, neurons: str | None = None, out: Path | None = None) -> list[str]:
    return ["evaluate", str(w.model), "--neurons", neurons or str(w.neurons), "--lang", "ja",
            "-o", str(out or w.root / "report"), *QUICK, *extra]


def fails(w: World, case: str, args: list[str], capsys, *needles: str) -> str:
    return expect_clean_failure(case, args, capsys, watch=[w.root], inputs=w.inputs, needles=needles).stderr


# --- 1. inputs protected from -o -------------------------------------------------------------------


def test_report_dir_is_edited(world, capsys):
    fails(world, "evaluate: -o EDITED --overwrite", baked(world, "--overwrite", out=world.ed), capsys,
          "must not be the source directory", str(world.ed))


def test_report_dir_is_original(world, capsys):
    fails(world, "evaluate: -o ORIGINAL --overwrite", baked(world, "--overwrite", out=world.model), capsys,
          "must not be the source directory")


def test_report_dir_inside_edited(world, capsys):
    fails(world, "evaluate: -o inside EDITED", baked(world, out=world.ed / "evaluation"), capsys,
          "inside it, or contain it")


def test_report_dir_contains_edited(world, capsys):
    box = world.root / "box"
    box.mkdir()
    edited = Path(shutil.copytree(world.ed, box / "ed"))
    args = baked(world, "--overwrite", out=box, edited=edited)
    expect_clean_failure("evaluate: -o contains EDITED --overwrite", args, capsys, watch=[world.root],
                         inputs=[*world.inputs, edited], needles=["must not be the source directory"])


def test_report_dir_holds_the_neurons_file(world, capsys):
    box = world.root / "sets"
    box.mkdir()
    neurons = Path(shutil.copy2(world.neurons, box / "n.json"))
    args = hook(world, "--overwrite", neurons=str(neurons), out=box)
    expect_clean_failure("evaluate: -o holds the --neurons file", args, capsys, watch=[world.root],
                         inputs=[*world.inputs, neurons], needles=["holds the input", "n.json"])


@pytest.mark.parametrize("which", ["data", "qa"])
def test_report_dir_holds_data_or_qa(world, capsys, which):
    box = world.root / f"{which}-dir"
    box.mkdir()
    source = world.data if which == "data" else world.qa
    moved = Path(shutil.copy2(source, box / source.name))
    args = baked(world, "--overwrite", f"--{which}", str(moved), out=box)
    expect_clean_failure(f"evaluate: -o holds --{which}", args, capsys, watch=[world.root],
                         inputs=[*world.inputs, moved], needles=["holds the input", source.name])


def test_report_dir_exists(world, capsys):
    (world.root / "report").mkdir()
    fails(world, "evaluate: -o exists, no --overwrite", baked(world), capsys, "already exists")


# --- 2. --update-card ------------------------------------------------------------------------------


def test_update_card_original(world, capsys):
    fails(world, "evaluate: --update-card ORIGINAL", baked(world, "--update-card", str(world.model)), capsys,
          "is ORIGINAL")


def test_update_card_not_a_tnedit_checkpoint(world, capsys):
    fails(world, "evaluate: --update-card DIR without tnedit.json",
          baked(world, "--update-card", str(world.other)), capsys, "has no tnedit.json", "tnedit apply")


def test_update_card_needs_provenance_in_the_library(world, hook_report):
    from tnedit.errors import InputError
    from tnedit.evaluate import update_card

    with pytest.raises(InputError, match="has no tnedit.json"):
        update_card(hook_report, world.model)
    assert not (world.model / "README.md").exists()
    card = update_card(hook_report, world.ed)
    assert "tnedit:evaluation:start" in card.read_text(encoding="utf-8")
    assert not [p.name for p in world.ed.iterdir() if ".tnedit-" in p.name], "no temporary left beside the card"


# --- 3. derivation and integrity -------------------------------------------------------------------


def test_edited_from_another_model_of_the_same_name(world, capsys):
    args = ["evaluate", str(world.other), str(world.ed), "--lang", "ja", "-o", str(world.root / "r"), *QUICK]
    fails(world, "evaluate: EDITED made from a same-named other model", args, capsys,
          "source fingerprint", "differs from ORIGINAL's", "--force")


def test_edited_weights_modified_after_apply(world, capsys):
    weights = world.ed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    fails(world, "evaluate: EDITED weights differ from tnedit.json", baked(world), capsys,
          str(weights), "SHA-256 differs from tnedit.json", "--force")


def test_edited_lists_a_missing_weight_file(world, capsys):
    prov_path = world.ed / "tnedit.json"
    prov = json.loads(prov_path.read_text())
    prov["weights"] = {"other.safetensors": prov["weights"]["model.safetensors"]}
    prov_path.write_text(json.dumps(prov))
    fails(world, "evaluate: tnedit.json lists a missing weight file", baked(world), capsys,
          "other.safetensors", "missing")


def test_edited_provenance_lacks_a_key(world, capsys):
    prov_path = world.ed / "tnedit.json"
    prov = json.loads(prov_path.read_text())
    del prov["edit"]["neurons"]
    prov_path.write_text(json.dumps(prov))
    fails(world, "evaluate: tnedit.json without edit.neurons", baked(world), capsys, "'edit.neurons'")


def test_neurons_made_for_another_model(world, capsys):
    fails(world, "evaluate: --neurons made for another model", hook(world, neurons=str(world.other_neurons)),
          capsys, "made for another model", "--force")


def _plan_warnings(s, original: Path) -> list[str]:
    from tnedit.evaluate.plan import plan_evaluation
    from tnedit.reporting import NullReporter

    class Recorder(NullReporter):
        def __init__(self):
            self.warnings: list[str] = []

        def warn(self, message: str) -> None:
            self.warnings.append(message)

    recorder = Recorder()
    plan_evaluation(s.resolve(), original, {"en": ["The cat sits."], "ja": ["猫が座る。"]}, reporter=recorder)
    return recorder.warnings


def test_legacy_fingerprints_warn_and_mismatches_can_be_forced(world):
    """A tnedit 0.1 shape-only fingerprint matches with a warning; --force turns a mismatch into one."""
    from tnedit.checkpoint import open_checkpoint
    from tnedit.evaluate import EvaluateSettings
    from tnedit.formats.neurons import load_neurons

    legacy = open_checkpoint(world.model).legacy_fingerprint()
    assert legacy != open_checkpoint(world.model).fingerprint()
    prov_path = world.ed / "tnedit.json"
    prov = json.loads(prov_path.read_text())
    prov["source"]["fingerprint"] = legacy
    prov_path.write_text(json.dumps(prov))
    ns = load_neurons(world.neurons)
    ns.model.fingerprint = legacy
    ns.save(world.neurons)

    for kind, path in (("edited", world.ed), ("neurons", world.neurons)):
        s = EvaluateSettings(str(world.model), ["ja"], **{kind: str(path)})
        (warning,) = _plan_warnings(s, world.model)
        assert "shape-only fingerprint" in warning and legacy in warning
    # the other model has the same shapes, so the same legacy fingerprint: it is accepted with the warning too
    s = EvaluateSettings(str(world.other), ["ja"], neurons=str(world.neurons))
    assert "shape-only" in _plan_warnings(s, world.other)[0]
    # a content fingerprint that differs needs --force, and then warns
    s = EvaluateSettings(str(world.model), ["ja"], neurons=str(world.other_neurons), force=True)
    assert "made for another model" in _plan_warnings(s, world.model)[0]


# --- 4. inline --neurons and 5. --layers before --top-k ---------------------------------------------


SMALL = dict(n_pairs=12, n_qa=0, n_gen=0, n_langid=0, batch_size=8, knn_k=3, pca_layers=2)


@pytest.fixture(scope="module")
def hook_report(built):
    from tnedit.evaluate import EvaluateSettings, run_evaluation

    return run_evaluation(EvaluateSettings(str(built / "models" / "tiny"), ["ja"], neurons=str(built / "neurons.json"),
                                     **SMALL))


def test_inline_neuron_list_equals_the_file(built, hook_report):
    from tnedit.evaluate import EvaluateSettings, run_evaluation
    from tnedit.formats.neurons import load_neurons

    inline = ",".join(f"{n.layer}:{n.index}" for n in load_neurons(built / "neurons.json").neurons)
    data = run_evaluation(EvaluateSettings(str(built / "models" / "tiny"), ["ja"], neurons=inline, **SMALL)).data
    ref = hook_report.data
    assert data["edit"]["n_neurons"] == ref["edit"]["n_neurons"] == 7
    assert data["edit"]["edit_sha256"] == ref["edit"]["edit_sha256"]
    assert data["conditions"]["edited"]["lm"] == ref["conditions"]["edited"]["lm"]
    assert data["conditions"]["edited"]["representation"] == ref["conditions"]["edited"]["representation"]


def test_top_k_counts_within_layers(built):
    """--top-k K --layers L edits the first K neurons of the set that lie in L, and the control draws from L."""
    from tnedit.evaluate import EvaluateSettings, run_evaluation
    from tnedit.formats.neurons import load_neurons

    order = load_neurons(built / "neurons.json").neurons
    expected = [(n.layer, n.index) for n in order if n.layer == 2][:2]
    assert [(n.layer, n.index) for n in order[:2]] != expected, "the fixture must tell the two orders apart"
    data = run_evaluation(EvaluateSettings(str(built / "models" / "tiny"), ["ja"], neurons=str(built / "neurons.json"),
                                     top_k=2, layers="2", control="random", **SMALL)).data
    assert data["edit"]["n_neurons"] == 2 and data["edit"]["per_layer"] == {2: 2}
    assert {layer for layer, _ in data["control"]["neurons"]} == {2}
    from tnedit.edit import make_edit_spec

    spec = make_edit_spec(order, top_k=2, layers=[2])
    assert [(n.layer, n.index) for n in spec.neurons] == expected


def test_evaluate_help_states_the_order(capsys):
    from tests.support.hostile import run_cli

    code, out, _ = run_cli(["evaluate", "--help"], capsys)
    assert code == 0 and "the first K neurons within --layers" in " ".join(out.split())


def test_inline_list_out_of_range(world, capsys):
    fails(world, "evaluate: --neurons 9:1 (layer out of range)", hook(world, neurons="9:1,1:3"), capsys, "9")


def test_neurons_neither_file_nor_list(world, capsys):
    fails(world, "evaluate: --neurons not a file nor a list", hook(world, neurons=str(world.root / "nope.json")),
          capsys, "nope.json")


# --- 6. --skip ----------------------------------------------------------------------------------------


def test_skip_past_the_end_says_how_many_rows(world, capsys):
    from tnedit.corpus import builtin_corpus

    total = len(builtin_corpus())
    fails(world, "evaluate: --skip past the end", baked(world, "--skip", str(total)), capsys,
          f"has {total} rows", f"--skip {total} leaves 0")


# --- 9. every other bad input ---------------------------------------------------------------------


def test_missing_original(world, capsys):
    args = ["evaluate", str(world.root / "gone"), str(world.ed), "--lang", "ja", "-o", str(world.root / "r"), *QUICK]
    fails(world, "evaluate: ORIGINAL missing", args, capsys, "gone", "no such directory")


def test_edited_is_a_file(world, capsys):
    fails(world, "evaluate: EDITED is a file", baked(world, edited=world.neurons), capsys, "neurons.json")


def test_edited_missing(world, capsys):
    fails(world, "evaluate: EDITED missing", baked(world, edited=world.root / "gone"), capsys, "no such directory")


def test_edited_without_provenance(world, capsys):
    fails(world, "evaluate: EDITED without tnedit.json", baked(world, edited=world.other), capsys,
          "no tnedit.json", "--force")


def test_edited_and_neurons(world, capsys):
    fails(world, "evaluate: both EDITED and --neurons", baked(world, "--neurons", str(world.neurons)), capsys,
          "exactly one")


def test_neither_edited_nor_neurons(world, capsys):
    args = ["evaluate", str(world.model), "--lang", "ja", "-o", str(world.root / "r"), *QUICK]
    fails(world, "evaluate: neither EDITED nor --neurons", args, capsys, "exactly one")


@pytest.mark.parametrize("lang,needle", [("en", "shared language"), ("xx", "'xx'")])
def test_bad_language(world, capsys, lang, needle):
    args = ["evaluate", str(world.model), str(world.ed), "--lang", lang, "-o", str(world.root / "r"), *QUICK]
    fails(world, f"evaluate: --lang {lang}", args, capsys, needle)


@pytest.mark.parametrize("flag,needle", [("--n-pairs", "at least 2"), ("--batch-size", "at least 1")])
def test_zero_counts(world, capsys, flag, needle):
    fails(world, f"evaluate: {flag} 0", baked(world, flag, "0"), capsys, flag, needle)


def test_malformed_qa(world, capsys):
    world.qa.write_text('{"id": "q1", "en": \n', encoding="utf-8")
    fails(world, "evaluate: --qa malformed JSONL", baked(world, "--n-qa", "1", "--qa-shots", "0",
                                                         "--qa", str(world.qa)), capsys, "qa.jsonl", "line 1")


def test_missing_data(world, capsys):
    fails(world, "evaluate: --data missing", baked(world, "--data", str(world.root / "none.tsv")), capsys,
          "none.tsv", "no such file")


def test_factor_without_scale(world, capsys):
    fails(world, "evaluate: --factor with --op zero", hook(world, "--factor", "2"), capsys, "--factor")


# --- 10. signals ----------------------------------------------------------------------------------

# Runs `tnedit evaluate` with one stage replaced by a stall that first says it was reached, so the
# signal lands at a known point: mid-run, or while the report's temporary directory exists.
STALL = """
import pathlib, sys, time
import tnedit.evaluate.pipeline as pipeline
ready, stage = pathlib.Path(sys.argv[1]), sys.argv[2]
def stall(*args, **kwargs):
    ready.write_text(stage)
    time.sleep(120)
if stage == "generation":
    pipeline.run_generation = stall
else:
    pipeline.write_plots = stall
from tnedit.cli import main
main(sys.argv[3:])
"""


@pytest.mark.parametrize("stage", ["generation", "plots"])
def test_sigterm_leaves_no_report(world, tmp_path_factory, stage):
    ready = tmp_path_factory.mktemp("signal") / "ready"
    out = world.root / "report"
    args = baked(world, "--n-gen", "1")
    before = snapshot([world.root])
    proc = subprocess.Popen([sys.executable, "-c", STALL, str(ready), stage, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, f"exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the evaluation never reached the stall"
            time.sleep(0.1)
        if stage == "plots":
            assert list(world.root.glob(".report.tnedit-tmp-*")), "the report's temporary directory should exist"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("tnedit: interrupted"), err
    assert not out.exists()
    assert compare_snapshots(before, snapshot([world.root])) == [], "no report, no temporary, inputs unchanged"


# --- read-only destinations, checked before the evaluation runs ----------------------------------


def test_update_card_on_a_read_only_checkpoint(world, capsys):
    from tests.support.hostile import read_only

    with read_only(world.ed):
        fails(world, "evaluate: --update-card on a read-only checkpoint",
              baked(world, "--update-card", str(world.ed)), capsys, "--update-card", "read-only file system")


def test_report_into_a_read_only_directory(world, read_only_dir, capsys):
    fails(world, "evaluate: -o in a read-only directory", baked(world, out=read_only_dir / "report"), capsys,
          str(read_only_dir / "report"), "read-only file system")


# --- a model whose context is shorter than the text ------------------------------------------------


def test_gpt2_text_and_generation_longer_than_its_context(tmp_path, capsys):
    """Sentences and prompts past GPT-2's position embeddings are cut, not an IndexError."""
    from tests.support.hostile import run_cli
    from tests.support.tiny import make_tiny
    from tnedit.corpus import builtin_corpus

    positions = 16
    model = make_tiny("gpt2", tmp_path, subdir="gpt2", n_positions=positions)
    pairs = builtin_corpus().pairs("en", "ja")[:8]
    rows = ["en\tja", *(f"{en} {en} {en}\t{ja}{ja}{ja}" for en, ja in pairs)]
    (tmp_path / "long.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["evaluate", str(model), "--neurons", "0:1,1:2", "--lang", "ja", "--data", str(tmp_path / "long.tsv"),
            "--n-pairs", "8", "--n-qa", "2", "--n-gen", "1", "--n-langid", "2", "--max-new-tokens", "4",
            "--qa-max-new-tokens", "3", "--batch-size", "4", "-o", str(tmp_path / "report"), "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["headline"], "the report has a headline"
    bad = [str(positions) if a == "4" else a for a in args]  # --max-new-tokens: the whole context
    bad[bad.index("-o") + 1] = str(tmp_path / "report2")
    expect_clean_failure("evaluate: --max-new-tokens fills the context", bad, capsys, watch=[tmp_path],
                         needles=[f"context of {positions} tokens"])


# --- lm-evaluation-harness options -------------------------------------------------------------------


@pytest.mark.parametrize("extra, needle", [
    (["--lm-eval", "no_such_task_anywhere"], "unknown task 'no_such_task_anywhere'"),
    (["--lm-eval", "tiny", "--lm-eval-include", "missing-tasks"], "--lm-eval-include must be a folder"),
    (["--lm-eval-include", "."], "--lm-eval-include needs --lm-eval"),
    (["--lm-eval", "tiny", "--lm-eval-limit", "0"], "--lm-eval-limit must be at least 1"),
    (["--lm-eval", "tiny", "--lm-eval-fewshot", "-1"], "--lm-eval-fewshot must not be negative"),
    (["--lm-eval", "tiny", "--positions", "last"], "--positions last"),
    (["--lm-eval", "tiny", "--lm-eval-batch-size", "0"], "--lm-eval-batch-size must be at least 1"),
], ids=["unknown task", "include missing", "include alone", "limit 0", "fewshot -1", "last positions",
        "batch 0"])
def test_bad_harness_options(world, capsys, extra, needle):
    pytest.importorskip("lm_eval")
    extra = [str(world.root / e) if e == "missing-tasks" else e for e in extra]
    fails(world, f"evaluate: --lm-eval {needle}", hook(world, *extra), capsys, needle)


def test_harness_not_installed(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    fails(world, "evaluate: --lm-eval without the harness", hook(world, "--lm-eval", "tiny"), capsys,
          "lm-evaluation-harness is not installed", "pip install 'tnedit[lmeval]'")
