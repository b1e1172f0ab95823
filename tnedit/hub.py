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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tnedit.checkpoint import cached_sha256_files, open_digest_cache, read_header, require_directory
from tnedit.checkpoint.verify import missing_weights, weights_problem
from tnedit.edit.settings import NO_CACHE_HELP
from tnedit.errors import CheckpointError, HubError, InputError, TneditError
from tnedit.formats.card import card_problems, complete_front_matter, read_front_matter, render_card
from tnedit.formats.digest import sha256_bytes
from tnedit.formats.provenance import (
    CARD_NAME,
    NOT_A_CHECKPOINT,
    PROVENANCE_NAME,
    REVERT_NAME,
    Provenance,
    read_provenance,
)
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.settings import setting

# A file with this suffix that tnedit.json does not record (other than the revert file) is refused.
WEIGHT_SUFFIX = ".safetensors"
LOGIN_HINT = "set HF_TOKEN or run `huggingface-cli login`"


@dataclass
class PushSettings:
    """What to upload where (``dir``, ``repo``: the verb's DIR and REPO). No credentials: the Hub client finds them."""

    dir: str | Path = setting("", help="A checkpoint directory written by `tnedit apply`.", cli=False, recipe=False)
    repo: str = setting("", help="The Hub repo to upload to (owner/name).", cli=False)
    private: bool = setting(False, help="Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = setting(
        None, help="Upload to this branch; it is created from main if missing.", metavar="BRANCH"
    )
    commit_message: str | None = setting(
        None, help="Message of the upload commit (the model card follows in its own).", flags=("--commit-message", "-m")
    )
    large: bool = setting(False, help="Use huggingface_hub's resumable large-folder upload where it has one.")
    endpoint: str | None = setting(None, help="Hub endpoint [default: $HF_ENDPOINT or huggingface.co].", metavar="URL")
    no_cache: bool = setting(False, recipe=False, help=NO_CACHE_HELP)


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

    def describe(self) -> str:
        commit = f", commit {self.commit[:12]}" if self.commit else ""
        return f"pushed {len(self.files)} files to {self.url}{commit}; checksums verified"


@dataclass
class PreparedDir:
    """A validated checkpoint directory: what to upload and the checksums to expect remotely."""

    path: Path
    provenance: Provenance
    sha256: dict[str, str]  # every file to upload except README.md -> SHA-256
    card: bytes  # the README.md to upload (possibly repaired or regenerated)
    card_status: str
    notes: list[str]

    @property
    def files(self) -> list[str]:
        return sorted([*self.sha256, CARD_NAME])


@dataclass(frozen=True)
class PushPlan:
    """What push settled before its first request: where to, on which branch, with which message."""

    repo: str
    revision: str
    message: str
    endpoint: str
    prepared: PreparedDir


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


def check_push_dir(path: str | Path) -> tuple[Path, Provenance]:
    """The cheap checks of DIR (a directory with a complete ``tnedit.json``), before any request or hashing."""
    path = Path(path)
    require_directory(path, InputError)
    return path, read_provenance(path, complete=True, missing=NOT_A_CHECKPOINT)


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


def prepare_card(path: Path, provenance: Provenance) -> tuple[bytes, str, list[str]]:
    """The README.md to upload, its status (as-is / repaired / regenerated) and notes.

    A missing card is rendered again from ``tnedit.json`` (and the base card kept in the revert file);
    a card whose front matter lacks required Hub metadata gets it added. The directory is not written.
    """
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
    repaired = complete_front_matter(text, provenance, read_front_matter(expected_text))
    note = (
        f"{CARD_NAME} front matter: {'; '.join(problems)}; uploading it with the metadata added (local file unchanged)"
    )
    return repaired.encode("utf-8"), "repaired", [note]


def prepare_dir(path: str | Path, *, no_cache: bool = False, reporter: Reporter | None = None) -> PreparedDir:
    """Validate an edited checkpoint directory for upload; refuse one modified after apply.

    Every weight file named in ``tnedit.json`` must exist with the recorded SHA-256, and no other
    ``.safetensors`` file (besides the revert file) may sit beside them. Digests come from the
    digest cache where its entries are trusted, unless ``no_cache``.
    """
    reporter = resolve_reporter(reporter)
    path, provenance = check_push_dir(path)
    files = [f for f in local_files(path) if f != CARD_NAME]
    missing = missing_weights(path, provenance)
    if missing:
        raise CheckpointError(missing)
    extra = [f for f in files if f.endswith(WEIGHT_SUFFIX) and f not in provenance.weights and f != REVERT_NAME]
    if extra:
        raise CheckpointError(
            f"{path}: weight file(s) not recorded in {PROVENANCE_NAME}: {', '.join(extra)}; refusing to upload "
            "weights that tnedit did not write"
        )
    notes: list[str] = []
    if REVERT_NAME not in files:
        notes.append(f"{REVERT_NAME} is missing: the pushed checkpoint cannot be reverted with `tnedit revert`")
    total = sum((path / f).stat().st_size for f in files)
    with reporter.progress(total, "checksum", unit="B") as bar:
        cache = open_digest_cache(not no_cache, warn=reporter.warn).outside(path)
        sha256 = dict(zip(files, cached_sha256_files([path / f for f in files], cache, bar.update), strict=True))
    problem = weights_problem(path, provenance, digests=sha256)
    if problem:
        raise CheckpointError(f"{problem}, refusing to upload")
    card, status, card_notes = prepare_card(path, provenance)
    return PreparedDir(path, provenance, sha256, card, status, notes + card_notes)


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
            error = getattr(__import__(module), "TransportError", None)
        except ImportError:
            continue
        if isinstance(error, type):
            types.append(error)
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


