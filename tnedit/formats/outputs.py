"""Where tnedit may write, and how: containment, protected inputs, atomic files and directories.

Every writer goes through this module, so the guarantees hold in one place:

- a name read from a file (an index's shard names, a recipe's edit names) stays inside its root;
- an output never is, contains or lies inside an input (the source model, a neuron set, scores, a
  checkpoint under evaluation), so ``--overwrite`` can never delete what the command reads;
- output appears only complete: it is written to a temporary sibling and renamed into place;
  temporaries of processes that died (SIGKILL, power loss) are removed by the next run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tnedit.errors import InputError

# Outputs this process renamed into place, newest last: an interrupted command names what it kept.
COMPLETED: list[Path] = []

_TEMP_SUFFIX = re.compile(r"^\.(?P<name>.+)\.tnedit-(?:tmp|old)-(?P<pid>\d+)$")


def contained_name(root: Path, name: Any, where: str) -> Path:
    """``root / name`` for a relative name that cannot leave ``root``; InputError otherwise.

    Names come from files a user may have been handed (an index's ``weight_map``, a recipe), so
    absolute paths, drive letters, ``..`` and backslashes are refused before any path is built.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InputError(f"{where}: expected a relative file name, got {name!r}")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise InputError(f"{where}: '{name}' is an absolute path; expected a name inside {root}")
    if "\\" in name:
        raise InputError(f"{where}: '{name}' contains a backslash; expected a plain name inside {root}")
    if ".." in posix.parts or name.endswith("/"):
        raise InputError(f"{where}: '{name}' leaves {root} or is not a plain file name")
    return root / posix


def _resolved(path: Path | str) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def is_within(path: Path | str, root: Path | str) -> bool:
    """Whether ``path`` is ``root`` or lies under it, symlinks resolved."""
    path_r, root_r = _resolved(path), _resolved(root)
    return path_r == root_r or root_r in path_r.parents


def _overlaps(a: Path, b: Path) -> bool:
    return is_within(a, b) or is_within(b, a)


def check_output_dir(
    out: Path | str,
    source: Path | str | None = None,
    overwrite: bool = False,
    inputs: Iterable[Path | str] = (),
) -> None:
    """Refuse an output directory that would destroy or live inside something the command reads.

    ``source`` (a model directory) must neither be, contain nor lie inside ``out``; each of
    ``inputs`` (files or directories) must not lie inside ``out``, which ``--overwrite`` would
    delete. The working directory and its ancestors are never replaced.
    """
    out = Path(out)
    out_r = _resolved(out)
    if source is not None and _overlaps(out_r, _resolved(source)):
        raise InputError(f"{out}: the output must not be the source directory {source}, inside it, or contain it")
    for item in inputs:
        if is_within(item, out_r):
            raise InputError(f"{out}: holds the input {item}; choose an output directory that holds no input")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists() and out_r in (_resolved(Path.cwd()), *_resolved(Path.cwd()).parents):
        raise InputError(f"{out}: is the working directory or one of its parents; --overwrite would delete it")


def check_output_file(path: Path | str, overwrite: bool = False, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse an output file that exists (unless ``overwrite``), is a directory, or is an input."""
    path = Path(path)
    path_r = _resolved(path)
    for item in inputs:
        if _resolved(item) == path_r:
            raise InputError(f"{path}: is an input of this command; choose another output file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass --overwrite to replace it)")


def require_writable(path: Path | str, where: str = "-o", *, file: bool = False) -> None:
    """Refuse, before any work, an output whose nearest existing ancestor is a file, read-only or not ours.

    ``file``: ``path`` names a file (which may exist), so the search starts at its directory.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    existing = path.parent if file else path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{where} {path}: cannot be created, {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        raise InputError(f"{where} {path}: cannot write in {existing} "
                         f"({'read-only file system' if read_only else 'permission denied'})")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError as exc:  # pragma: no cover - platform oddities: keep the directory
        return exc.errno != errno.ESRCH
    return True


def remove_stale_temporaries(parent: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries that dead tnedit processes left in ``parent`` (for ``name`` only, if given)."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_SUFFIX.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if _pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _temporary(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.tnedit-{kind}-{os.getpid()}"


def _absolute(path: Path | str) -> Path:
    """An absolute path without resolving the last component, so ``-o .`` gets a real name."""
    return Path(os.path.abspath(Path(path).expanduser()))


@contextmanager
def atomic_directory(out: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``out`` only when the block completes.

    On any exception, KeyboardInterrupt and the CLI's signal exits included, the temporary
    directory is removed and ``out`` is left as it was.
    """
    out = _absolute(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, out.name)
    tmp = _temporary(out, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise InputError(f"{out}: appeared while writing (pass --overwrite to replace it)")
            trash = _temporary(out, "old")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
        COMPLETED.append(out)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(path: Path) -> None:
    """rmtree that a second Ctrl-C or SIGTERM cannot cut short: the cleanup is retried until done."""
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)
            return
        except KeyboardInterrupt:
            continue


@contextmanager
def atomic_file(path: Path | str, record: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling file; rename it to ``path`` only when the block completes.

    ``record``: list it in COMPLETED (off for the parts of a larger state that is listed as a whole).
    """
    path = _absolute(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = _temporary(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
        if record:
            COMPLETED.append(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` atomically: a reader never sees half a file, a failure leaves the old one."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
