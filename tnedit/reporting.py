"""The one convention for progress bars, log lines and warnings: a :class:`Reporter` passed to every pipeline.

Library functions take ``reporter: Reporter | None = None`` (keyword-only); None means :func:`default_reporter`
(tqdm bars on stderr, warnings through :mod:`warnings` as :class:`~tnedit.errors.TneditWarning`). The CLI passes
a reporter that prints ``tnedit: warning:`` lines, and ``--quiet`` one without bars. Torch-free.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tnedit.errors import TneditWarning

BAR_OPTIONS: dict[str, Any] = {"mininterval": 0.1}  # tqdm's default redraw interval; tests draw every update


class ProgressBar:
    """What a pipeline may do with a bar: advance it (from any thread) and close it."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar(ProgressBar):
    """A tqdm bar whose final line is drawn once and which may be advanced from several threads.

    tqdm draws the bar on an update that reaches the total and again on close() (with the overall
    rate), so logs showed 100 % twice: the last update only counts, and close() draws the line.
    """

    def __init__(self, bar: Any, total: int):
        self._bar = bar
        self._total = total
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            if self._total and self._bar.n + n >= self._total:
                self._bar.n = self._total
            else:
                self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def clear_on_close(self) -> None:
        self._bar.leave = False


class Reporter:
    """Progress bars, log lines and warnings of one run. This base shows nothing and warns through :mod:`warnings`."""

    shows_bars = False  # whether bar() draws anything: libraries with their own bars follow it

    def bar(self, total: int, desc: str, unit: str = "batch", initial: int = 0) -> ProgressBar:
        return ProgressBar()

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        warnings.warn(message, TneditWarning, stacklevel=3)

    @contextmanager
    def progress(self, total: int, desc: str, unit: str = "batch", initial: int = 0) -> Iterator[ProgressBar]:
        """A bar for the duration of a ``with`` block; on failure it is cleared, so the error is the only line left."""
        bar = self.bar(total, desc, unit, initial)
        try:
            yield bar
        except BaseException:
            if isinstance(bar, _TqdmBar):
                bar.clear_on_close()
            raise
        finally:
            bar.close()


class NullReporter(Reporter):
    """No bars and no log lines; warnings still reach :mod:`warnings`."""


class SilentReporter(NullReporter):
    """Nothing at all: the reporter of every rank but rank 0 in a data-parallel run (rank 0 tells the user)."""

    def warn(self, message: str) -> None:
        pass


class TqdmReporter(Reporter):
    """tqdm bars and log lines on stderr; warnings through :mod:`warnings`."""

    shows_bars = True

    def bar(self, total: int, desc: str, unit: str = "batch", initial: int = 0) -> ProgressBar:
        from tqdm.auto import tqdm

        if unit == "B":
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, **BAR_OPTIONS)
        else:
            bar = tqdm(total=total, desc=desc, initial=initial, unit=unit, leave=False, dynamic_ncols=True)
        return _TqdmBar(bar, total if unit == "B" else 0)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr)


def default_reporter() -> Reporter:
    """What a library call without ``reporter=`` uses."""
    return TqdmReporter()


def resolve_reporter(reporter: Reporter | None) -> Reporter:
    return default_reporter() if reporter is None else reporter