def _remote_sha256(sibling: Any) -> str | None:
    lfs = getattr(sibling, "lfs", None)
    return (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None


def _verify_file(sibling: Any, name: str, prepared: PreparedDir, expected: dict[str, str], at: str) -> str | None:
    """Raise HubError if ``name`` differs on the Hub; a note when the Hub gave no checksum for it."""
    weights = prepared.provenance.weights
    want = str(weights[name].sha256) if name in weights else expected[name]
    source = PROVENANCE_NAME if name in weights else "the local file"
    remote_sha = _remote_sha256(sibling)
    if remote_sha:
        if remote_sha != want:
            raise HubError(
                f"{at}: {name} has SHA-256 {remote_sha[:12]}… on the Hub but {want[:12]}… in "
                f"{source}; the upload is corrupt"
            )
        return None
    blob_id = getattr(sibling, "blob_id", None)
    if blob_id:
        data = prepared.card if name == CARD_NAME else (prepared.path / name).read_bytes()
        if git_blob_sha1(data) != blob_id:
            raise HubError(f"{at}: {name} differs on the Hub from {source} (git blob id mismatch)")
        return None
    if name in weights:
        raise HubError(f"cannot verify {at}: the Hub reported no checksum for {name}")
    return f"{name}: the Hub reported no checksum; not verified"


def verify_remote(info: Any, prepared: PreparedDir, repo: str, revision: str) -> list[str]:
    """Compare the repo's file list and checksums (``model_info(files_metadata=True)``) with the upload.

    Weight files are checked against ``tnedit.json``; LFS files by SHA-256, other files by git blob id.
    Raises HubError naming the first file that is missing or differs. Returns notes.
    """
    at = f"{repo}@{revision}"
    siblings = getattr(info, "siblings", None)
    if siblings is None:
        raise HubError(f"cannot verify {at}: the Hub returned no file list")
    remote = {s.rfilename: s for s in siblings}
    weights = prepared.provenance.weights
    notes: list[str] = []
    expected = {**prepared.sha256, CARD_NAME: sha256_bytes(prepared.card)}
    for name in sorted(expected, key=lambda n: (n not in weights, n)):
        sibling = remote.get(name)
        if sibling is None:
            raise HubError(f"{at}: {name} is missing after the upload")
        note = _verify_file(sibling, name, prepared, expected, at)
        if note:
            notes.append(note)
    stale = sorted(n for n in remote if n.endswith(WEIGHT_SUFFIX) and n not in expected)
    if stale:
        notes.append(f"the repo also holds weight files this checkpoint lacks (left in place): {', '.join(stale)}")
    return notes


# --- push ---------------------------------------------------------------------------------------


def default_message(provenance: Provenance) -> str:
    """The upload commit's message when none is given: the base model and the edit."""
    edit, source = provenance.edit, provenance.source
    base: Any = "model" if source.name_or_path is None else source.name_or_path
    base = Path(str(base)).name if source.is_hub is False else base
    if edit.op == "scale":
        what = f"scale {edit.n_neurons} neurons by {edit.factor:g}"
    else:
        what = f"zero {edit.n_neurons} neurons"
    return f"tnedit: {base} with {what}"


@contextmanager
def _hub_bars(reporter: Reporter) -> Iterator[None]:
    """huggingface_hub's own progress bars off for the block when ``reporter`` draws none (unless already off)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    silence = not reporter.shows_bars and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            enable_progress_bars()


def _require_token(api: Any, repo: str) -> None:
    if getattr(api, "token", None) is None:
        from huggingface_hub import get_token

        if get_token() is None:  # only asks whether one exists; the value is never kept
            raise HubError(f"no Hugging Face token for {repo}: {LOGIN_HINT}")


def plan_push(settings: PushSettings, api: Any, *, reporter: Reporter) -> tuple[Any, PushPlan]:
    """Every check that needs no upload, cheapest first, then the checksums: (the HfApi to use, the plan)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not str(settings.dir):
        raise InputError("push: no checkpoint directory given")
    try:
        validate_repo_id(settings.repo)
    except HFValidationError as exc:
        raise InputError(f"invalid repo id {settings.repo!r}: {_first_line(str(exc))}") from None
    check_push_dir(settings.dir)  # a bad DIR is reported before offline mode or a missing token
    if constants.is_offline_mode():
        raise HubError(f"cannot push {settings.repo}: offline mode is on (HF_HUB_OFFLINE); unset it to upload")
    api = api if api is not None else HfApi(endpoint=settings.endpoint or None)
    endpoint = str(getattr(api, "endpoint", None) or settings.endpoint or constants.ENDPOINT)
    _require_token(api, settings.repo)
    prepared = prepare_dir(settings.dir, no_cache=settings.no_cache, reporter=reporter)
    for note in prepared.notes:
        reporter.warn(note)
    revision = settings.revision or constants.DEFAULT_REVISION
    message = settings.commit_message or default_message(prepared.provenance)
    return api, PushPlan(settings.repo, revision, message, endpoint, prepared)


def push_checkpoint(settings: PushSettings, *, api: Any = None, reporter: Reporter | None = None) -> PushResult:
    """Upload ``settings.dir`` to ``settings.repo``: all files, then README.md last, then verify.

    ``api`` is an ``huggingface_hub.HfApi`` (default: one for ``settings.endpoint``, token resolved by
    huggingface_hub from HF_TOKEN or the login cache). Failures raise HubError / InputError with one line.
    """
    reporter = resolve_reporter(reporter)
    api, plan = plan_push(settings, api, reporter=reporter)
    with _hub_bars(reporter):
        try:
            return _push(api, settings, plan, reporter)
        except TneditError:
            raise
        except Exception as exc:  # map huggingface_hub / transport failures to one line
            mapped = hub_error(exc, plan.repo, plan.endpoint)
            if mapped is None:
                raise
            raise mapped from None


def _create_repo(api: Any, settings: PushSettings, plan: PushPlan, reporter: Reporter) -> tuple[str, str]:
    """Create the repo (and the branch) if missing; (its url, its repo id)."""
    from huggingface_hub import constants

    reporter.log(f"tnedit: creating {plan.repo} on {plan.endpoint} (if missing)")
    url = str(api.create_repo(plan.repo, private=settings.private or None, exist_ok=True, repo_type="model"))
    repo_id = getattr(url, "repo_id", None) or plan.repo
    if plan.revision != constants.DEFAULT_REVISION:
        reporter.log(f"tnedit: creating branch {plan.revision} (if missing)")
        api.create_branch(repo_id, branch=plan.revision, exist_ok=True, repo_type="model")
    return url, repo_id


def _upload_files(
    api: Any, settings: PushSettings, plan: PushPlan, repo_id: str, reporter: Reporter, notes: list[str]
) -> str | None:
    """Every file but README.md; the commit README.md is to follow (None when not known)."""
    n, folder = len(plan.prepared.sha256), str(plan.prepared.path)
    if settings.large and hasattr(api, "upload_large_folder"):
        reporter.log(f"tnedit: uploading {n} files with upload_large_folder (README.md follows)")
        api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=plan.revision,
                                 private=settings.private or None, ignore_patterns=[CARD_NAME])
        return None
    if settings.large:
        note = "this huggingface_hub has no upload_large_folder; upload_folder uploads large folders in batches"
        notes.append(note)
        reporter.warn(note)
    reporter.log(f"tnedit: uploading {n} files (README.md follows in its own commit)")
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=plan.revision,
                             commit_message=plan.message, ignore_patterns=[CARD_NAME])
    return getattr(info, "oid", None)


