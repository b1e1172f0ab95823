"""What apply and revert share: the weight-file workers, the side-file copy and new files in a directory being built.

On the first failure, Ctrl-C or SIGTERM/SIGHUP, every worker is told to stop at its next block and
waited for before the exception leaves: only then may the caller remove the temporary directory they
write into.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tnedit.checkpoint import Checkpoint, available_cores, copy_bytes, create_new, writing
from tnedit.formats.provenance import CARD_NAME, PROVENANCE_NAME, REVERT_NAME
from tnedit.reporting import Reporter


def file_size(ckpt: Checkpoint, f: str) -> int:
    identity = ckpt.headers[f].identity
    return identity[2] if identity is not None else (ckpt.path / f).stat().st_size


def file_workers(n_files: int) -> int:
    """One file per core plus one: shards differ in size, and a spare file keeps every core hashing."""
    return max(1, min(n_files, available_cores() + 1))


def in_parallel(
    work: Callable[[str], tuple[str, Any]],
    sizes: dict[str, int],
    desc: str,
    reporter: Reporter,
    cancel: threading.Event,
) -> dict[str, Any]:
    """Run ``work`` on every file, largest first, one per core plus one, with a byte progress bar."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    order = sorted(sizes, key=lambda f: -sizes[f])  # largest first balances the workers
    results: dict[str, Any] = {}
    with reporter.progress(sum(sizes.values()), desc, unit="B") as bar:
        pool = ThreadPoolExecutor(max_workers=file_workers(len(order)))
        futures: list[Any] = []
        try:  # submitting is inside: a signal may arrive once the first worker already writes
            for f in order:
                futures.append(pool.submit(work, f))
            for future in as_completed(futures):
                key, value = future.result()
                results[key] = value
                bar.update(sizes[key])
        except BaseException:
            stop_workers(pool, futures, cancel)
            raise
        pool.shutdown(wait=True)
    return results


def stop_workers(pool: Any, futures: Sequence[Any], cancel: threading.Event) -> None:
    """Cancel queued files, make running ones stop at their next block, and wait until none runs.

    A second signal must not cut the wait short, or the temporary directory would be removed while
    a worker still writes into it. The wait is on the futures, not on the threads: Python 3.11's
    Thread.join() takes an interrupted join for a finished thread, so it cannot be retried.
    """
    from concurrent.futures import wait

    cancel.set()
    pool.shutdown(wait=False, cancel_futures=True)
    running = [f for f in futures if not f.cancelled()]  # a cancelled future is never "done" for wait()
    while True:
        try:
            wait(running)
            return
        except KeyboardInterrupt:
            continue


def copy_side_files(src_dir: Path, out_dir: Path, ckpt: Checkpoint) -> None:
    """Every non-weight file byte for byte, except the card, provenance and revert file tnedit writes itself.

    Unhashed: no digest of a side file is recorded (a tokenizer.json can be tens of MB).
    """
    for rel in ckpt.side_files():
        if str(rel) in (CARD_NAME, PROVENANCE_NAME, REVERT_NAME):
            continue
        copy_bytes(src_dir / rel, out_dir / rel)


def write_new_text(path: Path, text: str) -> None:
    """A new file in a directory tnedit is building: never an existing file or a planted symlink."""
    with writing(path), create_new(path) as fh:
        fh.write(text.encode("utf-8"))
