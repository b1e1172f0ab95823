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
