"""Named points in the batch lifecycle where a fault-injection test can kill the process.

`BATCHFLOW_FAULT_KILL_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th time (default the
first) it passes `<point>`: the only way to stop a run *exactly* at a stage boundary, which is what
the fault-matrix tests need to prove that every boundary is safe. Unset (always, outside tests), a
checkpoint is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

#: every point, in lifecycle order
POINTS = (
    "after_build",  # the request relation is built
    "after_ledger_record",  # a job's SUBMITTING row is written, create() not called yet
    "after_create",  # create() returned; the ledger does not have the job's name yet
    "while_waiting",  # a poll of running jobs
    "before_land",  # a job ended; its output is not merged
    "during_merge",  # the output is merged; the ledger does not say LANDED yet
    "before_results",  # every job landed; the model's relation is not rebuilt
)

_ENV = "BATCHFLOW_FAULT_KILL_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    """Kill this process here if the environment asks for it (see the module doc)."""
    wanted = os.environ.get(_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        hit = _counts[point] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
