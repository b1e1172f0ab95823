"""The bad-input harness: run a CLI case and check the promises every failure must keep.

``expect_clean_failure(case, args, watch=[...], inputs=[...])`` runs ``tnedit ARGS`` in-process and
asserts: exit code 2 (or ``code``), exactly one line on stderr starting ``tnedit: error:`` (or
``tnedit: interrupted`` for signals), no traceback, no file added, removed or changed anywhere
under ``watch`` (which should cover every input and every output location), and every input
byte-identical. Each run is recorded in ``MATRIX``; the session summary prints the matrix table
(cases, clean errors, tracebacks, partial outputs, inputs modified).

``snapshot`` and ``compare_snapshots`` serve the subprocess cases (signals, SIGBUS, kill -9) too.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Outcome:
    case: str
    verb: str
    exit_code: int
    stderr: str
    traceback: bool
    one_line: bool
    new_or_changed: list[str] = field(default_factory=list)
    inputs_modified: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.one_line and not self.traceback and not self.new_or_changed and not self.inputs_modified


MATRIX: list[Outcome] = []


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_dir():
        return "dir"
    if not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO or device: opening it could block
        return f"special:{stat.S_IFMT(os.lstat(path).st_mode)}"
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def snapshot(roots: Iterable[Path]) -> dict[str, str]:
    """Every path under each root (hidden temporaries included) with its SHA-256, 'dir' or link target."""
    state: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            state[str(root)] = "absent"
            continue
        state[str(root)] = _digest(root)
        if root.is_dir() and not root.is_symlink():
            for path in sorted(root.rglob("*")):
                state[str(path)] = _digest(path)
    return state


def compare_snapshots(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The paths added, removed or changed between two snapshots."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def run_cli(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``tnedit ARGS`` in this process; (exit code, stdout, stderr)."""
    from tnedit.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def expect_clean_failure(
    case: str,
    args: Sequence[str],
    capsys: pytest.CaptureFixture[str],
    *,
    watch: Iterable[Path],
    inputs: Iterable[Path] = (),
    needles: Sequence[str] = (),
    code: int = 2,
    verb: str | None = None,
) -> Outcome:
    """Run one bad-input case, record it in MATRIX, and assert every promise (see the module doc)."""
    watch, inputs = list(watch), list(inputs)
    before, inputs_before = snapshot(watch), snapshot(inputs)
    exit_code, _, err = run_cli(args, capsys)
    after, inputs_after = snapshot(watch), snapshot(inputs)
    lines = [line for line in err.splitlines() if line.strip()]
    prefix = "tnedit: interrupted" if code == 130 else "tnedit: error:"
    outcome = Outcome(
        case=case,
        verb=verb or (args[0] if args else ""),
        exit_code=exit_code,
        stderr=err,
        traceback="Traceback (most recent call last)" in err,
        one_line=len(lines) == 1 and lines[0].startswith(prefix),
        new_or_changed=compare_snapshots(before, after),
        inputs_modified=compare_snapshots(inputs_before, inputs_after),
    )
    MATRIX.append(outcome)
    assert exit_code == code, f"{case}: exit {exit_code}, expected {code}; stderr: {err}"
    assert outcome.one_line, f"{case}: expected one '{prefix}' line on stderr, got: {err!r}"
    assert not outcome.traceback, f"{case}: traceback on stderr: {err}"
    assert not outcome.new_or_changed, f"{case}: files added, removed or changed: {outcome.new_or_changed}"
    assert not outcome.inputs_modified, f"{case}: inputs modified: {outcome.inputs_modified}"
    for needle in needles:
        assert needle in err, f"{case}: {needle!r} not in {err!r}"
    return outcome


def matrix_table(outcomes: Sequence[Outcome]) -> str:
    """The summary the hardening note quotes: one row per verb and a total."""
    verbs = sorted({o.verb for o in outcomes})
    header = "| verb | cases | clean errors | tracebacks | partial outputs | inputs modified |"
    rows = [header, "|:---|---:|---:|---:|---:|---:|"]

    def row(name: str, group: list[Outcome]) -> str:
        return (
            f"| {name} | {len(group)} | {sum(o.clean for o in group)} | {sum(o.traceback for o in group)} | "
            f"{sum(bool(o.new_or_changed) for o in group)} | {sum(bool(o.inputs_modified) for o in group)} |"
        )

    rows += [row(v, [o for o in outcomes if o.verb == v]) for v in verbs]
    rows.append(row("**all**", list(outcomes)))
    return "\n".join(rows)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def mounted(*args: str, target: Path) -> Iterator[Path]:
    """``mount ARGS TARGET`` for the block, always unmounted; skips the test where mounting is refused."""
    if not _mount(*args, str(target)):
        pytest.skip(f"cannot mount {' '.join(args)} here")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` made read-only in place by a bind mount (root ignores permission bits)."""
    with mounted("--bind", str(path), target=path):
        if not _mount("-o", "remount,ro,bind", str(path)):
            pytest.skip("cannot remount read-only here")
        yield path