def _push(api: Any, settings: PushSettings, plan: PushPlan, reporter: Reporter) -> PushResult:
    from huggingface_hub import constants

    notes = list(plan.prepared.notes)
    url, repo_id = _create_repo(api, settings, plan, reporter)
    parent = _upload_files(api, settings, plan, repo_id, reporter, notes)
    commits = [parent] if parent else []
    reporter.log(f"tnedit: uploading {CARD_NAME}")
    card_info = api.upload_file(path_or_fileobj=plan.prepared.card, path_in_repo=CARD_NAME, repo_id=repo_id,
                                repo_type="model", revision=plan.revision,
                                commit_message=f"{plan.message} (model card)", parent_commit=parent)
    commit = getattr(card_info, "oid", None)
    if commit:
        commits.append(commit)
    reporter.log(f"tnedit: verifying checksums on {repo_id}@{(commit or plan.revision)[:12]}")
    remote = api.model_info(repo_id, revision=commit or plan.revision, files_metadata=True)
    commit = commit or getattr(remote, "sha", None)
    for note in verify_remote(remote, plan.prepared, repo_id, plan.revision):
        notes.append(note)
        reporter.warn(note)
    if plan.revision != constants.DEFAULT_REVISION:
        url = f"{url.rstrip('/')}/tree/{plan.revision}"
    return PushResult(repo=repo_id, url=url, revision=plan.revision, commit=commit, files=plan.prepared.files,
                      verified=True, card=plan.prepared.card_status, commits=commits, notes=notes)


__all__ = [
    "PushPlan", "PushResult", "PushSettings", "default_message", "git_blob_sha1", "hub_error",
    "plan_push", "prepare_card", "prepare_dir", "push_checkpoint", "verify_remote",
]
