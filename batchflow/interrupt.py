"""Stopping a run on SIGINT or SIGTERM without losing or paying for anything twice.

The first signal sets a flag every stage checks: nothing new is started or submitted, jobs that ended
are landed, jobs still running stay recorded in the ledger (open) for the next run, and the run
writes its results and exits 130 (SIGINT) or 128 + signum. A second signal ends the process at once
(`os._exit`, no traceback, no cleanup that could block): the ledger is written before every job is
created, so the next run is as safe as after a kill -9.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupt:
    """A run's stop flag: set by a signal (or a test); `wait` sleeps until a timeout or the flag."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop (the first caller's signal is kept)."""
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds` or until a stop is asked for; True when it was."""
        return self._event.wait(seconds)

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM (128 + the signal number), as shells report them."""
        return 128 + int(self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        """SIGINT, SIGTERM, ..."""
        return signal.Signals(self.signum or signal.SIGINT).name


NEVER = Interrupt()  # for callers that never stop early


def block_signals_in_this_thread() -> None:
    """For worker threads (a ThreadPoolExecutor initializer): SIGINT and SIGTERM then reach the main
    thread, whose handler runs at once, instead of a worker, where CPython would only flag them for the
    main thread's next wake-up while the workers go on submitting. Threads a worker starts inherit it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


@contextmanager
def handle_signals(interrupt: Interrupt, on_first: "callable | None" = None) -> Iterator[Interrupt]:  # type: ignore[valid-type]
    """Route SIGINT and SIGTERM to `interrupt` while the block runs (main thread only). The first signal
    sets it (and calls `on_first(signum)`, e.g. to print a note); the second exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return

    def handler(signum: int, frame: object) -> None:
        if interrupt.is_set():
            try:
                sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now; the next run resumes "
                                 "from the ledger\n")
                sys.stderr.flush()
            finally:
                os._exit(128 + signum)
        interrupt.set(signum)
        if on_first is not None:
            on_first(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupt
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
