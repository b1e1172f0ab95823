"""Upload an edited checkpoint to the Hugging Face Hub and check that what landed is what apply wrote.

The order is fixed: validate the directory (``tnedit.json`` present, every weight file's SHA-256
equal to the one recorded there, the model card's Hub metadata complete), create the repo (and the
branch), upload every file except ``README.md``, upload ``README.md`` in a last commit, then read
the repo back with ``model_info(files_metadata=True)`` and compare each file's remote checksum.

Authentication is left entirely to ``huggingface_hub`` (``HF_TOKEN`` or the login cache). tnedit
only asks it whether a token exists; the token is never kept in our structures, written, logged or
echoed in errors. huggingface_hub is imported inside functions only, like torch elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tnedit.checkpoint import CARD_NAME, PROVENANCE_NAME, REVERT_NAME, read_header, require_directory, sha256_files
from tnedit.errors import CheckpointError, HubError, InputError, TneditError
from tnedit.formats.outputs import contained_name

Log = Callable[[str], None]

# A file with this suffix that tnedit.json does not record (other than the revert file) is refused.
WEIGHT_SUFFIX = ".safetensors"
LOGIN_HINT = "set HF_TOKEN or run `huggingface-cli login`"


@dataclass
class PushSettings:
    """What to upload where. No credentials: huggingface_hub resolves the token itself."""

    dir: str | Path
    repo: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    large: bool = False
    endpoint: str | None = None


@dataclass
class PushResult:
    repo: str
    url: str
    revision: str
    commit: str | None
    files: list[str]
    verified: bool
    card: str = "as-is"  # "as-is" | "repaired" | "regenerated"
    commits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedDir:
    """A validated checkpoint directory: what to upload and the checksums to expect remotely."""

    path: Path
    provenance: dict[str, Any]
    sha256: dict[str, str]  # every file to upload except README.md -> SHA-256
    card: bytes  # the README.md to upload (possibly repaired or regenerated)
    card_status: str
    notes: list[str]

    @property
    def files(self) -> list[str]:
        return sorted([*self.sha256, CARD_NAME])


# --- local validation ---------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's bytes: what the Hub reports as ``blobId`` for a non-LFS file."""
    sha = hashlib.sha1(usedforsecurity=False)
    sha.update(b"blob %d\0" % len(data))
    sha.update(data)
    return sha.hexdigest()


def local_files(path: Path) -> list[str]:
    """Relative POSIX paths of the files huggingface_hub's folder upload would take from ``path``."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    rel = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    return list(filter_repo_objects(rel, ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)))


# Keys of tnedit.json that push (the card, the commit message) and evaluate (the edit) read, and their types.
PROVENANCE_KEYS: tuple[tuple[str, str, type], ...] = (
    ("source", "name_or_path", str),
    ("source", "model_type", str),
    ("source", "num_layers", int),
    ("edit", "op", str),
    ("edit", "n_neurons", int),
    ("edit", "per_layer", dict),
    ("edit", "neurons", list),
    ("edit", "semantics", str),
)
_JSON_TYPE = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def check_provenance(path: Path, prov: dict[str, Any]) -> dict[str, Any]:
    """Refuse a ``tnedit.json`` that lacks a key tnedit reads, or whose weight names leave ``path``.

    ``weights`` must map each weight file (a name inside ``path``) to ``{"sha256": HEX}``.
    """
    where = path / PROVENANCE_NAME
    for section, key, kind in PROVENANCE_KEYS:
        block = prov.get(section)
        value = block.get(key) if isinstance(block, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{where}: key '{section}.{key}' is missing or not {_JSON_TYPE[kind]}")
    edit = prov["edit"]
    if edit["op"] not in ("zero", "scale"):
        raise CheckpointError(f"{where}: key 'edit.op' must be 'zero' or 'scale', got {edit['op']!r}")
    factor = edit.get("factor")
    if edit["op"] == "scale" and (not isinstance(factor, int | float) or isinstance(factor, bool)):
        raise CheckpointError(f"{where}: key 'edit.factor' must be a number for op 'scale', got {factor!r}")
    if not isinstance(prov.get("neuron_set") or {}, dict):
        raise CheckpointError(f"{where}: key 'neuron_set' must be an object")
    weights = prov.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{where}: key 'weights' must map each weight file to its sha256")
    for name, entry in weights.items():
        contained_name(path, name, f"{where}: weights")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise CheckpointError(f"{where}: weights['{name}'] has no sha256")
    return prov


def read_checkpoint_provenance(path: Path) -> dict[str, Any]:
    """The checked ``tnedit.json`` of a directory written by ``tnedit apply``; CheckpointError otherwise."""
    from tnedit.edit import read_provenance

    if not (path / PROVENANCE_NAME).is_file():
        raise CheckpointError(
            f"{path}: not a tnedit checkpoint (no {PROVENANCE_NAME}); expected a directory written by `tnedit apply`"
        )
    return check_provenance(path, read_provenance(path))


def missing_weights(path: Path, prov: dict[str, Any]) -> str | None:
    """One line naming the weight files ``tnedit.json`` lists that ``path`` lacks; None when none is missing."""
    missing = [w for w in prov["weights"] if not (path / w).is_file()]
    if missing:
        return f"{path}: weight file(s) listed in {PROVENANCE_NAME} are missing: {', '.join(missing)}"
    return None


def check_push_dir(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The cheap checks of DIR (a directory with a complete ``tnedit.json``), before any request or hashing."""
    path = Path(path)
    require_directory(path, InputError)
    return path, read_checkpoint_provenance(path)


