"""push: the real huggingface_hub client against a stand-in Hub on loopback.

``StandIn`` is a small ``http.server`` that speaks the parts of the Hub protocol an upload uses:
repo and branch creation, preupload, the git-LFS batch API with basic PUT transfers (and verify),
NDJSON commits, YAML validation and ``model_info`` with file metadata. huggingface_hub runs
unpatched: only its offline switch and Xet (which would need a CAS server) are turned off.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tests.hostile import run_cli
from tests.tiny import make_tiny
from tnedit.errors import CheckpointError, HubError, InputError, TneditWarning
from tnedit.formats.card import read_front_matter
from tnedit.hub import PushSettings, git_blob_sha1, push_checkpoint
from tnedit.reporting import NullReporter

TOKEN = "hf_test_SECRET_token"
MAX_BODY = 64 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
SOURCE_CARD = "---\nlicense: apache-2.0\ntags:\n- text-generation\n---\n# Tiny llama\n\nA tiny random model.\n"


# --- the stand-in Hub ---------------------------------------------------------------------------


@dataclass
class Commit:
    oid: str
    repo: str
    branch: str
    message: str
    added: dict[str, bytes]  # what this commit uploaded
    tree: dict[str, bytes]  # the whole snapshot after it
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS pointers


@dataclass
class Repo:
    private: bool | None
    branches: dict[str, list[str]] = field(default_factory=dict)  # branch -> commit oids, oldest first


class StandIn:
    def __init__(self, token: str):
        self.token = token
        self.lock = threading.Lock()
        self.repos: dict[str, Repo] = {}
        self.commits: dict[str, Commit] = {}
        self.client_commits: list[str] = []  # commits made by the client, in order
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.auth_status: int | None = None  # answer every authenticated route with this status
        self.fail: dict[str, int] = {}  # route name -> status to answer with
        self.corrupt: set[str] = set()  # paths whose SHA-256 model_info misreports
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> StandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # views for the tests
    def head(self, repo: str, branch: str = "main") -> Commit:
        return self.commits[self.repos[repo].branches[branch][-1]]

    def uploaded(self) -> dict[str, bytes]:
        """Every file the client committed, last version wins."""
        out: dict[str, bytes] = {}
        for oid in self.client_commits:
            out.update(self.commits[oid].added)
        return out

    # protocol helpers
    def _new_commit(self, repo: str, branch: str, message: str, added: dict[str, bytes], lfs: set[str]) -> Commit:
        branches = self.repos[repo].branches
        parent = self.commits[branches[branch][-1]] if branches.get(branch) else None
        tree = {**(parent.tree if parent else {}), **added}
        seed = f"{repo}|{branch}|{len(self.commits)}|{message}|{sorted(added)}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), repo, branch, message, added, tree)
        commit.lfs = (parent.lfs if parent else set()) - set(added) | lfs
        self.commits[commit.oid] = commit
        branches.setdefault(branch, []).append(commit.oid)
        return commit

    def _resolve(self, repo: str, rev: str) -> Commit | None:
        if repo not in self.repos:
            return None
        if rev in self.repos[repo].branches:
            return self.head(repo, rev)
        found = self.commits.get(rev)
        return found if found is not None and found.repo == repo else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection never holds a thread for long

            def log_message(self, *args):  # keep the test's stderr for tnedit's own output
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts, total = [], 0
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        total += size
                        if total > MAX_BODY:
                            raise ValueError("body too large")
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise ValueError("body too large")
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, code: str | None = None) -> None:
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers)

            def _authorised(self, route: str) -> bool:
                if hub.auth_status is not None:
                    self._error(hub.auth_status, "Invalid credentials in Authorization header")
                    return False
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._error(401, "Invalid credentials in Authorization header")
                    return False
                if route in hub.fail:
                    self._error(hub.fail[route], f"{route} refused by the test")
                    return False
                return True

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                body = self._body()
                with hub.lock:
                    hub.requests.append((method, path))
                    for pattern, verb, name in ROUTES:
                        match = re.fullmatch(pattern, path)
                        if match and verb == method:
                            if name != "lfs_put" and not self._authorised(name):
                                return
                            getattr(self, f"_r_{name}")(body, **{k: unquote(v) for k, v in match.groupdict().items()})
                            return
                    hub.unknown.append((method, path))
                    self._error(404, f"the stand-in has no route for {method} {path}")

            # routes
            def _r_create_repo(self, body: bytes) -> None:
                payload = json.loads(body)
                repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
                if repo in hub.repos:  # the Hub's 409 carries the existing repo's url
                    message = "You already created this model repo"
                    self._send(409, {"error": message, "url": f"{hub.url}/{repo}"}, {"X-Error-Message": message})
                    return
                hub.repos[repo] = Repo(private=payload.get("visibility") == "private")
                hub._new_commit(
                    repo, "main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs\n"}, set()
                )
                self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})

            def _r_model_info(self, body: bytes, repo: str, rev: str | None = None) -> None:
                commit = hub._resolve(repo, rev or "main")
                if commit is None:
                    code = "RepoNotFound" if repo not in hub.repos else "RevisionNotFound"
                    self._error(404, f"{repo}@{rev} not found", code)
                    return
                siblings = []
                for name, data in sorted(commit.tree.items()):
                    seen = data + b"corrupt" if name in hub.corrupt else data  # a misreported checksum
                    entry: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(seen)}
                    if name in commit.lfs:
                        sha = hashlib.sha256(seen).hexdigest()
                        entry["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
                    siblings.append(entry)
                self._send(
                    200, {"id": repo, "sha": commit.oid, "private": hub.repos[repo].private, "siblings": siblings}
                )

            def _r_create_branch(self, body: bytes, repo: str, branch: str) -> None:
                if repo not in hub.repos:
                    self._error(404, "repo not found", "RepoNotFound")
                    return
                branches = hub.repos[repo].branches
                if branch in branches:
                    self._error(409, "Reference already exists")
                    return
                start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
                branches[branch] = [hub._resolve(repo, start).oid]
                self._send(200, {})

            def _r_preupload(self, body: bytes, repo: str, rev: str) -> None:
                if hub._resolve(repo, rev) is None:
                    self._error(404, "repo or revision not found", "RepoNotFound")
                    return
                files = []
                for f in json.loads(body)["files"]:
                    lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 1024 * 1024
                    files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
                self._send(200, {"files": files, "commitOid": hub._resolve(repo, rev).oid})

            def _r_lfs_batch(self, body: bytes, repo: str) -> None:
                payload = json.loads(body)
                objects = []
                for obj in payload["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                    if obj["oid"] not in hub.lfs_objects:
                        entry["actions"] = {
                            "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}", "header": {}},
                            "verify": {"href": f"{hub.url}/lfs-verify/{repo}"},
                        }
                    objects.append(entry)
                self._send(200, {"transfer": "basic", "objects": objects})

            def _r_lfs_put(self, body: bytes, oid: str) -> None:
                if hashlib.sha256(body).hexdigest() != oid:
                    self._error(400, "content does not match its oid")
                    return
                hub.lfs_objects[oid] = body
                self._send(200, None)

            def _r_lfs_verify(self, body: bytes, repo: str) -> None:
                payload = json.loads(body)
                data = hub.lfs_objects.get(payload["oid"])
                if data is None or len(data) != payload["size"]:
                    self._error(404, "object not uploaded")
                    return
                self._send(200, {})

            def _r_validate_yaml(self, body: bytes) -> None:
                content = json.loads(body)["content"]
                try:
                    read = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                except yaml.YAMLError as exc:
                    self._send(400, {"errors": [{"message": str(exc)}], "warnings": []})
                    return
                self._send(200, {"errors": [], "warnings": [] if isinstance(read, dict) else [{"message": "?"}]})

            def _r_commit(self, body: bytes, repo: str, rev: str) -> None:
                if hub._resolve(repo, rev) is None or rev not in hub.repos[repo].branches:
                    self._error(404, "repo or branch not found", "RevisionNotFound")
                    return
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = lines[0]
                assert header["key"] == "header", header
                parent = header["value"].get("parentCommit")
                if parent and parent != hub.head(repo, rev).oid:
                    self._error(412, "A commit has happened since. Please refresh and try again.")
                    return
                added: dict[str, bytes] = {}
                lfs: set[str] = set()
                for line in lines[1:]:
                    value = line["value"]
                    if line["key"] == "file":
                        added[value["path"]] = base64.b64decode(value["content"])
                    elif line["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs_objects:
                            self._error(422, f"LFS object {value['oid']} was never uploaded")
                            return
                        added[value["path"]] = hub.lfs_objects[value["oid"]]
                        lfs.add(value["path"])
                    else:
                        self._error(400, f"unsupported commit line {line['key']}")
                        return
                commit = hub._new_commit(repo, rev, header["value"]["summary"], added, lfs)
                hub.client_commits.append(commit.oid)
                self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid})

        return Handler


REPO_RE = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    (r"/api/repos/create", "POST", "create_repo"),
    (rf"/api/models/{REPO_RE}", "GET", "model_info"),
    (rf"/api/models/{REPO_RE}/revision/(?P<rev>[^/]+)", "GET", "model_info"),
    (rf"/api/models/{REPO_RE}/branch/(?P<branch>[^/]+)", "POST", "create_branch"),
    (rf"/api/models/{REPO_RE}/preupload/(?P<rev>[^/]+)", "POST", "preupload"),
    (rf"/api/models/{REPO_RE}/commit/(?P<rev>[^/]+)", "POST", "commit"),
    (r"/api/validate-yaml", "POST", "validate_yaml"),
    (rf"/{REPO_RE}\.git/info/lfs/objects/batch", "POST", "lfs_batch"),
    (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "PUT", "lfs_put"),
    (rf"/lfs-verify/{REPO_RE}", "POST", "lfs_verify"),
]


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


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    server = StandIn(TOKEN).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest keeps everything else offline
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # no CAS server here: plain LFS
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    close_session()
    try:
        yield server
    finally:
        close_session()
        server.stop()
        assert not server.unknown, f"the client called routes the stand-in lacks: {server.unknown}"


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


def test_git_blob_sha1_is_gits_object_id():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


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
