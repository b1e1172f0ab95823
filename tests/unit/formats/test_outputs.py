"""Where tnedit may write: containment, protected inputs, atomic outputs, stale temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tnedit.errors import InputError
from tnedit.formats.outputs import (
    COMPLETED,
    atomic_directory,
    atomic_file,
    check_output_dir,
    check_output_file,
    contained_name,
    remove_stale_temporaries,
    write_json,
)


@pytest.mark.parametrize("name", ["model.safetensors", "sub/model-00001.safetensors", "a.b..c"])
def test_contained_name_accepts_plain_relative_names(name, tmp_path):
    path = contained_name(tmp_path, name, "index")
    assert path == tmp_path / name
    assert tmp_path in path.parents


@pytest.mark.parametrize(
    "name",
    ["../shard2.safetensors", "/etc/passwd", "sub/../../x", "..\\x", "C:\\x", "c:x", "", "a/", "a\x00b", 3, None],
)
def test_contained_name_refuses_names_that_leave_root(name, tmp_path):
    with pytest.raises(InputError) as info:
        contained_name(tmp_path, name, "model.safetensors.index.json: weight_map")
    assert "model.safetensors.index.json: weight_map" in str(info.value)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_output_dir_refuses_sources_inputs_and_the_working_directory(tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    run = tmp_path / "run1"
    run.mkdir()
    (run / "neurons.json").write_text("{}")
    for out in (model, model / "sub", tmp_path):
        with pytest.raises(InputError, match="source directory"):
            check_output_dir(out, model, overwrite=True)
    with pytest.raises(InputError, match="holds the input"):
        check_output_dir(run, model, overwrite=True, inputs=[run / "neurons.json"])
    link = tmp_path / "link-to-model"
    link.symlink_to(model)
    with pytest.raises(InputError, match="source directory"):
        check_output_dir(link / "out", model, overwrite=True)
    monkeypatch.chdir(run)
    with pytest.raises(InputError, match="working directory"):
        check_output_dir(Path("."), model, overwrite=True)
    with pytest.raises(InputError, match="working directory"):
        check_output_dir(Path(".."), None, overwrite=True)
    check_output_dir(tmp_path / "fresh", model, overwrite=False, inputs=[run / "neurons.json"])  # fine


def test_output_file_refuses_existing_inputs_and_directories(tmp_path):
    existing = tmp_path / "ctrl.json"
    existing.write_text("{}")
    with pytest.raises(InputError, match="already exists"):
        check_output_file(existing)
    check_output_file(existing, overwrite=True)
    with pytest.raises(InputError, match="is an input"):
        check_output_file(existing, overwrite=True, inputs=[existing])
    with pytest.raises(InputError, match="is a directory"):
        check_output_file(tmp_path, overwrite=True)


def test_atomic_directory_appears_only_complete_and_names_itself(tmp_path):
    out = tmp_path / "out"
    COMPLETED.clear()
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "whole").write_text("x")
    assert [p.name for p in out.iterdir()] == ["whole"]
    assert COMPLETED == [out]


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f".out.tnedit-tmp-{dead}"
    stale_old = tmp_path / f".out.tnedit-old-{dead}"
    other = tmp_path / f".other.tnedit-tmp-{dead}"
    alive = tmp_path / f".out.tnedit-tmp-{live}"
    for path in (stale, stale_old, other, alive):
        (path / "shard").mkdir(parents=True)
    removed = remove_stale_temporaries(tmp_path, "out")
    assert sorted(removed) == sorted([stale, stale_old])
    assert not stale.exists() and not stale_old.exists()
    assert other.exists() and alive.exists()
    with atomic_directory(tmp_path / "other") as tmp:
        (tmp / "x").write_text("x")
    assert not other.exists()


def test_atomic_file_and_write_json(tmp_path):
    path = tmp_path / "a" / "r.json"
    write_json(path, {"k": 1})
    assert path.read_text() == '{\n  "k": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert path.read_text() == '{\n  "k": 1\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
