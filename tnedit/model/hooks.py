"""One hook lifecycle: a :class:`HookSet` installs forward (pre-)hooks and removes every one on exit.

Capture, the runtime edit, the LAPE counter and evaluate's LM-head trimming all compose it, so no
caller keeps its own handle list (TransformerLens's ``hooks()`` context manager, without its framework).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HookSet:
    """Hooks on torch modules, removed together when the ``with`` block ends (also on error)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add_pre(self, module: Any, hook: Callable[..., Any], with_kwargs: bool = False) -> None:
        """``hook(module, args)`` (or ``(module, args, kwargs)``) before ``module`` runs."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def add_post(self, module: Any, hook: Callable[..., Any]) -> None:
        """``hook(module, args, output)`` after ``module`` runs; a non-None return replaces the output."""
        self._handles.append(module.register_forward_hook(hook))

    def add_callback(self, remove: Callable[[], Any]) -> None:
        """Something else to undo with the hooks (tnedit's experts listeners and edits)."""
        self._handles.append(_Undo(remove))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _Undo:
    def __init__(self, remove: Callable[[], Any]):
        self.remove = remove