def weights_problem(path: Path, prov: dict[str, Any], digests: dict[str, str] | None = None,
                    progress: Callable[[int], Any] | None = None) -> str | None:
    """Why the weight files in ``path`` are not the ones ``tnedit.json`` records, in one line; None if they are.

    ``digests`` (file -> SHA-256) saves hashing again when the caller has them; otherwise the
    recorded files are hashed, several at a time.
    """
    weights: dict[str, dict[str, Any]] = prov["weights"]
    missing = missing_weights(path, prov)
    if missing:
        return missing
    if digests is None:
        digests = dict(zip(weights, sha256_files([path / w for w in weights], progress), strict=True))
    for name, entry in weights.items():
        if digests[name] != entry["sha256"]:
            return (
                f"{path / name}: SHA-256 differs from {PROVENANCE_NAME} ({digests[name][:12]}… vs "
                f"{entry['sha256'][:12]}…); the checkpoint was modified after apply"
            )
    return None


def _source_card(path: Path) -> str | None:
    """The base model's card, as apply kept it in the revert file's metadata (None if unknown)."""
    revert = path / REVERT_NAME
    if not revert.is_file():
        return None
    try:
        metadata = read_header(revert).metadata or {}
    except CheckpointError:
        return None
    return metadata.get("source_card") if metadata.get("source_had_card") == "1" else None


def card_problems(meta: dict[str, Any], provenance: dict[str, Any]) -> list[str]:
    """What the card's Hub front matter lacks: base_model, library_name, the tnedit tag, the licence."""
    problems = [f"no {key}" for key in ("base_model", "library_name") if not meta.get(key)]
    tags = meta.get("tags") or []
    if "tnedit" not in (tags if isinstance(tags, list) else [tags]):
        problems.append("tags lack 'tnedit'")
    licence = (provenance.get("source") or {}).get("license")
    if licence and not meta.get("license"):
        problems.append(f"no license (the base model's is {licence})")
    return problems


def _repair_card(text: str, provenance: dict[str, Any], expected: dict[str, Any]) -> str:
    """Add the missing Hub metadata to ``text``'s front matter; keep every key the author set."""
    import yaml

    from tnedit.formats.card import read_front_matter, strip_front_matter

    meta = dict(read_front_matter(text))
    for key in ("base_model", "library_name"):
        if not meta.get(key) and expected.get(key):
            meta[key] = expected[key]
    licence = (provenance.get("source") or {}).get("license")
    if licence and not meta.get("license"):
        for key in ("license", "license_name", "license_link"):
            if expected.get(key) is not None:
                meta[key] = expected[key]
        meta.setdefault("license", licence)
    tags = meta.get("tags") or []
    tags = list(tags) if isinstance(tags, list) else [tags]
    meta["tags"] = tags + [t for t in expected.get("tags") or ["tnedit"] if t not in tags]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()
    body = strip_front_matter(text).lstrip("\n")
    return f"---\n{front}\n---\n\n{body}"


