"""Data-parallel identify, LAPE and evaluate: ranks of a gloo world on CPU against one process.

Each rank is a real ``python -m tnedit`` process (started by :mod:`tests.support.distributed`: by the real
``torchrun``, by ``accelerate launch`` or by environment); the one-process reference runs in this process with one torch
thread, the same kernels every rank uses, so only the order of the fp64 additions differs. The pieces
without processes (shards, environment, GPU shares) are under ``tests/unit/model/test_distributed.py``.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.support.distributed import accelerate_launch, single, start_ranks, torchrun
from tests.support.hostile import run_cli
from tests.support.paths import TATOEBA
from tests.support.tiny import make_tiny

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

DATA = TATOEBA / "en-ja.train.tsv"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny("llama", tmp_path_factory.mktemp("distributed"))


def identify_args(model: Path, out: Path, *extra: str, limit: int = 60, batch_size: int = 4) -> list[str]:
    # 60 pairs in batches of 4: 15 batches per language pass, which 2 ranks cannot split evenly.
    return ["identify", str(model), "--data", str(DATA), "--limit", str(limit), "--lang", "ja", "--type", "both",
            "--k", "20", "--exclude-massive", "0.01", "--batch-size", str(batch_size), "-o", str(out), "--quiet",
            *extra]


def neuron_list(path: Path) -> list[tuple[int, int, float]]:
    entries = json.loads(path.read_text())["neurons"]
    return [(n["layer"], n["index"], n["score"]) for n in entries]


def assert_same_neurons(a: Path, b: Path) -> None:
    """Same neurons in the same order, scores within TOLERANCE."""
    first, second = neuron_list(a), neuron_list(b)
    assert [n[:2] for n in first] == [n[:2] for n in second]
    assert first, f"{a} selects no neuron: the comparison would prove nothing"
    for x, y in zip(first, second, strict=True):
        assert math.isclose(x[2], y[2], rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def assert_close_scores(a: Path, b: Path, exact: bool = False) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert sorted(first) == sorted(second)
    for name in first:
        if exact:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        else:
            np.testing.assert_allclose(first[name], second[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


def assert_identify_outputs(a: Path, b: Path, exact: bool = False) -> None:
    for t in (1, 2):
        assert_same_neurons(a / f"neurons-ja-type{t}.json", b / f"neurons-ja-type{t}.json")
    assert_close_scores(a / "scores-ja.safetensors", b / "scores-ja.safetensors", exact)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two report.json trees differ: keys, strings, counts, or numbers beyond TOLERANCE."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for key in a for d in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        return [] if same else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def test_identify_under_torchrun_equals_one_process(model, tmp_path, capsys):
    code, _, err = run_cli(identify_args(model, tmp_path / "one"), capsys)
    assert code == 0, err
    run = torchrun(identify_args(model, tmp_path / "two"), 2, tmp_path)
    assert run.returncode == 0, run.stderr
    assert_identify_outputs(tmp_path / "one", tmp_path / "two")
    assert run.stdout.count("identified 2 neuron set(s)") == 1  # rank 0 alone reports
    assert "tnedit: error" not in run.stderr


def test_lape_under_accelerate_with_more_ranks_than_batches_equals_one_process(model, tmp_path, capsys):
    # 6 sentences per language in batches of 4: 2 batches, so the third rank has none.
    args = ["identify", str(model), "--method", "lape", "--data", str(DATA), "--limit", "6", "--langs", "en,ja",
            "--batch-size", "4", "--quiet"]
    code, _, err = run_cli([*args, "-o", str(tmp_path / "one")], capsys)
    assert code == 0, err
    run = accelerate_launch([*args, "-o", str(tmp_path / "three")], 3, tmp_path)
    assert run.returncode == 0, run.stderr
    for language in ("en", "ja"):
        one = json.loads((tmp_path / "one" / f"neurons-{language}-lape.json").read_text())
        three = json.loads((tmp_path / "three" / f"neurons-{language}-lape.json").read_text())
        assert differences(one, three) == []
    assert neuron_list(tmp_path / "one" / "neurons-en-lape.json"), "LAPE selects no English neuron here"


def test_evaluate_under_launcher_equals_one_process(model, tmp_path, capsys):
    neurons = tmp_path / "ids"
    assert run_cli(identify_args(model, neurons), capsys)[0] == 0
    edited = tmp_path / "edited"
    assert run_cli(["apply", str(model), str(neurons / "neurons-ja-type1.json"), "-o", str(edited), "--quiet"],
                   capsys)[0] == 0
    # A baked edit (KL against each rank's cached top-k) and a hook control; 30 pairs in batches of 16 are 2
    # batches per language, so the third rank runs none of them (nor any of the 2 QA batches).
    args = ["evaluate", str(model), str(edited), "--lang", "ja", "--data", str(DATA), "--skip", "60", "--n-pairs",
            "30", "--batch-size", "16", "--control", "random", "--n-gen", "3", "--n-langid", "5", "--gen-batch-size",
            "2", "--max-new-tokens", "4", "--n-qa", "3", "--qa-shots", "1", "--qa-max-new-tokens", "3",
            "--kl-top-k", "16", "--quiet"]
    code, _, err = run_cli([*args, "-o", str(tmp_path / "one")], capsys)
    assert code == 0, err
    procs = start_ranks([*args, "-o", str(tmp_path / "three")], 3, tmp_path)
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    one, three = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "three"))
    assert three["runtime"]["ranks"] == 3
    for key in ("runtime", "created"):
        one.pop(key), three.pop(key)
    assert differences(one, three) == []
    assert one["conditions"]["edited"]["generations"], "the comparison must cover generations"


def _wait_for(path: Path, procs: list[Any], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        assert all(p.poll() is None for p in procs), "a rank ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no {path} within {seconds} s"
        time.sleep(0.01)


def test_killed_rank_stops_the_run_and_resume_finishes_it(model, tmp_path, capsys):
    out = tmp_path / "run"
    # batch size 1: 120 centroid and 60 score batches, with a resume state after every step.
    args = identify_args(model, out, "--checkpoint-every", "1", limit=60, batch_size=1)
    procs = start_ranks(args, 2, tmp_path)
    state = out / ".identify-checkpoint" / "state.json"
    _wait_for(state, procs, 120)
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    assert time.monotonic() - killed < 20
    assert procs[0].returncode == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tnedit: error: rank 0 of 2: another rank stopped"), err
    assert sorted(p.name for p in out.iterdir()) == [".identify-checkpoint"]  # no output, only the resume state
    saved = json.loads(state.read_text())
    assert saved["current"] and saved["batches_done"] > 0  # stopped inside a pass, not between passes

    refused = single([*args, "--resume"], tmp_path)  # one process cannot take over two ranks' partial sums
    assert refused.returncode == 2 and "world_size" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    resumed = start_ranks([*args, "--resume"], 2, tmp_path)
    for proc in resumed:
        assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert not (out / ".identify-checkpoint").exists()
    uninterrupted = torchrun(identify_args(model, tmp_path / "whole", "--checkpoint-every", "1", batch_size=1), 2,
                             tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert_identify_outputs(out, tmp_path / "whole", exact=True)  # each rank resumed its own sums
    assert run_cli(identify_args(model, tmp_path / "one", batch_size=1), capsys)[0] == 0
    assert_identify_outputs(out, tmp_path / "one")


def test_a_verb_that_is_not_data_parallel_runs_on_rank_zero_alone(model, tmp_path):
    neurons = tmp_path / "neurons.csv"
    neurons.write_text("layer,index\n1,3\n2,5\n")
    run = torchrun(["apply", str(model), str(neurons), "-o", str(tmp_path / "edited"), "--quiet"], 2, tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "edited" / "model.safetensors").is_file()
    warnings = [line for line in run.stderr.splitlines() if "not data-parallel" in line]
    assert len(warnings) == 1 and "rank 0 runs it alone" in warnings[0]


def test_an_moe_model_under_torchrun_equals_one_process(tmp_path, capsys):
    """Each rank's expert statistics (routed-token counts included) add up to one process's."""
    from tests.support.tiny_moe import make_tiny_moe

    moe = make_tiny_moe("qwen2_moe", tmp_path)
    lape = ["identify", str(moe), "--method", "lape", "--data", str(DATA), "--limit", "10", "--langs", "en,ja",
            "--batch-size", "4", "--quiet", "-o"]
    runs = {("neurons-ja-type1.json", "neurons-ja-type2.json"): lambda out: identify_args(moe, out, limit=20),
            ("neurons-ja-lape.json",): lambda out: [*lape, str(out)]}
    for files, args in runs.items():
        code, _, err = run_cli(args(tmp_path / "one"), capsys)
        assert code == 0, err
        run = torchrun(args(tmp_path / "two"), 2, tmp_path)
        assert run.returncode == 0, run.stderr
        for file in files:
            one = json.loads((tmp_path / "one" / file).read_text())
            other = json.loads((tmp_path / "two" / file).read_text())
            assert any("expert" in n for n in one["neurons"]), f"{file}: no expert neuron to compare"
            assert differences(one["neurons"], other["neurons"]) == []
