"""A stand-in Hugging Face Hub on loopback, for push tests with the real huggingface_hub client.

``StandIn`` is a small ``http.server`` that speaks the parts of the Hub protocol an upload uses:
repo and branch creation, preupload, the git-LFS batch API with basic PUT transfers (and verify),
NDJSON commits, YAML validation and ``model_info`` with file metadata. huggingface_hub runs
unpatched: only its offline switch and Xet (which would need a CAS server) are turned off (the ``hub``
fixture in ``tests/integration/conftest.py``). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

from tnedit.hub import git_blob_sha1

TOKEN = "hf_test_SECRET_token"  # the one token the stand-in accepts
MAX_BODY = 64 * 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


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
