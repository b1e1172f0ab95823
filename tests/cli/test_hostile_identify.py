"""Hostile input to identify (transfer, --control random, --method lape), select and compare.

Every bad input gets one `tnedit: error:` line and exit 2, writes nothing and leaves every input
byte-identical (tests/support/hostile.py checks all of it and records the matrix). The valid-run tests here
cover what the hardening added: the default --max-length (the model's context) with truncation
counted, --overwrite for single-file outputs, and SIGTERM (exit 130, no partial output, and a resume
state from which --resume gives the uninterrupted result).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from tests.support.hostile import compare_snapshots, expect_clean_failure, run_cli, snapshot
from tests.support.paths import REPO
from tests.support.sentences import EN, JA, KO
from tests.support.tiny import make_tiny
from tnedit.errors import InputError
from tnedit.formats.neurons import load_neurons
from tnedit.identify.controls import model_shape, random_control
from tnedit.identify.passes import ScorePass
from tnedit.identify.pipeline import run_identify
from tnedit.identify.resume import RESUME_DIR
from tnedit.identify.settings import IdentifySettings
from tnedit.model import batching, loading
from tnedit.reporting import NullReporter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GPT2_POSITIONS = 12  # a context so short that some test sentences do not fit
Q = ["--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> SimpleNamespace:
    """Tiny models: a llama, a gpt2 with a 12-token context, and a llama saved as pytorch_model.bin only."""
    root = tmp_path_factory.mktemp("hostile-identify-models")
    llama = make_tiny("llama", root, subdir="llama")
    gpt2 = make_tiny("gpt2", root, subdir="gpt2", n_positions=GPT2_POSITIONS)
    bin_only = root / "bin-only"
    bin_only.mkdir()
    tensors = load_file(str(llama / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, bin_only / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama / name, bin_only / name)
    return SimpleNamespace(root=root, llama=llama, gpt2=gpt2, bin_only=bin_only)


def _write_tsv(path: Path, columns: dict[str, list[str]]) -> Path:
    rows = ["\t".join(columns)] + ["\t".join(r) for r in zip(*columns.values(), strict=True)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def made(models, tmp_path_factory) -> SimpleNamespace:
    """Valid artifacts to feed select, compare and --control: a data file, a scores file, neuron sets."""
    root = tmp_path_factory.mktemp("hostile-identify-made")
    data = _write_tsv(root / "en-ja.tsv", {"en": EN, "ja": JA})
    out = root / "identified"
    lm = loading.load_model(str(models.llama), device="cpu")
    run_identify(IdentifySettings(model=str(models.llama), langs=["ja"], data=str(data), type="both", k=10,
                                  batch_size=4, output=out), lm=lm, reporter=NullReporter())
    return SimpleNamespace(root=root, data=data, scores=out / "scores-ja.safetensors",
                           like=out / "neurons-ja-type1.json", type2=out / "neurons-ja-type2.json")


def _identify(models, made, *extra: str) -> list[str]:
    return ["identify", str(models.llama), "--data", str(made.data), "--lang", "ja", "-k", "5", *Q, *extra]


# --- identify: data and options ------------------------------------------------------------------


def _bad_tsvs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "no header": tmp_path / "noheader.tsv",
        "no ja column": tmp_path / "nocol.tsv",
        "empty": tmp_path / "empty.tsv",
    }
    files["no header"].write_text("hello world\nfoo bar\n", encoding="utf-8")
    _write_tsv(files["no ja column"], {"en": EN, "ko": KO})
    files["empty"].write_text("", encoding="utf-8")
    return files


@pytest.mark.parametrize("what, needle", [("no header", "header"), ("no ja column", "no 'ja' column"),
                                          ("empty", "empty file")])
def test_identify_bad_data_file(models, tmp_path, capsys, what, needle):
    data = _bad_tsvs(tmp_path)[what]
    args = ["identify", str(models.llama), "--data", str(data), "--lang", "ja", "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure(f"identify: --data {what}", args, capsys, watch=[tmp_path, models.llama],
                         inputs=[data, models.llama], needles=[str(data), needle])


def test_identify_data_missing_and_language_unknown(models, made, tmp_path, capsys):
    missing = tmp_path / "missing.tsv"
    args = ["identify", str(models.llama), "--data", str(missing), "--lang", "ja", "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure("identify: --data missing", args, capsys, watch=[tmp_path, models.llama],
                         needles=[str(missing), "no such file"])
    args = ["identify", str(models.llama), "--data", str(made.data), "--lang", "xx", "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure("identify: --lang not in the data", args, capsys, watch=[tmp_path, models.llama],
                         inputs=[made.data], needles=["'xx'", "available: en, ja"])


@pytest.mark.parametrize("option, value, needle", [
    ("--limit", "0", "--limit must be at least 1"),
    ("--limit", "-5", "--limit must be at least 1"),
    ("-k", "0", "--k must be at least 1"),
    ("-k", "-1", "--k must be at least 1"),
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--layers", "0-99", "out of range"),
    ("--layers", "1-x", "not a layer"),
    ("--type", "3", "'3' is not one of"),
    ("--checkpoint-every", "0", "--checkpoint-every must be at least 1"),
    ("--max-length", "0", "--max-length: expected a positive number"),
    ("--max-length", "129", "exceeds the model's context length of 128 tokens (max_position_embeddings"),
    ("--exclude-massive", "-0.1", "--exclude-massive: expected a fraction 0 <= Q < 1"),
    ("--exclude-massive", "1", "--exclude-massive: expected a fraction 0 <= Q < 1"),
    ("--exclude-massive", "1.5", "--exclude-massive: expected a fraction 0 <= Q < 1"),
    ("--exclude-massive", "nan", "--exclude-massive: expected a fraction 0 <= Q < 1"),
    ("--exclude-massive", "lots", "is not a valid float"),
    ("--centroids", "raw", "'raw' is not one of 'layer-outputs', 'hidden-states'"),
])
def test_identify_bad_option(models, made, tmp_path, capsys, option, value, needle):
    args = _identify(models, made, "-o", str(tmp_path / "o"), option, value)
    expect_clean_failure(f"identify: {option} {value}", args, capsys, watch=[tmp_path, made.root, models.llama],
                         inputs=[made.data, models.llama], needles=[needle])


@pytest.mark.parametrize("option", ["--like", "--overwrite", "--match-layers"])
def test_identify_control_options_without_control(models, made, tmp_path, capsys, option):
    extra = [option, str(made.like)] if option == "--like" else [option]
    args = _identify(models, made, "-o", str(tmp_path / "o"), *extra)
    expect_clean_failure(f"identify: {option} without --control", args, capsys, watch=[tmp_path, made.root],
                         inputs=[made.like], needles=[f"{option} is only used with --control random"])


def test_identify_resume_with_corrupt_state(models, made, tmp_path, capsys):
    state = tmp_path / "o" / RESUME_DIR / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{half a state", encoding="utf-8")
    args = _identify(models, made, "-o", str(tmp_path / "o"), "--resume")
    expect_clean_failure("identify: --resume with a corrupt state", args, capsys, watch=[tmp_path, models.llama],
                         inputs=[state], needles=[str(state), "unreadable resume state"])


@pytest.fixture(scope="module")
def interrupted(models, made, tmp_path_factory) -> Path:
    """The resume state of a run stopped in its score pass, made with the options of ``_resume_args``."""
    out = tmp_path_factory.mktemp("hostile-identify-interrupted") / "o"

    def stop(name: str, done: int, total: int) -> None:
        if name == "ja:scores" and done == 2:
            raise KeyboardInterrupt

    settings = IdentifySettings(model=str(models.llama), langs=["ja"], data=str(made.data), type="1", k=5,
                                batch_size=2, checkpoint_every=1, output=out)
    with pytest.raises(KeyboardInterrupt):
        run_identify(settings, on_batch=stop, reporter=NullReporter())
    return out


def _resume_args(models, made, out: Path) -> list[str]:
    return _identify(models, made, "--batch-size", "2", "--checkpoint-every", "1", "--resume", "-o", str(out))


def test_identify_resume_with_damaged_state(models, made, interrupted, tmp_path, capsys):
    def damaged(name: str, damage) -> Path:
        out = tmp_path / name
        shutil.copytree(interrupted, out)
        damage(out / RESUME_DIR)
        return out

    def sums(ck: Path) -> Path:
        return ck / json.loads((ck / "state.json").read_text(encoding="utf-8"))["tensors"]

    def rewrite_state(ck: Path, **changes) -> None:
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
        (ck / "state.json").write_text(json.dumps({**state, **changes}), encoding="utf-8")

    def drop_score_sums(ck: Path) -> None:
        tensors = load_file(str(sums(ck)))
        save_arrays({k: v for k, v in tensors.items() if "score" not in k}, str(sums(ck)))

    cases = {
        "sums file missing": (lambda ck: sums(ck).unlink(), "which is missing"),
        "sums file not safetensors": (lambda ck: sums(ck).write_bytes(b"\x01" * 40), "is not readable"),
        "sums without the pass": (drop_score_sums, "the saved sums lack"),
        "state naming ../x": (lambda ck: rewrite_state(ck, tensors="../x.safetensors"), "key 'tensors'"),
        "state of other settings": (lambda ck: rewrite_state(ck, key={"batch_size": 3}), "different settings"),
        "state not an object": (lambda ck: (ck / "state.json").write_text("[1, 2]", encoding="utf-8"),
                                "must be a JSON object"),
    }
    assert (interrupted / RESUME_DIR / "state.json").is_file()
    code, _, err = run_cli(_resume_args(models, made, damaged("intact", lambda ck: None)), capsys)
    assert code == 0, err  # the undamaged state resumes
    for what, (damage, needle) in cases.items():
        out = damaged(what.replace(" ", "-").replace("/", "_"), damage)
        expect_clean_failure(f"identify: --resume with {what}", _resume_args(models, made, out), capsys,
                             watch=[tmp_path, models.llama], inputs=[out, made.data], needles=[needle])


def test_identify_resume_with_the_other_centroid_source(models, made, interrupted, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(interrupted, out)  # made with the default, --centroids layer-outputs
    args = [*_resume_args(models, made, out), "--centroids", "hidden-states"]
    expect_clean_failure("identify: --resume with the other --centroids", args, capsys,
                         watch=[tmp_path, models.llama], inputs=[out, made.data],
                         needles=["cannot resume", "different settings (centroids)"])


def test_identify_missing_model_directory(made, tmp_path, capsys):
    model = tmp_path / "no-such-model"
    args = ["identify", str(model), "--data", str(made.data), "--lang", "ja", "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure("identify: model directory missing", args, capsys, watch=[tmp_path, made.root],
                         needles=[str(model), "no such directory"])


# --- identify: devices and checkpoint formats ----------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("method", ["transfer", "lape"])
def test_device_cuda_without_cuda(models, made, tmp_path, capsys, method):
    langs = ["--lang", "ja"] if method == "transfer" else ["--langs", "en,ja"]
    args = ["identify", str(models.llama), "--method", method, "--data", str(made.data), *langs,
            "--device", "cuda", "-o", str(tmp_path / "o"), "--quiet"]
    expect_clean_failure(f"identify --method {method}: --device cuda without CUDA", args, capsys,
                         watch=[tmp_path, models.llama], inputs=[made.data], needles=["--device cuda", "no CUDA"])


@pytest.mark.parametrize("mode", ["transfer", "lape", "control"])
def test_bin_only_model(models, made, tmp_path, capsys, mode):
    if mode == "control":
        extra = ["--control", "random", "--like", str(made.like), "-o", str(tmp_path / "ctrl.json")]
    elif mode == "lape":
        extra = ["--method", "lape", "--langs", "en,ja", "--data", str(made.data), "-o", str(tmp_path / "o"), *Q]
    else:
        extra = ["--lang", "ja", "--data", str(made.data), "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure(f"identify ({mode}): .bin-only model", ["identify", str(models.bin_only), *extra], capsys,
                         watch=[tmp_path, models.bin_only, made.root], inputs=[models.bin_only, made.like],
                         needles=[str(models.bin_only), "only PyTorch .bin files"])


def test_model_shape_of_bin_only_model_is_refused(models):
    with pytest.raises(InputError, match="only PyTorch .bin files"):
        model_shape(str(models.bin_only))


# --- identify: where the output goes -------------------------------------------------------------


def test_identify_output_is_a_file(models, made, tmp_path, capsys):
    existing = tmp_path / "results"
    existing.write_text("not a directory\n", encoding="utf-8")
    expect_clean_failure("identify: -o an existing file", _identify(models, made, "-o", str(existing)), capsys,
                         watch=[tmp_path, models.llama], inputs=[existing], needles=["exists and is not a directory"])
    under = existing / "sub"
    expect_clean_failure("identify: -o under a file", _identify(models, made, "-o", str(under)), capsys,
                         watch=[tmp_path, models.llama], inputs=[existing], needles=["is not a directory"])


@pytest.mark.parametrize("where", ["model", "model/out", "model/sub/.."])
def test_identify_output_in_the_model_directory(models, made, capsys, where):
    out = models.llama / where.partition("/")[2] if "/" in where else models.llama
    for extra, what in [([], "identify"), (["--checkpoint-every", "1"], "identify --checkpoint-every")]:
        expect_clean_failure(f"{what}: -o {where}", _identify(models, made, "-o", str(out), *extra), capsys,
                             watch=[models.llama, made.root], inputs=[models.llama],
                             needles=["inside the model directory"])
    lape = ["identify", str(models.llama), "--method", "lape", "--langs", "en,ja", "--data", str(made.data),
            "-o", str(out), *Q]
    expect_clean_failure(f"identify --method lape: -o {where}", lape, capsys, watch=[models.llama, made.root],
                         inputs=[models.llama], needles=["inside the model directory"])


def test_resume_without_state_warns_once_and_runs(models, made, tmp_path, capsys):
    """--resume on a run that never checkpointed (or finished) starts over, so "always --resume" scripts work."""
    out, plain = tmp_path / "o", tmp_path / "plain"
    code, _, err = run_cli(_identify(models, made, "-o", str(out), "--resume"), capsys)
    assert code == 0
    assert err.splitlines() == [f"tnedit: warning: --resume: no checkpoint under {out / RESUME_DIR}; "
                                "starting from the beginning"]
    assert run_cli(_identify(models, made, "-o", str(plain)), capsys)[0] == 0
    name = "neurons-ja-type1.json"
    assert load_neurons(out / name).neurons == load_neurons(plain / name).neurons


def test_identify_adds_to_an_existing_output_directory(models, made, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    code, stdout, err = run_cli(_identify(models, made, "-o", str(out), "--json"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["neurons-ja-type1.json", "notes.txt", "scores-ja.safetensors"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    assert json.loads(stdout)["sets"][0]["file"] == str(out / "neurons-ja-type1.json")


# --- identify --control random -------------------------------------------------------------------


def _control(models, made, *extra: str) -> list[str]:
    return ["identify", str(models.llama), "--control", "random", "--seed", "3", *extra]


def test_control_needs_a_readable_like_file(models, made, tmp_path, capsys):
    expect_clean_failure("identify --control: without --like", _control(models, made, "-o", str(tmp_path / "c.json")),
                         capsys, watch=[tmp_path], needles=["--control random needs --like"])
    missing = tmp_path / "missing.json"
    expect_clean_failure("identify --control: --like missing",
                         _control(models, made, "--like", str(missing), "-o", str(tmp_path / "c.json")), capsys,
                         watch=[tmp_path], needles=["--like", str(missing), "not found"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"neurons": [{"layer": 0}', encoding="utf-8")
    expect_clean_failure("identify --control: --like malformed",
                         _control(models, made, "--like", str(broken), "-o", str(tmp_path / "c.json")), capsys,
                         watch=[tmp_path], inputs=[broken], needles=["--like", str(broken)])
    other_shape = tmp_path / "deep.csv"
    other_shape.write_text("10,3\n11,4\n", encoding="utf-8")  # layers a 4-layer model does not have
    expect_clean_failure("identify --control: --like of a deeper model",
                         _control(models, made, "--like", str(other_shape), "-o", str(tmp_path / "c.json")), capsys,
                         watch=[tmp_path, models.llama], inputs=[other_shape], needles=["layer 10 is out of range"])


def test_control_output_file_rules(models, made, tmp_path, capsys):
    existing = tmp_path / "ctrl.json"
    existing.write_text('{"unrelated": true}\n', encoding="utf-8")
    args = _control(models, made, "--like", str(made.like), "-o", str(existing))
    expect_clean_failure("identify --control: -o an existing file", args, capsys, watch=[tmp_path, made.root],
                         inputs=[existing, made.like], needles=[str(existing), "--overwrite"])
    args = _control(models, made, "--like", str(made.like), "-o", str(made.like), "--overwrite")
    expect_clean_failure("identify --control: -o the --like file, --overwrite", args, capsys,
                         watch=[tmp_path, made.root], inputs=[made.like], needles=["is an input"])
    args = _control(models, made, "--like", str(made.like), "-o", str(models.llama / "ctrl.json"))
    expect_clean_failure("identify --control: -o inside the model directory", args, capsys,
                         watch=[models.llama, made.root], inputs=[models.llama], needles=["inside the model directory"])
    missing = tmp_path / "no-model"
    args = ["identify", str(missing), "--control", "random", "--like", str(made.like), "-o", str(tmp_path / "c.json")]
    expect_clean_failure("identify --control: model directory missing", args, capsys, watch=[tmp_path, made.root],
                         inputs=[made.like], needles=[str(missing), "no such directory"])


def test_control_overwrite_replaces_atomically(models, made, tmp_path, capsys):
    out = tmp_path / "ctrl.json"
    out.write_text('{"unrelated": true}\n', encoding="utf-8")
    code, stdout, err = run_cli(_control(models, made, "--like", str(made.like), "-o", str(out), "--overwrite",
                                         "--json"), capsys)
    assert code == 0, err
    ctrl, ref = load_neurons(out), load_neurons(made.like)
    assert len(ctrl) == len(ref) and not (ctrl.keys() & ref.keys()) and ctrl.method.seed == 3
    assert json.loads(stdout)["file"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctrl.json"]  # no temporary left behind
    again = random_control(ref, 4, 64, seed=3)
    assert ctrl.neurons == again.neurons  # the CLI writes what the library draws


# --- identify --method lape ----------------------------------------------------------------------


def test_lape_bad_inputs(models, made, tmp_path, capsys):
    base = ["identify", str(models.llama), "--method", "lape", "--data", str(made.data), "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure("identify --method lape: one language", [*base, "--langs", "ja"], capsys,
                         watch=[tmp_path, models.llama], needles=["at least two languages"])
    for option in (["--checkpoint-every", "2"], ["--resume"]):
        expect_clean_failure(f"identify --method lape: {option[0]}", [*base, "--langs", "en,ja", *option], capsys,
                             watch=[tmp_path, models.llama], needles=[f"{option[0]} is not used by --method lape"])
    expect_clean_failure("identify --method lape: --langs not in the data", [*base, "--langs", "en,ko"], capsys,
                         watch=[tmp_path, models.llama], inputs=[made.data], needles=["'ko'"])
    expect_clean_failure("identify --method lape: --centroids hidden-states",
                         [*base, "--langs", "en,ja", "--centroids", "hidden-states"], capsys,
                         watch=[tmp_path, models.llama], inputs=[made.data],
                         needles=["--centroids hidden-states: --method lape has no centroids"])


# --- select ---------------------------------------------------------------------------------------


def _scores_with(path: Path, source: Path, **meta: str) -> Path:
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as fh:
        metadata = {**(fh.metadata() or {}), **meta}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_select_bad_scores_files(models, made, tmp_path, capsys):
    out = ["-o", str(tmp_path / "sel.json")]
    missing = tmp_path / "missing.safetensors"
    expect_clean_failure("select: scores file missing", ["select", str(missing), *out], capsys, watch=[tmp_path],
                         needles=[str(missing), "not found"])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07" * 64)
    expect_clean_failure("select: not safetensors", ["select", str(garbage), *out], capsys, watch=[tmp_path],
                         inputs=[garbage], needles=[str(garbage), "not a readable safetensors file"])
    weights = models.llama / "model.safetensors"
    expect_clean_failure("select: a model's safetensors", ["select", str(weights), *out], capsys,
                         watch=[tmp_path, models.llama], inputs=[weights], needles=["metadata key 'format'"])
    bad = {
        "candidate_layers": ('{"1": [0, 99]}', "candidate_layers"),
        "model": ('["not", "a", "model"]', "metadata key 'model'"),
        "n_en": ("many", "metadata key 'n_en'"),
    }
    for key, (value, needle) in bad.items():
        broken = _scores_with(tmp_path / f"bad-{key}.safetensors", made.scores, **{key: value})
        expect_clean_failure(f"select: wrong metadata '{key}'", ["select", str(broken), *out], capsys,
                             watch=[tmp_path, made.root], inputs=[broken], needles=[str(broken), needle])


def test_select_bad_options_and_outputs(made, tmp_path, capsys):
    scores = str(made.scores)
    expect_clean_failure("select: -k 0", ["select", scores, "-k", "0", "-o", str(tmp_path / "s.json")], capsys,
                         watch=[tmp_path, made.root], inputs=[made.scores], needles=["--k must be at least 1"])
    expect_clean_failure("select: --layers out of range", ["select", scores, "--layers", "7", "-o",
                                                           str(tmp_path / "s.json")], capsys,
                         watch=[tmp_path, made.root], inputs=[made.scores], needles=["out of range"])
    for value, needle in (("-0.5", "expected a fraction 0 <= Q < 1"), ("1", "expected a fraction 0 <= Q < 1"),
                          ("inf", "expected a fraction 0 <= Q < 1"), ("some", "is not a valid float")):
        expect_clean_failure(f"select: --exclude-massive {value}", ["select", scores, "--exclude-massive", value, "-o",
                                                                    str(tmp_path / "s.json")], capsys,
                             watch=[tmp_path, made.root], inputs=[made.scores], needles=[needle])
    existing = tmp_path / "picked.json"
    existing.write_text("[]\n", encoding="utf-8")
    expect_clean_failure("select: -o an existing file", ["select", scores, "-o", str(existing)], capsys,
                         watch=[tmp_path, made.root], inputs=[existing, made.scores], needles=["--overwrite"])
    expect_clean_failure("select: -o the scores file, --overwrite", ["select", scores, "-o", scores, "--overwrite"],
                         capsys, watch=[made.root], inputs=[made.scores], needles=["is an input"])


def test_select_quiet_overwrite_and_default_name(made, tmp_path, capsys):
    out = tmp_path / "picked.json"
    out.write_text("[]\n", encoding="utf-8")
    code, stdout, err = run_cli(["select", str(made.scores), "-k", "10", "-o", str(out), "--overwrite", "--quiet",
                                 "--json"], capsys)
    assert code == 0, err
    assert load_neurons(out).neurons == load_neurons(made.like).neurons  # identify's own ranking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picked.json"]
    scores = tmp_path / "scores-ja.safetensors"
    shutil.copy(made.scores, scores)
    assert run_cli(["select", str(scores), "-k", "10", "--quiet"], capsys)[0] == 0
    default = tmp_path / "neurons-ja-type1-k10.json"
    assert default.is_file()
    expect_clean_failure("select: default output exists", ["select", str(scores), "-k", "10"], capsys,
                         watch=[tmp_path], inputs=[default, scores], needles=[str(default), "--overwrite"])


def test_select_into_a_read_only_directory(made, read_only_dir, tmp_path, capsys):
    args = ["select", str(made.scores), "-k", "5", "-o", str(read_only_dir / "picked.json"), "--quiet"]
    expect_clean_failure("select: read-only output directory", args, capsys, watch=[tmp_path, made.root],
                         inputs=[made.scores], needles=[str(read_only_dir / "picked.json"), "read-only file system"])


def test_identify_into_a_read_only_directory(models, made, read_only_dir, tmp_path, capsys):
    expect_clean_failure("identify: read-only output directory",
                         _identify(models, made, "-o", str(read_only_dir / "out")), capsys,
                         watch=[tmp_path, models.llama], inputs=[made.data], needles=["read-only file system"])


# --- compare ---------------------------------------------------------------------------------------


def test_compare_bad_files(made, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"neurons": "all of them"}', encoding="utf-8")
    b.write_text("\ufeff\x00\x01", encoding="utf-8")
    expect_clean_failure("compare: two malformed files", ["compare", str(a), str(b), "--quiet"], capsys,
                         watch=[tmp_path], inputs=[a, b], needles=[f"A: {a}"])
    expect_clean_failure("compare: B missing", ["compare", str(made.like), str(tmp_path / "gone.json")], capsys,
                         watch=[tmp_path, made.root], inputs=[made.like], needles=["B:", "not found"])
    code, stdout, err = run_cli(["compare", str(made.like), str(made.type2), "--quiet", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["intersection"] == 0  # type1 and type2 live in disjoint layers


# --- --max-length: the model's context, truncation counted -------------------------------------------


def _lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(tokenizer(t)["input_ids"]) for t in texts]


def test_default_max_length_is_the_context_and_truncation_is_counted(models, tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.gpt2)
    en = [f"{e} {e}" for e in EN]  # some longer than 12 tokens, some not
    data = _write_tsv(tmp_path / "long.tsv", {"en": en, "ja": JA})
    long_en = sum(n > GPT2_POSITIONS for n in _lengths(tok, en))
    long_ja = sum(n > GPT2_POSITIONS for n in _lengths(tok, JA))
    assert 0 < long_en < len(en) and 0 < long_ja < len(JA)  # the data exercises both sides of the limit
    out = tmp_path / "o"
    code, stdout, err = run_cli(["identify", str(models.gpt2), "--data", str(data), "--lang", "ja", "--type", "both",
                                 "-k", "5", "-o", str(out), *Q, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    expected = {"ja:centroids": long_en + long_ja, "ja:scores": long_ja}
    assert summary["max_length"] == GPT2_POSITIONS and summary["truncated"] == expected
    assert err.count("tnedit: warning: sentences longer than 12 tokens were truncated") == 1
    for t in (1, 2):
        extra = load_neurons(out / f"neurons-ja-type{t}.json").method.extra
        assert extra["max_length"] == GPT2_POSITIONS and extra["truncated"] == expected
    code, stdout, _ = run_cli(["identify", str(models.gpt2), "--data", str(data), "--lang", "ja", "-k", "5",
                               "-o", str(tmp_path / "o2"), *Q], capsys)
    assert code == 0 and f"max length 12 tokens; sentences truncated: ja:centroids {long_en + long_ja}, " \
                          f"ja:scores {long_ja}" in stdout
    code, stdout, _ = run_cli(["identify", str(models.gpt2), "--method", "lape", "--langs", "en,ja", "--data",
                               str(data), "-o", str(tmp_path / "lape"), *Q, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["truncated"] == {"en:lape": long_en, "ja:lape": long_ja}


def test_truncation_is_the_tokenizers_own(models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.gpt2)
    texts = [f"{e} {e}" for e in EN]
    enc = batching.encode_texts(tok, texts, 9)
    assert enc.ids == [tok(t, truncation=True, max_length=9)["input_ids"] for t in texts]
    assert enc.truncated == [n > 9 for n in _lengths(tok, texts)] and enc.n_truncated == sum(enc.truncated)
    whole = batching.encode_texts(tok, texts, None)
    assert whole.ids == [tok(t)["input_ids"] for t in texts] and whole.n_truncated == 0


# --- signals ----------------------------------------------------------------------------------------


def test_sigterm_in_process_writes_nothing(models, made, tmp_path, capsys, monkeypatch):
    calls = []
    update = ScorePass.update

    def terminated_at_second_batch(self, states, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        update(self, states, rows)

    monkeypatch.setattr(ScorePass, "update", terminated_at_second_batch)
    args = _identify(models, made, "-o", str(tmp_path / "o"), "--batch-size", "4")
    expect_clean_failure("identify: SIGTERM in the score pass", args, capsys, watch=[tmp_path, models.llama, made.root],
                         inputs=[made.data], code=130, needles=["interrupted by SIGTERM", "nothing was written"])
    assert len(calls) == 2


_SLOW_RUN = """
import sys, time
from pathlib import Path
import torch
from tnedit.identify.resume import ResumeStore

