"""Lazy public names for a package (PEP 562), so importing a package's light modules stays light.

``tnedit.identify``, ``tnedit.edit``, ``tnedit.evaluate`` and ``tnedit.recipes`` export their curated API
this way: ``import tnedit.identify.settings`` (what ``tnedit --help`` needs) must not pull torch in
through the package ``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps a name to its submodule.

    A submodule is named relative to the package (``"pipeline"``) or absolutely (``"tnedit.formats.report"``).
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module protocol's name
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if module.startswith("tnedit.") else f"{package}.{module}"),
                        name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