def prepare_card(path: Path, provenance: dict[str, Any]) -> tuple[bytes, str, list[str]]:
    """The README.md to upload, its status (as-is / repaired / regenerated) and notes.

    A missing card is rendered again from ``tnedit.json`` (and the base card kept in the revert file);
    a card whose front matter lacks required Hub metadata gets it added. The directory is not written.
    """
    from tnedit.formats.card import read_front_matter, render_card

    try:
        expected_text = render_card(provenance, _source_card(path))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / PROVENANCE_NAME}: cannot render a model card from it ({exc!r})") from None
    card = path / CARD_NAME
    if not card.is_file():
        note = f"{CARD_NAME} was missing; regenerated from {PROVENANCE_NAME} (any evaluation section is not included)"
        return expected_text.encode("utf-8"), "regenerated", [note]
    raw = card.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{card}: not UTF-8 text") from None
    problems = card_problems(read_front_matter(text), provenance)
    if not problems:
        return raw, "as-is", []
    repaired = _repair_card(text, provenance, read_front_matter(expected_text))
    note = (
        f"{CARD_NAME} front matter: {'; '.join(problems)}; uploading it with the metadata added (local file unchanged)"
    )
    return repaired.encode("utf-8"), "repaired", [note]


def prepare_dir(path: str | Path, *, progress: bool = True) -> PreparedDir:
    """Validate an edited checkpoint directory for upload; refuse one modified after apply.

    Every weight file named in ``tnedit.json`` must exist with the recorded SHA-256, and no other
    ``.safetensors`` file (besides the revert file) may sit beside them.
    """
    from tnedit.reporting import NullReporter, TqdmReporter

    path, prov = check_push_dir(path)
    weights: dict[str, dict[str, Any]] = prov["weights"]
    files = [f for f in local_files(path) if f != CARD_NAME]
    missing = missing_weights(path, prov)
    if missing:
        raise CheckpointError(missing)
    extra = [f for f in files if f.endswith(WEIGHT_SUFFIX) and f not in weights and f != REVERT_NAME]
    if extra:
        raise CheckpointError(
            f"{path}: weight file(s) not recorded in {PROVENANCE_NAME}: {', '.join(extra)}; refusing to upload "
            "weights that tnedit did not write"
        )
    notes: list[str] = []
    if REVERT_NAME not in files:
        notes.append(f"{REVERT_NAME} is missing: the pushed checkpoint cannot be reverted with `tnedit revert`")
    total = sum((path / f).stat().st_size for f in files)
    with (TqdmReporter() if progress else NullReporter()).progress(total, "checksum", unit="B") as bar:
        sha256 = dict(zip(files, sha256_files([path / f for f in files], bar.update), strict=True))
    problem = weights_problem(path, prov, digests=sha256)
    if problem:
        raise CheckpointError(f"{problem}, refusing to upload")
    card, status, card_notes = prepare_card(path, prov)
    return PreparedDir(path, prov, sha256, card, status, notes + card_notes)


