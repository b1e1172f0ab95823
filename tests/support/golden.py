"""Run tnedit of a pinned baseline commit and of the working tree side by side, and compare what they write.

The harness behind ``tests/integration/test_golden.py``. The baseline is ``tests/support/golden_baseline.txt``
(one line, a 40-hex commit); :func:`materialise_baseline` extracts its ``tnedit/`` with ``git archive``
(read-only git commands only). Both sides run the same way: one subprocess per side, the same interpreter and
environment, the side's package first on ``sys.path``, every step a call of ``tnedit.cli.main(args)`` in a
work directory of its own (identical relative layout, so relative paths in messages and files agree), with
stdout and stderr captured at the file-descriptor level, as a shell would see them. The two sides run in
parallel.

One process per side instead of one per step: a fresh interpreter costs ~4 s (torch, transformers), and
the golden file runs ~80 steps; both sides see the same sequence, so nothing that carries over from one
step to the next can make them differ.

``TNEDIT_GOLDEN_CURRENT=/some/dir`` runs the "current" side from ``/some/dir/tnedit`` instead of the working
tree: only to prove that the checks fail on a deliberately altered copy.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

BASELINE_FILE = Path(__file__).with_name("golden_baseline.txt")
CURRENT_ENV = "TNEDIT_GOLDEN_CURRENT"
PLACEHOLDER_ROOT = "<ROOT>"
PLACEHOLDER_PACKAGE = "<TNEDIT>"

# Same for both sides: offline, quiet, one thread (tiny models gain nothing from more, and OpenMP spinning on
# a busy machine is slow), a fixed hash seed (a set printed in a message keeps its order).
_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}

# The program each side runs: argv = package root, plan file (JSON list of steps), results file.
_DRIVER = r"""
import json, os, sys, tempfile, traceback
package_root, plan_file, results_file = sys.argv[1:4]
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.path.insert(0, package_root)
sys.modules["lingua"] = None  # both sides identify output languages as the baseline did, by the heuristic
import tnedit
where = os.path.realpath(tnedit.__file__)
if not where.startswith(os.path.realpath(package_root) + os.sep):
    sys.exit(f"golden driver: tnedit was imported from {where}, not from {package_root}")
import torch
torch.set_num_threads(1)
from tnedit.cli import main

def call(args):
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        traceback.print_exc()
        return "uncaught " + type(exc).__name__
    return 0

def captured(args):
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = call(args)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        out.seek(0); err.seek(0)
        return code, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")

home = os.getcwd()
results = {}
for step in json.load(open(plan_file, encoding="utf-8")):
    os.chdir(home)
    code, stdout, stderr = captured(step["args"])
    results[step["name"]] = {"code": code, "stdout": stdout, "stderr": stderr}
os.chdir(home)
with open(results_file, "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


# --- the two packages ------------------------------------------------------------------------------


def baseline_commit() -> str:
    """The pinned commit; a malformed pin is an error of the test suite, not a reason to skip."""
    text = BASELINE_FILE.read_text(encoding="utf-8").strip()
    if not re.fullmatch(r"[0-9a-f]{40}", text):
        raise ValueError(f"{BASELINE_FILE}: expected one line holding a 40-hex commit, got {text[:60]!r}")
    return text


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)


def materialise_baseline(dest: Path) -> Path:
    """Extract the baseline's ``tnedit/`` under ``dest`` (returned: the directory to put on sys.path).

    Skips when the tree is not a git checkout or the commit is absent (a shallow clone, say)."""
    commit = baseline_commit()
    try:
        inside = _git("rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        pytest.skip("golden checks need git, which is not installed")
    if inside.returncode != 0 or inside.stdout.strip() != b"true":
        pytest.skip(f"golden checks need a git checkout: {REPO} is not one")
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        pytest.skip(f"golden baseline {commit[:12]} is not in this clone (shallow?): fetch it or re-pin "
                    f"{BASELINE_FILE.name}")
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "tnedit"], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise RuntimeError(f"git archive {commit} tnedit | tar -x failed: {untar.stderr.decode(errors='replace')}")
    return dest


def current_package_root() -> Path:
    """The working tree, or the directory named by $TNEDIT_GOLDEN_CURRENT (the failure proof only)."""
    override = os.environ.get(CURRENT_ENV)
    root = Path(override).resolve() if override else REPO
    if not any((root / "tnedit" / name).is_file() for name in ("cli.py", "cli/__init__.py")):
        raise FileNotFoundError(f"{root}/tnedit/cli not found (from ${CURRENT_ENV}={override!r})")
    return root


# --- running both sides ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    code: int | str
    stdout: str
    stderr: str


@dataclass
class Side:
    """One side: ``package`` goes on sys.path; every step runs with ``root`` as its working directory."""

    name: str
    package: Path
    root: Path
    results: dict[str, Outcome] = field(default_factory=dict)

    def normalised(self, text: str) -> str:
        """``text`` with this side's roots replaced by placeholders, so both sides' messages compare."""
        pairs = {str(self.root.resolve()): PLACEHOLDER_ROOT, str(self.root): PLACEHOLDER_ROOT,
                 str(self.package.resolve()): PLACEHOLDER_PACKAGE, str(self.package): PLACEHOLDER_PACKAGE}
        for old in sorted(pairs, key=len, reverse=True):
            text = text.replace(old, pairs[old])
        return text

    def outcome(self, step: str) -> Outcome:
        return self.results[step]


