"""The child process of test_local_backend's kill -9 test (not a test module itself).

    python -m tests.local_kill_child <duckdb file> <chunk_size> <answered_chunks>

Submits a local job over `main.inp` of the DuckDB file to `main.out`, with a mock provider that sleeps
a little per chunk and, after `answered_chunks` chunks, never answers again (so the job cannot finish
before the parent kills it, however the machine is loaded). Prints ``committed <rows>`` after each
commit of the output table, which is the parent's cue to kill this process with SIGKILL.
"""

from __future__ import annotations

import sys
import threading
import time

from batchflow.batch.base import JobSpec
from batchflow.batch.local import LocalBackend
from batchflow.batch.providers.mock import MockProvider
from batchflow.warehouse.duckdb import DuckDBWarehouse

MODEL = "gemini-2.5-flash"


class SlowMock(MockProvider):
    """The mock, a bit slow (a paid endpoint), hanging for good after `answered` chunks."""

    cpu_bound = False  # answered on threads, in this process

    def __init__(self, answered: int):
        super().__init__({})
        self.left = answered
        self.lock = threading.Lock()

    def generate_json(self, model, texts, hashes=None):
        with self.lock:
            self.left -= 1
            hang = self.left < 0
        if hang:
            threading.Event().wait()  # until the parent's SIGKILL
        time.sleep(0.3)
        return super().generate_json(model, texts, hashes)


class ReportingWarehouse(DuckDBWarehouse):
    """Tells the parent about each commit of the output table, once it is committed."""

    def append_arrow(self, relation, batches, json_columns=(), checked_json=()):
        rows = super().append_arrow(relation, batches, json_columns, checked_json)
        print(f"committed {rows}", flush=True)
        return rows


def main() -> None:
    path, chunk_size, answered = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    wh = ReportingWarehouse(path)
    backend = LocalBackend(wh, SlowMock(answered), concurrency=2, chunk_size=chunk_size)
    status = backend.submit(JobSpec(MODEL, wh.relation("inp"), wh.relation("out"), "killed job"))
    print(f"submitted {status.name}", flush=True)
    backend.join(status.name)
    print(f"finished {backend.get(status.name).state.value}", flush=True)  # never reached: the parent kills first


if __name__ == "__main__":
    main()