torch.set_num_threads(1)  # as the test process: the same reduction order, so bit-identical sums

marker, args = Path(sys.argv[1]), sys.argv[2:]
save_partial = ResumeStore.save_partial

def slow(self, p, done):  # the maths unchanged; after each saved score batch, time to be signalled
    save_partial(self, p, done)
    if p.name.endswith(":scores"):
        marker.write_text(str(done))
        time.sleep(0.3)

ResumeStore.save_partial = slow
from tnedit.cli import main
main(args)
"""


def _count(marker: Path) -> int:
    text = marker.read_text().strip() if marker.exists() else ""
    return int(text) if text.isdigit() else 0


def test_sigterm_subprocess_keeps_a_consistent_resume_state(models, made, tmp_path, capsys):
    scratch, out, full = tmp_path / "scratch", tmp_path / "o", tmp_path / "full"
    scratch.mkdir()
    marker = scratch / "batches"
    args = _identify(models, made, "--type", "both", "--batch-size", "2", "--checkpoint-every", "1", "-o", str(out))
    before = snapshot([models.llama, made.data])
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(marker), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(marker) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never reached its second score batch"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("tnedit: interrupted by SIGTERM"), err
    assert f"kept the outputs completed before it ({out / RESUME_DIR})" in lines[0]
    assert not compare_snapshots(before, snapshot([models.llama, made.data]))
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert all(name.startswith(RESUME_DIR) for name in left), left  # no neuron set, no scores file
    state = json.loads((out / RESUME_DIR / "state.json").read_text(encoding="utf-8"))
    assert state["current"] == "ja:scores" and state["batches_done"] >= 2
    assert (out / RESUME_DIR / state["tensors"]).is_file()
    assert not [p for p in (out / RESUME_DIR).iterdir() if p.name.startswith(".")]  # no temporaries

    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    code, _, err = run_cli(_identify(models, made, "--type", "both", "--batch-size", "2", "-o", str(full)), capsys)
    assert code == 0, err
    assert not (out / RESUME_DIR).exists()
    resumed = load_file(str(out / "scores-ja.safetensors"))
    uninterrupted = load_file(str(full / "scores-ja.safetensors"))
    for key in uninterrupted:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key])
    for t in (1, 2):
        name = f"neurons-ja-type{t}.json"
        assert load_neurons(out / name).neurons == load_neurons(full / name).neurons


@pytest.mark.parametrize("variable, value", [("RANK", "first"), ("RANK", "2"), ("WORLD_SIZE", "0")])
def test_identify_under_a_broken_launcher_environment(models, made, tmp_path, capsys, monkeypatch, variable, value):
    launcher = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, good in launcher.items():
        monkeypatch.setenv(name, good)
    monkeypatch.setenv(variable, value)
    args = ["identify", str(models.llama), "--data", str(made.data), "--lang", "ja", "-o", str(tmp_path / "o"), *Q]
    expect_clean_failure(f"identify: launcher {variable}={value}", args, capsys, watch=[tmp_path, models.llama],
                         inputs=[made.data], needles=[variable if variable == "RANK" else "WORLD_SIZE", "launcher"])
