"""Test-wide settings: offline, quiet, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

try:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
except ImportError:  # pragma: no cover
    pass


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """Print the bad-input matrix (tests/support/hostile.py) when any case ran."""
    try:
        from tests.support.hostile import MATRIX, matrix_table
    except ImportError:  # pragma: no cover
        return
    if MATRIX:
        terminalreporter.write_sep("-", f"bad-input matrix: {len(MATRIX)} cases")
        terminalreporter.write_line(matrix_table(MATRIX))


@pytest.fixture(scope="session", autouse=True)
def _digest_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Every test's digest cache (tnedit.checkpoint.digests) is a per-session temporary directory, never the
    user's home; set in os.environ, so the CLI subprocesses of the signal tests inherit it."""
    before = os.environ.get("TNEDIT_CACHE_DIR")
    os.environ["TNEDIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("tnedit-cache"))
    yield
    if before is None:
        os.environ.pop("TNEDIT_CACHE_DIR", None)
    else:
        os.environ["TNEDIT_CACHE_DIR"] = before


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spinning
    makes them 50x slower; the setting is restored for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty read-only directory (a bind mount); skipped where mounting is not allowed."""
    from tests.support.hostile import read_only

    target = tmp_path / "ro"
    target.mkdir()
    with read_only(target):
        yield target


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, to fill a disk; skipped where mounting is not allowed."""
    from tests.support.hostile import mounted

    target = tmp_path / "disk"
    target.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=target):
        yield target
