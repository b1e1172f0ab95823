"""edit.workers: stopping the writer pool waits for every worker, however often Ctrl-C is pressed."""

from __future__ import annotations

import os
import signal
import time


def test_a_second_signal_does_not_cut_the_wait_for_workers_short():
    """The temporary directory may go only once no worker writes into it, however often Ctrl-C is pressed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tnedit.edit.workers import stop_workers

    finished = threading.Event()

    def stubborn_worker() -> None:  # one long block: it sees the cancel flag only after it
        time.sleep(0.6)
        finished.set()

    pool = ThreadPoolExecutor(1)
    futures = [pool.submit(stubborn_worker), pool.submit(stubborn_worker)]
    interrupter = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    interrupter.start()
    stop_workers(pool, futures, threading.Event())
    interrupter.join()
    assert finished.is_set() and futures[0].done() and futures[1].cancelled()