# --- errors -------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        if isinstance(getattr(mod, "TransportError", None), type):
            types.append(mod.TransportError)
    return tuple(types)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def hub_error(exc: BaseException, repo: str, endpoint: str) -> TneditError | None:
    """One clear line for a huggingface_hub / HTTP failure, or None if ``exc`` is not one."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    for err in _chain(exc):
        if isinstance(err, TneditError):
            return err
        if isinstance(err, OfflineModeIsEnabled):
            return HubError(f"cannot push {repo}: offline mode is on (HF_HUB_OFFLINE); unset it to upload")
        if isinstance(err, HfHubHTTPError):
            response = getattr(err, "response", None)
            status = getattr(response, "status_code", None)
            if status in (401, 403):
                why = " (HTTP 403: the token may lack write access)" if status == 403 else ""
                return HubError(f"authentication failed for {repo}{why}: {LOGIN_HINT}")
            detail = getattr(err, "server_message", None) or _first_line(str(err))
            return HubError(f"the Hub refused a request for {repo} (HTTP {status}): {_first_line(detail)}")
        if isinstance(err, HFValidationError):
            return InputError(f"invalid repo id {repo!r}: {_first_line(str(err))}")
        if isinstance(err, _transport_errors()):
            return HubError(f"network failure talking to {endpoint} for {repo}: {type(err).__name__}: {err}")
    return None


# --- remote verification -------------------------------------------------------------------------


def verify_remote(info: Any, prepared: PreparedDir, repo: str, revision: str) -> list[str]:
    """Compare the repo's file list and checksums (``model_info(files_metadata=True)``) with the upload.

    Weight files are checked against ``tnedit.json``; LFS files by SHA-256, other files by git blob id.
    Raises HubError naming the first file that is missing or differs. Returns notes.
    """
    siblings = getattr(info, "siblings", None)
    if siblings is None:
        raise HubError(f"cannot verify {repo}@{revision}: the Hub returned no file list")
    remote = {s.rfilename: s for s in siblings}
    weights = prepared.provenance["weights"]
    notes: list[str] = []
    expected = {**prepared.sha256, CARD_NAME: hashlib.sha256(prepared.card).hexdigest()}
    for name in sorted(expected, key=lambda n: (n not in weights, n)):
        sibling = remote.get(name)
        if sibling is None:
            raise HubError(f"{repo}@{revision}: {name} is missing after the upload")
        want = weights[name]["sha256"] if name in weights else expected[name]
        source = PROVENANCE_NAME if name in weights else "the local file"
        lfs = getattr(sibling, "lfs", None)
        remote_sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        if remote_sha:
            if remote_sha != want:
                raise HubError(
                    f"{repo}@{revision}: {name} has SHA-256 {remote_sha[:12]}… on the Hub but {want[:12]}… in "
                    f"{source}; the upload is corrupt"
                )
            continue
        blob_id = getattr(sibling, "blob_id", None)
        if blob_id:
            data = prepared.card if name == CARD_NAME else (prepared.path / name).read_bytes()
            if git_blob_sha1(data) != blob_id:
                raise HubError(f"{repo}@{revision}: {name} differs on the Hub from {source} (git blob id mismatch)")
            continue
        if name in weights:
            raise HubError(f"cannot verify {repo}@{revision}: the Hub reported no checksum for {name}")
        notes.append(f"{name}: the Hub reported no checksum; not verified")
    stale = sorted(n for n in remote if n.endswith(WEIGHT_SUFFIX) and n not in expected)
    if stale:
        notes.append(f"the repo also holds weight files this checkpoint lacks (left in place): {', '.join(stale)}")
    return notes


# --- push ---------------------------------------------------------------------------------------


def _default_message(prov: dict[str, Any]) -> str:
    edit = prov.get("edit") or {}
    base = (prov.get("source") or {}).get("name_or_path", "model")
    base = Path(str(base)).name if (prov.get("source") or {}).get("is_hub") is False else base
    if edit.get("op") == "scale":
        what = f"scale {edit.get('n_neurons')} neurons by {edit.get('factor'):g}"
    else:
        what = f"zero {edit.get('n_neurons')} neurons"
    return f"tnedit: {base} with {what}"


def _commit_oid(info: Any) -> str | None:
    return getattr(info, "oid", None) if info is not None else None


def push_checkpoint(
    settings: PushSettings,
    *,
    api: Any = None,
    progress: bool = True,
    log: Log | None = None,
    warn: Log | None = None,
) -> PushResult:
    """Upload ``settings.dir`` to ``settings.repo``: all files, then README.md last, then verify.

    ``api`` is an ``huggingface_hub.HfApi`` (default: one for ``settings.endpoint``, token resolved by
    huggingface_hub from HF_TOKEN or the login cache). Failures raise HubError / InputError with one line.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        validate_repo_id,
    )

    say = log if (log is not None and progress) else (lambda _m: None)
    tell = warn if warn is not None else (lambda _m: None)
    repo = settings.repo
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise InputError(f"invalid repo id {repo!r}: {_first_line(str(exc))}") from None
    check_push_dir(settings.dir)  # a bad DIR is reported before offline mode or a missing token
    if constants.is_offline_mode():
        raise HubError(f"cannot push {repo}: offline mode is on (HF_HUB_OFFLINE); unset it to upload")
    api = api if api is not None else HfApi(endpoint=settings.endpoint or None)
    endpoint = str(getattr(api, "endpoint", None) or settings.endpoint or constants.ENDPOINT)
    if getattr(api, "token", None) is None:
        from huggingface_hub import get_token

        if get_token() is None:  # only asks whether one exists; the value is never kept
            raise HubError(f"no Hugging Face token for {repo}: {LOGIN_HINT}")
    prepared = prepare_dir(settings.dir, progress=progress)
    for note in prepared.notes:
        tell(note)
    revision = settings.revision or constants.DEFAULT_REVISION
    message = settings.commit_message or _default_message(prepared.provenance)
    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return _push(api, settings, prepared, repo, revision, message, endpoint, say, tell)
    except TneditError:
        raise
    except Exception as exc:  # map huggingface_hub / transport failures to one line
        mapped = hub_error(exc, repo, endpoint)
        if mapped is None:
            raise
        raise mapped from None
    finally:
        if silence:
            enable_progress_bars()


