"""push: the real huggingface_hub client against a stand-in Hub on loopback.

The stand-in (``StandIn``) is ``tests/support/hub_standin.py``; the ``hub`` fixture that starts one per test
and points huggingface_hub at it is in ``tests/integration/conftest.py``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import socket
from pathlib import Path

import pytest

from tests.support.hostile import run_cli
from tests.support.hub_standin import TOKEN, StandIn
from tests.support.tiny import make_tiny
from tnedit.errors import CheckpointError, HubError, InputError, TneditWarning
from tnedit.formats.card import read_front_matter
from tnedit.hub import PushSettings, push_checkpoint
from tnedit.reporting import NullReporter

SOURCE_CARD = "---\nlicense: apache-2.0\ntags:\n- text-generation\n---\n# Tiny llama\n\nA tiny random model.\n"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama with a licensed source card, and its edit (neuron 0:1 zeroed), built once."""
    from tnedit.cli import main

    root = tmp_path_factory.mktemp("hub")
    src = make_tiny("llama", root)
    (src / "README.md").write_text(SOURCE_CARD, encoding="utf-8")
    out = root / "edited"
    main(["apply", str(src), "--neurons", "0:1", "-o", str(out)])  # through the CLI, as a user makes one
    assert (out / "tnedit.json").is_file()
    return src, out


@pytest.fixture
def edited(checkpoints, tmp_path) -> Path:
    """A private copy of the edited checkpoint, free to tamper with."""
    return Path(shutil.copytree(checkpoints[1], tmp_path / "edited"))


def dir_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def lib_push(edited: Path, hub: StandIn, repo: str = "user/tiny", **kwargs) -> object:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    return push_checkpoint(PushSettings(dir=edited, repo=repo, **kwargs), api=api, reporter=NullReporter())


# --- tests --------------------------------------------------------------------------------------


