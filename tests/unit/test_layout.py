"""The package's shape: layers import only downward, no cycle, small modules and functions, torch-free floors."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from tests.support import layout

MODULES = layout.read_package()


def test_every_module_belongs_to_a_layer():
    for name in MODULES:
        layout.layer_of(name)  # raises KeyError naming the module


def test_layers_import_only_downward():
    assert layout.layering_violations(MODULES) == []


def test_no_import_cycle_counting_function_level_and_type_checking_imports():
    assert layout.import_cycles(MODULES) == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The two checks above can fail: a deliberately wrong package trips both."""
    package = tmp_path / "tnedit"
    (package / "edit").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("from tnedit.edit.spec import x\n")
    (package / "edit" / "__init__.py").write_text("")
    (package / "edit" / "spec.py").write_text("def f():\n    from tnedit import errors\n")
    modules = layout.read_package(package)
    assert layout.import_cycles(modules) == [["tnedit.edit.spec", "tnedit.errors"]]
    assert layout.layering_violations(modules) == ["tnedit.errors → tnedit.edit.spec: upward import"]


def test_modules_are_small():
    sizes = {name: m.lines for name, m in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > layout.MAX_MODULE_LINES} == {}
    assert statistics.median(s for s in sizes.values() if s) < layout.MAX_MEDIAN_LINES


def test_no_function_is_longer_than_sixty_lines():
    long = {f"{m.name}.{fn}": n for m in MODULES.values() for fn, n in m.long_functions}
    assert long == {}


TORCH_FREE = [
    "tnedit.errors", "tnedit.reporting", "tnedit.settings", "tnedit.formats.neurons", "tnedit.formats.card",
    "tnedit.formats.outputs", "tnedit.formats.digest", "tnedit.formats.scores", "tnedit.formats.provenance",
    "tnedit.formats.report", "tnedit.architectures", "tnedit.checkpoint", "tnedit.corpus", "tnedit.qa",
    "tnedit.hub", "tnedit.cli", "tnedit.cli.options",
]


@pytest.mark.parametrize("floor", ["formats and below", "checkpoint, corpus, qa, hub, cli"])
def test_torch_free_modules_import_without_torch(floor):
    wanted = [m for m in TORCH_FREE if (m.startswith(("tnedit.formats", "tnedit.errors", "tnedit.reporting",
                                                       "tnedit.settings")) == (floor == "formats and below"))]
    code = (
        "import importlib, sys\n"
        f"for name in {wanted!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", ["tnedit", "tnedit.identify", "tnedit.edit", "tnedit.evaluate", "tnedit.recipes"])
def test_every_lazily_exported_name_resolves(package):
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