def _push(
    api: Any,
    settings: PushSettings,
    prepared: PreparedDir,
    repo: str,
    revision: str,
    message: str,
    endpoint: str,
    say: Log,
    tell: Log,
) -> PushResult:
    from huggingface_hub import constants

    notes = list(prepared.notes)
    say(f"creating {repo} on {endpoint} (if missing)")
    url = str(api.create_repo(repo, private=settings.private or None, exist_ok=True, repo_type="model"))
    repo_id = getattr(url, "repo_id", None) or repo
    if revision != constants.DEFAULT_REVISION:
        say(f"creating branch {revision} (if missing)")
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    commits: list[str] = []
    n = len(prepared.sha256)
    if settings.large and hasattr(api, "upload_large_folder"):
        say(f"uploading {n} files with upload_large_folder (README.md follows)")
        api.upload_large_folder(
            repo_id=repo_id,
            folder_path=str(prepared.path),
            repo_type="model",
            revision=revision,
            private=settings.private or None,
            ignore_patterns=[CARD_NAME],
        )
        parent = None
    else:
        if settings.large:
            note = "this huggingface_hub has no upload_large_folder; upload_folder uploads large folders in batches"
            notes.append(note)
            tell(note)
        say(f"uploading {n} files (README.md follows in its own commit)")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(prepared.path),
            repo_type="model",
            revision=revision,
            commit_message=message,
            ignore_patterns=[CARD_NAME],
        )
        parent = _commit_oid(info)
        if parent:
            commits.append(parent)
    say(f"uploading {CARD_NAME}")
    card_info = api.upload_file(
        path_or_fileobj=prepared.card,
        path_in_repo=CARD_NAME,
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=f"{message} (model card)",
        parent_commit=parent,
    )
    commit = _commit_oid(card_info)
    if commit:
        commits.append(commit)
    say(f"verifying checksums on {repo_id}@{(commit or revision)[:12]}")
    remote = api.model_info(repo_id, revision=commit or revision, files_metadata=True)
    commit = commit or getattr(remote, "sha", None)
    for note in verify_remote(remote, prepared, repo_id, revision):
        notes.append(note)
        tell(note)
    if revision != constants.DEFAULT_REVISION:
        url = f"{url.rstrip('/')}/tree/{revision}"
    return PushResult(
        repo=repo_id,
        url=url,
        revision=revision,
        commit=commit,
        files=prepared.files,
        verified=True,
        card=prepared.card_status,
        commits=commits,
        notes=notes,
    )


def describe(result: PushResult) -> str:
    commit = f", commit {result.commit[:12]}" if result.commit else ""
    return f"pushed {len(result.files)} files to {result.url}{commit}; checksums verified"


__all__ = [
    "PushResult",
    "PushSettings",
    "card_problems",
    "describe",
    "git_blob_sha1",
    "hub_error",
    "prepare_card",
    "prepare_dir",
    "push_checkpoint",
    "verify_remote",
]
