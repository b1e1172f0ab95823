"""Bad input to `tnedit tune`: one line, exit 2, nothing written anywhere, inputs untouched.

Every case fails before the search measures anything; most before the model is loaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hostile import expect_clean_failure

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--calibration", "8", "--validation", "8", "--rounds", "1", "--trials", "0", "--pool", "16", "--quiet"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from tests.support.tiny import make_tiny
    from tnedit.corpus import builtin_corpus

    root = tmp_path_factory.mktemp("hostile-tune")
    make_tiny("llama", root, subdir="model")
    corpus = builtin_corpus()
    rows = ["en\tja", *(f"{en}\t{ja}" for en, ja in corpus.pairs("en", "ja")[:40])]
    (root / "en-ja.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def world(built, tmp_path) -> Path:
    for item in built.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
    return tmp_path


def tune(root: Path, *extra: str, out: Path | None = None) -> list[str]:
    return ["tune", str(root / "model"), "--data", str(root / "en-ja.tsv"), "-o", str(out or root / "out"),
            *QUICK, *extra]


CASES = {
    "--keep equal to --lang": (["--lang", "ja", "--keep", "ja"], ["--keep ja", "the language to break"]),
    "--keep holding --lang": (["--lang", "ja", "--keep", "en,ja"], ["--keep en,ja"]),
    "unknown language": (["--lang", "xx"], ["no source holds en–xx pairs"]),
    "--max-neurons 0": (["--lang", "ja", "--max-neurons", "0"], ["--max-neurons", "got 0"]),
    "--max-ppl-increase 0": (["--lang", "ja", "--max-ppl-increase", "0"], ["--max-ppl-increase", "got 0.0"]),
    "--max-ppl-increase negative": (["--lang", "ja", "--max-ppl-increase", "-0.1"], ["--max-ppl-increase"]),
    "--max-ppl-increase nan": (["--lang", "ja", "--max-ppl-increase", "nan"], ["--max-ppl-increase"]),
    "no pairs for a kept language": (["--lang", "ja", "--keep", "en,nl"], ["--keep nl", "no sentences"]),
    "more calibration than data": (["--lang", "ja", "--calibration", "64"], ["need 72"]),
    "--margin 1": (["--lang", "ja", "--margin", "1"], ["--margin"]),
    "--trial-factors reversed": (["--lang", "ja", "--trial-factors", "1:0"], ["--trial-factors"]),
    "--op scale without --factor": (["--lang", "ja", "--op", "scale"], ["--factor"]),
    "--lang missing": (["--keep", "en"], ["--lang"]),
    "two languages to break": (["--lang", "ja,ko"], ["one language code"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(world, capsys, case):
    extra, needles = CASES[case]
    inputs = [world / "model", world / "en-ja.tsv"]
    expect_clean_failure(f"tune: {case}", tune(world, *extra), capsys, watch=[world], inputs=inputs,
                         needles=needles)


def test_output_inside_the_model_is_refused(world, capsys):
    out = world / "model" / "tuned"
    expect_clean_failure("tune: -o inside MODEL", tune(world, "--lang", "ja", out=out), capsys, watch=[world],
                         inputs=[world / "model"], needles=["inside the model directory"])


def test_data_file_as_output_directory_is_refused(world, capsys):
    expect_clean_failure("tune: -o is the --data file", tune(world, "--lang", "ja", out=world / "en-ja.tsv"), capsys,
                         watch=[world], inputs=[world / "en-ja.tsv"], needles=["not a directory"])


# --- a signal mid-search ---------------------------------------------------------------------------

# Each trial sleeps first, so SIGTERM lands while the search runs (after the greedy rounds were saved).
_SLOW_TRIALS = """
import sys, time
import tnedit.tune.refine as refine
real = refine.measure
def slow(*args, **kwargs):
    time.sleep(1.0)
    return real(*args, **kwargs)
refine.measure = slow
from tnedit.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_the_resume_state_only_and_resume_finishes(world, signum):
    from tests.support.paths import REPO
    from tnedit.tune.state import STATE_DIR

    out = world / "out"
    args = tune(world, "--lang", "ja", "--keep", "en", out=out)
    args[args.index("--trials") + 1] = "12"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_TRIALS, *args], cwd=REPO, env=env, stderr=subprocess.PIPE,
                            text=True)
    state = out / STATE_DIR / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.is_file() and '"trials": [{' in state.read_text()):
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("tnedit: interrupted") and STATE_DIR in lines[0], err
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR]
    code = subprocess.run([sys.executable, "-m", "tnedit", *args, "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    assert sorted(p.name for p in out.iterdir()) == ["front-ja.json", "front-ja.png", "neurons-ja-selective.json"]


def test_a_search_without_a_set_within_the_bound_is_one_line_exit_1_and_leaves_nothing(world, capsys):
    # A bound of one part in a billion: every set measured moves a kept language more than that.
    expect_clean_failure("tune: no set within the bound", tune(world, "--lang", "ja", "--max-ppl-increase", "1e-9"),
                         capsys, watch=[world], inputs=[world / "model", world / "en-ja.tsv"], code=1,
                         needles=["no set stays within", "on the validation split"])
