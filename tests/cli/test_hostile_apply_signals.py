"""apply under interruption: a source that changes while apply reads it (once a SIGBUS), SIGTERM, SIGHUP and
SIGINT mid-write, kill -9 leftovers and live processes' temporaries.

Each case must leave exit 130 (or a one-line error), no temporary directory once every worker stopped, and the
source unchanged. The fixtures (``model``, ``sharded``) are in ``conftest.py``; the numbering is the hardening
note's, shared with ``test_hostile_apply.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkpoints import ALL_LAYERS, apply_ok, temporaries
from tests.support.hostile import compare_snapshots, expect_clean_failure, snapshot
from tests.support.paths import REPO as ROOT

# --- 6. a source that changes while apply reads it (once a SIGBUS) ---------------------------------

# Runs tnedit with one hook installed first; the hook acts on the weight file the first time it is copied.
_HOOKED = """
import os, sys, time
import tnedit.checkpoint.streaming as ck
import tnedit.edit.bake as ed
{hook}
from tnedit.cli import main
main(sys.argv[1:])
"""

_CHANGE_SOURCE = """
real_copy = ck._copy_range
done = []
def changing_copy(fi, fo, begin, end, cancel=None):
    name = str(fi.name)
    if not done and name.endswith(".safetensors") and end - begin > 64:
        done.append(1)
        {change}
    return real_copy(fi, fo, begin, end, cancel)
ck._copy_range = changing_copy
"""

CHANGES = {
    "truncated": "os.truncate(name, begin + (end - begin) // 2)",
    "rewritten": "data = open(name, 'rb').read(); open(name, 'r+b').write(data)",
    "replaced": "data = open(name, 'rb').read(); open(name + '.new', 'wb').write(data); "
    "os.replace(name + '.new', name)",
}


def _hooked_cli(hook: str, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = _HOOKED.format(hook=textwrap.dedent(hook))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.mark.parametrize("change", list(CHANGES))
def test_source_changed_during_apply_is_a_clean_error(change, model, tmp_path):
    out = tmp_path / "out"
    hook = _CHANGE_SOURCE.format(change=CHANGES[change])
    proc = _hooked_cli(hook, ["apply", str(model), "--neurons", ALL_LAYERS, "-o", str(out), "--quiet"])
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err  # not -SIGBUS
    assert len(lines) == 1 and lines[0].startswith("tnedit: error:") and "changed while" in lines[0], err
    assert str(model / "model.safetensors") in lines[0]
    assert not out.exists() and not temporaries(out)


# --- 7. signals: exit 130, and no temporary directory once every worker stopped -------------------

_SLOW_PATCH = """
ck.CHUNK = 512  # two rows per block: many blocks, each slowed down
real_call = ed.SlicePatch.__call__
def slow_call(self, *args):
    time.sleep(0.05)
    return real_call(self, *args)
ed.SlicePatch.__call__ = slow_call
real_copy = ck.copy_with_patches
def logged_copy(src, *args, **kwargs):  # which weight files were started
    if src.name.endswith(".safetensors"):
        with open(os.environ["STARTED_LOG"], "a") as log:
            log.write(src.name + "\\n")
        time.sleep(0.3)  # untouched files too: the signal must find files still queued, even on a busy machine
    return real_copy(src, *args, **kwargs)
ck.copy_with_patches = ed.copy_with_patches = logged_copy
"""


def _start_slow_apply(model: Path, out: Path) -> subprocess.Popen[str]:
    os.environ["STARTED_LOG"] = str(out.parent / "started.log")
    proc = _hooked_cli(_SLOW_PATCH, ["apply", str(model), "--neurons", ALL_LAYERS, "-o", str(out), "--quiet"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # mid-way: a weight file is being written in the temporary directory
        if any(t.is_dir() and list(t.glob("*.safetensors")) for t in temporaries(out)):
            return proc
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("apply never got mid-way")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_mid_apply_leaves_nothing(signum, sharded, tmp_path):
    out = tmp_path / "out"
    before = snapshot([sharded])
    proc = _start_slow_apply(sharded, out)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("tnedit: interrupted"), err
    assert not out.exists() and not temporaries(out), temporaries(out)
    assert compare_snapshots(before, snapshot([sharded])) == []
    started = (tmp_path / "started.log").read_text().split()
    assert len(started) < len(list(sharded.glob("*.safetensors"))), "queued files were not cancelled"


def test_interrupt_after_provenance_names_no_output(model, tmp_path, capsys, monkeypatch):
    """Files written inside the temporary directory are not outputs: the interrupt says nothing was written."""
    import tnedit.formats.card

    def interrupted(*_args: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(tnedit.formats.card, "render_card", interrupted)
    expect_clean_failure(
        "apply: Ctrl-C while writing the card",
        ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["nothing was written"],
        code=130,
    )


def test_kill_9_leftover_is_removed_by_the_next_apply(sharded, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _start_slow_apply(sharded, out)
    proc.kill()
    proc.communicate(timeout=60)
    stale = temporaries(out)
    assert stale and all(str(proc.pid) in t.name for t in stale)
    apply_ok(capsys, str(sharded), "--neurons", ALL_LAYERS, "-o", str(out))
    assert not temporaries(out) and (out / "tnedit.json").is_file()


def test_temporary_of_a_live_process_is_kept(model, tmp_path, capsys):
    out = tmp_path / "out"
    live = subprocess.Popen(["sleep", "60"])
    try:
        theirs = tmp_path / f".out.tnedit-tmp-{live.pid}"
        theirs.mkdir()
        (theirs / "partial.safetensors").write_bytes(b"x")
        apply_ok(capsys, str(model), "--neurons", "0:1", "-o", str(out))
        assert (theirs / "partial.safetensors").read_bytes() == b"x"
        assert (out / "tnedit.json").is_file()
    finally:
        live.kill()
        live.wait()
