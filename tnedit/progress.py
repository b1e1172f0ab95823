"""Byte progress bars shared by apply, revert and push: one final line, cleared on failure."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

BAR_OPTIONS: dict[str, Any] = {"mininterval": 0.1}  # tqdm's default redraw interval; tests draw every update


@contextmanager
def byte_bar(total: int, desc: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A byte progress bar that prints its final line once; the callback may be called from any thread.

    tqdm draws the bar on an update that reaches the total and again on close() (with the overall
    rate), so logs showed 100 % twice: the last update only counts, and close() draws the line. On
    failure the bar is cleared, so the error is the only line left.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled, **BAR_OPTIONS)
    lock = threading.Lock()
    with bar:

        def advance(n: int) -> None:
            with lock:
                if bar.n + n >= total:
                    bar.n = total
                else:
                    bar.update(n)

        try:
            yield advance
        except BaseException:
            bar.leave = False
            raise