def test_push_uploads_every_file_card_last_and_never_leaks_the_token(edited, hub, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx", "httpx2", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    local = dir_files(edited)
    code, out, err = run_cli(["push", str(edited), "user/tiny-edited", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)

    # every file of the directory, byte for byte, nothing else
    assert {"tnedit.json", "tnedit_revert.safetensors", "config.json", "model.safetensors", "README.md"} <= set(local)
    assert any(name.startswith("tokenizer") for name in local)
    assert hub.uploaded() == local
    assert sorted(result["files"]) == sorted(local)
    # weights went through LFS (batch + PUT), small files inline
    head = hub.head("user/tiny-edited")
    assert {"model.safetensors", "tnedit_revert.safetensors"} <= head.lfs
    assert "config.json" not in head.lfs
    assert set(hub.lfs_objects) == {hashlib.sha256(local[f]).hexdigest() for f in head.lfs - {".gitattributes"}}
    # README.md last, in a commit of its own
    assert len(hub.client_commits) == 2
    first, last = (hub.commits[oid] for oid in hub.client_commits)
    assert "README.md" not in first.added and set(first.added) == set(local) - {"README.md"}
    assert set(last.added) == {"README.md"}
    assert result["commit"] == last.oid == head.oid and result["commits"] == [first.oid, last.oid]
    assert result["verified"] is True and result["card"] == "as-is"
    assert result["url"] == f"{hub.url}/user/tiny-edited"
    # the card's Hub metadata, licence carried over from the source card
    meta = read_front_matter(hub.uploaded()["README.md"].decode())
    assert meta["base_model"] == "tiny-llama-float32"
    assert "tnedit" in meta["tags"] and "text-generation" in meta["tags"]
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert json.loads(hub.uploaded()["tnedit.json"])["source"]["license"] == "apache-2.0"
    # progress went to stderr
    assert "uploading README.md" in err and "verifying" in err
    # the token came from HF_TOKEN (the stand-in refuses anything else) and went nowhere else
    assert ("POST", "/api/repos/create") in hub.requests
    logs = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "/api/models/user/tiny-edited/preupload/main" in logs  # debug logging was really captured
    for where, text in [("stdout", out), ("stderr", err), ("logs", logs), ("caplog", caplog.text)]:
        assert TOKEN not in text, where
    for name, data in {**dir_files(edited), **hub.uploaded()}.items():
        assert TOKEN.encode() not in data, name


def test_library_push_to_a_new_branch_private(edited, hub):
    result = lib_push(edited, hub, repo="org/tiny", revision="exp", private=True, commit_message="zero 0:1")
    assert result.verified and result.revision == "exp"
    assert result.url == f"{hub.url}/org/tiny/tree/exp"
    repo = hub.repos["org/tiny"]
    assert repo.private is True
    assert len(repo.branches["main"]) == 1  # main keeps only the initial commit
    assert repo.branches["exp"][-1] == result.commit
    messages = [hub.commits[oid].message for oid in hub.client_commits]
    assert messages == ["zero 0:1", "zero 0:1 (model card)"]
    assert hub.uploaded() == dir_files(edited)
    # pushing again to the same branch works (branch and repo already exist)
    again = lib_push(edited, hub, repo="org/tiny", revision="exp")
    assert again.verified


@pytest.mark.parametrize("how", ["401 everywhere", "403 at preupload"])
def test_auth_failure_is_one_clear_line(edited, hub, capsys, how):
    if how == "401 everywhere":
        hub.auth_status = 401
    else:
        hub.fail["preupload"] = 403
    code, out, err = run_cli(["push", str(edited), "user/tiny", "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tnedit: error: authentication failed for user/tiny")
    assert "set HF_TOKEN or run `huggingface-cli login`" in lines[0]
    assert TOKEN not in err + out
    assert not hub.client_commits and not hub.lfs_objects


@pytest.mark.parametrize(
    "name,expected",
    [
        ("model.safetensors", "has SHA-256 .* on the Hub but .* in tnedit.json; the upload is corrupt"),
        ("config.json", "differs on the Hub from the local file"),
    ],
)
def test_remote_checksum_mismatch_names_the_file(edited, hub, capsys, name, expected):
    hub.corrupt.add(name)
    code, _, err = run_cli(["push", str(edited), "user/tiny", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(f"tnedit: error: user/tiny@main: {re.escape(name)} {expected}", err), err


def test_tampered_dir_is_refused_before_any_request(edited, hub, capsys):
    weights = edited / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    code, _, err = run_cli(["push", str(edited), "user/tiny", "--quiet"], capsys)
    assert code == 2
    assert "model.safetensors" in err and "SHA-256 differs from tnedit.json" in err
    assert hub.requests == []


def test_extra_weight_file_is_refused(edited, hub):
    shutil.copy(edited / "model.safetensors", edited / "model-extra.safetensors")
    with pytest.raises(CheckpointError, match="model-extra.safetensors"):
        lib_push(edited, hub)
    assert hub.requests == []


def test_not_a_tnedit_checkpoint(checkpoints, tmp_path, hub):
    src, _ = checkpoints
    with pytest.raises(CheckpointError, match="not a tnedit checkpoint"):
        lib_push(src, hub)
    with pytest.raises(InputError, match="no such directory"):
        lib_push(tmp_path / "missing", hub)
    assert hub.requests == []


def test_missing_card_is_regenerated_with_the_licence(edited, hub):
    (edited / "README.md").unlink()
    with pytest.warns(TneditWarning, match="README.md was missing; regenerated"):
        result = lib_push(edited, hub)
    assert result.card == "regenerated" and result.verified
    card = hub.uploaded()["README.md"].decode()
    meta = read_front_matter(card)
    assert meta["license"] == "apache-2.0" and "tnedit" in meta["tags"] and meta["base_model"]
    assert "A tiny random model." in card  # the base card kept in the revert file
    assert hub.commits[hub.client_commits[-1]].added.keys() == {"README.md"}
    assert not (edited / "README.md").exists()  # the directory is never written


def test_incomplete_card_metadata_is_completed(edited, hub):
    (edited / "README.md").write_text("---\ntags:\n- mine\n---\n# My notes\n", encoding="utf-8")
    with pytest.warns(TneditWarning, match="front matter: no base_model"):
        result = lib_push(edited, hub)
    assert result.card == "repaired"
    card = hub.uploaded()["README.md"].decode()
    meta = read_front_matter(card)
    assert meta["tags"][0] == "mine" and "tnedit" in meta["tags"]
    assert meta["license"] == "apache-2.0" and meta["base_model"] and meta["library_name"] == "transformers"
    assert card.rstrip().endswith("# My notes")
    assert (edited / "README.md").read_text(encoding="utf-8").startswith("---\ntags:\n- mine")


@pytest.mark.parametrize("problem", ["offline", "no token", "bad repo id"])
def test_refused_before_any_request(edited, hub, monkeypatch, tmp_path, capsys, problem):
    from huggingface_hub import constants

    repo = "user/tiny"
    if problem == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        expected = "offline mode is on"
    elif problem == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        expected = "no Hugging Face token for user/tiny: set HF_TOKEN or run `huggingface-cli login`"
    else:
        repo = "not a repo!"
        expected = "invalid repo id 'not a repo!'"
    code, _, err = run_cli(["push", str(edited), repo, "--quiet"], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert hub.requests == []


def test_network_failure(edited, hub):
    from huggingface_hub import HfApi

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    api = HfApi(endpoint=dead, token=TOKEN)
    with pytest.raises(HubError, match=r"network failure talking to http://127\.0\.0\.1:\d+ for user/tiny"):
        push_checkpoint(PushSettings(dir=edited, repo="user/tiny"), api=api, reporter=NullReporter())


def test_large_uses_upload_large_folder_when_available(edited, hub):
    from huggingface_hub import HfApi

    class LargeApi(HfApi):
        calls: list[dict] = []

        def upload_large_folder(self, **kwargs):  # hub versions that have it; 2.x folds it into upload_folder
            self.calls.append({**kwargs, "ignore_patterns": list(kwargs["ignore_patterns"])})
            self.upload_folder(
                repo_id=kwargs["repo_id"],
                folder_path=kwargs["folder_path"],
                revision=kwargs["revision"],
                ignore_patterns=kwargs["ignore_patterns"],
            )

    api = LargeApi(endpoint=hub.url, token=TOKEN)
    result = push_checkpoint(PushSettings(dir=edited, repo="user/big", large=True), api=api, reporter=NullReporter())
    assert LargeApi.calls and LargeApi.calls[0]["ignore_patterns"] == ["README.md"]
    assert result.verified and result.commit == hub.head("user/big").oid
    assert set(hub.commits[hub.client_commits[-1]].added) == {"README.md"}
    # without upload_large_folder (huggingface_hub 2.x) --large falls back to upload_folder with a note
    with pytest.warns(TneditWarning, match="no upload_large_folder"):
        fallback = lib_push(edited, hub, repo="user/big2", large=True)
    assert fallback.verified and any("upload_large_folder" in n for n in fallback.notes)


def test_apply_push_to_hub_chains(checkpoints, tmp_path, hub, capsys):
    src, _ = checkpoints
    out = tmp_path / "chained"
    code, stdout, err = run_cli(
        ["apply", str(src), "--neurons", "0:1", "-o", str(out), "--push-to-hub", "user/chained", "--quiet", "--json"],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["push"]["verified"] is True and summary["push"]["repo"] == "user/chained"
    assert hub.uploaded() == dir_files(out)
    assert set(hub.commits[hub.client_commits[-1]].added) == {"README.md"}
    assert TOKEN not in stdout + err