def _environment() -> dict[str, str]:
    # TNEDIT_DEBUG would turn one-line errors into tracebacks; PYTHON* could change what gets imported.
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TNEDIT_", "PYTHON"))}
    return {**keep, **_ENVIRONMENT}


def _start(side: Side, steps: Sequence[Step]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    plan = side.root.parent / f"{side.root.name}.plan.json"
    results = side.root.parent / f"{side.root.name}.results.json"
    plan.write_text(json.dumps([{"name": s.name, "args": list(s.args)} for s in steps]), encoding="utf-8")
    results.unlink(missing_ok=True)
    command = [sys.executable, "-c", _DRIVER, str(side.package), str(plan), str(results)]
    process = subprocess.Popen(command, cwd=side.root, env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    return process, plan, results


def run_sides(sides: Sequence[Side], steps: Sequence[Step], timeout: float) -> None:
    """Run ``steps`` on every side (in parallel, one subprocess each) and fill each side's ``results``."""
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError("golden step names must be unique")
    started = [(side, *_start(side, steps)) for side in sides]
    for side, process, _plan, results in started:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for _, other, _, _ in started:
                other.kill()
            raise
        if process.returncode != 0 or not results.is_file():
            tail = output.decode("utf-8", "replace")[-4000:]
            raise RuntimeError(f"the {side.name} side's driver failed (exit {process.returncode}):\n{tail}")
        raw = json.loads(results.read_text(encoding="utf-8"))
        side.results = {name: Outcome(**raw[name]) for name in names}


# --- comparing what they wrote ---------------------------------------------------------------------


def numbers_equal(a: float, b: float, rel: float, abs_: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def json_differences(a: Any, b: Any, *, ignore: Iterable[str] = (), rel: float = 0.0, abs_: float = 0.0,
                     where: str = "$") -> list[str]:
    """Every place where ``a`` and ``b`` differ, key by key (a key only one side has is a difference).

    Integers and strings must be equal; floats within ``rel``/``abs_``; keys named in ``ignore`` (at any
    depth) are skipped."""
    ignored = frozenset(ignore)
    found: list[str] = []
    _collect(a, b, ignored, rel, abs_, where, found)
    return found


def _collect(a: Any, b: Any, ignored: frozenset[str], rel: float, abs_: float, where: str, found: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key in ignored:
                continue
            if key not in a or key not in b:
                found.append(f"{where}.{key}: only in the {'current' if key in b else 'baseline'} side")
                continue
            _collect(a[key], b[key], ignored, rel, abs_, f"{where}.{key}", found)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            found.append(f"{where}: {len(a)} items in the baseline, {len(b)} in the current side")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _collect(x, y, ignored, rel, abs_, f"{where}[{i}]", found)
    elif isinstance(a, float) and isinstance(b, float):  # an int that became a float is a difference
        if not numbers_equal(a, b, rel, abs_):
            found.append(f"{where}: baseline {a!r}, current {b!r}")
    elif type(a) is not type(b) or a != b:
        found.append(f"{where}: baseline {a!r}, current {b!r}")


def file_listing(root: Path) -> list[str]:
    """Every file under ``root`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def byte_differences(a: Path, b: Path, names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose bytes differ between directories ``a`` and ``b``."""
    return [name for name in names if not _same_bytes(a / name, b / name)]


def _same_bytes(x: Path, y: Path, chunk: int = 1 << 24) -> bool:
    if x.stat().st_size != y.stat().st_size:
        return False
    with open(x, "rb") as fx, open(y, "rb") as fy:
        while True:
            block = fx.read(chunk)
            if block != fy.read(chunk):
                return False
            if not block:
                return True


def lines_without(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [line for line in text.splitlines() if not pattern.search(line)]


def tnedit_lines(text: str) -> list[str]:
    """tnedit's own stderr lines (warnings, errors); library chatter of a successful step is not compared."""
    return [line for line in text.splitlines() if line.startswith("tnedit:")]


# --- changes made on purpose since the baseline -----------------------------------------------------------
# Each rewrites the *current* text back to what the baseline wrote, so everything else must still match
# byte for byte; each says which release added it and why.

HEADLINE_ADDED_COLUMN = "margin"  # 0.3: parallel minus shuffled cosine, next to the floor
SELECTIVITY_LINE = re.compile(r"^- selectivity \(")  # 0.3: the target against the worst kept language
MARGIN_NOTE = ("margin = parallel minus floor, the alignment specific to translations (a drop shared by all "
               "sentences leaves it unchanged); ")


def _drop_cell(line: str, index: int) -> str:
    cells = line.split(" | ") if not line.startswith("|---") and not line.startswith("|:") else None
    if cells is None:  # the alignment row: |:---|---:|...
        parts = line.strip("|").split("|")
        return "|" + "|".join(parts[:index] + parts[index + 1:]) + "|"
    return " | ".join(cells[:index] + cells[index + 1:])


def without_intended_additions(text: str) -> str:
    """``text`` (report.md or a card) without 0.3's additions: the headline's margin column, its note, the
    selectivity lines (and the blank line closing them)."""
    out: list[str] = []
    column: int | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if SELECTIVITY_LINE.match(line):
            continue
        if line == "" and i > 0 and SELECTIVITY_LINE.match(lines[i - 1]):
            continue
        if line.startswith("| condition |") and f" {HEADLINE_ADDED_COLUMN} " in line:
            column = line.split(" | ").index(HEADLINE_ADDED_COLUMN)
        elif not line.startswith("|"):
            column = None
        out.append(_drop_cell(line, column) if column is not None else line.replace(MARGIN_NOTE, ""))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")
