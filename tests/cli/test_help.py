"""tnedit --help, and every verb's --help, answer without importing torch (a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "verb", [None, "identify", "select", "compare", "apply", "revert", "inspect", "evaluate", "push", "run"]
)
def test_help_does_not_import_torch(verb):
    args = ["--help"] if verb is None else [verb, "--help"]
    code = (
        "import sys\n"
        "from tnedit.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = ('torch', 'transformers', 'numpy', 'safetensors', 'huggingface_hub')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("module", ["tnedit", "tnedit.cli"])
def test_python_dash_m_runs_the_same_command(module):
    """``python -m tnedit`` and ``python -m tnedit.cli`` (the benchmarks use the latter) are the tnedit command."""
    result = subprocess.run([sys.executable, "-m", module, "apply", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: tnedit apply")
