"""The local batch executor: Vertex batch semantics on the local warehouse.

A job reads its input relation in chunks, answers each chunk through a provider (mock, OpenAI-
compatible endpoint, ...) on a thread pool, and writes a fresh output table with exactly Vertex's
shape (contract §2.2): every input column unchanged, then `response` (JSON, NULL for failed rows),
`status` (STRING, "" on success, ``<HTTP reason>: <google.rpc error JSON>`` otherwise) and
`processed_time` (TIMESTAMP, UTC).

Jobs run on a background thread per job; `get` reports live counts. Memory stays bounded: at most
`concurrency` chunks are in flight, plus the one the warehouse is writing. Jobs live in this process
only (a new process sees no old jobs).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa

from batchflow.batch.base import JobNotFoundError, JobSpec, JobState, JobStatus
from batchflow.batch.providers.base import Provider, ProviderResult, error_status
from batchflow.errors import ExecutionError
from batchflow.warehouse.base import Warehouse

NAME_PREFIX = "projects/local/locations/local/batchPredictionJobs/"

#: The three columns Vertex appends to the input columns.
OUTPUT_FIELDS = (
    pa.field("response", pa.string()),
    pa.field("status", pa.string()),
    pa.field("processed_time", pa.timestamp("us", tz="UTC")),
)

_loads = json.loads
_id_lock = threading.Lock()
_last_id = 0


def _next_id() -> int:
    """A process-wide increasing, time-based job id (microseconds since the epoch, bumped on ties)."""
    global _last_id
    with _id_lock:
        _last_id = max(_last_id + 1, time.time_ns() // 1000)
        return _last_id


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclasses.dataclass
class _Job:
    spec: JobSpec
    status: JobStatus
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    total: int | None = None
    thread: threading.Thread | None = None


class LocalBackend:
    """`BatchBackend` running jobs in this process against `warehouse` with `provider`."""

    name = "local"
    #: in-process jobs: the lifecycle can poll often without cost
    poll_interval = 0.05

    def __init__(self, warehouse: Warehouse, provider: Provider, concurrency: int = 4, chunk_size: int = 5_000):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.warehouse = warehouse
        self.provider = provider
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # -- protocol ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobStatus:
        if self.warehouse.kind(spec.output) is not None:
            raise ExecutionError(
                f"batch output table {spec.output} already exists; a batch job needs a fresh table "
                "(Vertex refuses an existing destination)"
            )
        if self.warehouse.kind(spec.input) is None:
            raise ExecutionError(f"batch input relation {spec.input} does not exist")
        now = _now_iso()
        name = f"{NAME_PREFIX}{_next_id()}"
        job = _Job(
            spec=spec,
            status=JobStatus(
                name=name,
                state=JobState.PENDING,
                model=spec.model,
                output=spec.output,
                labels=dict(spec.labels),
                create_time=now,
                update_time=now,
            ),
        )
        with self._lock:
            for other in self._jobs.values():
                if other.spec.output == spec.output and not other.status.state.terminal:
                    raise ExecutionError(f"job {other.status.name} is already writing {spec.output}")
            self._jobs[name] = job
            snapshot = dataclasses.replace(job.status, labels=dict(job.status.labels))
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"bf-local-job-{name[-8:]}", daemon=True)
        job.thread.start()
        return snapshot

    def get(self, name: str) -> JobStatus:
        job = self._job(name)
        with self._lock:
            return dataclasses.replace(job.status, labels=dict(job.status.labels))

    def cancel(self, name: str) -> None:
        job = self._job(name)
        with self._lock:
            if job.status.state.terminal:
                return
            job.cancel.set()
            job.status.state = JobState.CANCELLING
            job.status.update_time = _now_iso()

    def list(self, labels: dict[str, str] | None = None) -> list[JobStatus]:
        wanted = dict(labels or {})
        with self._lock:
            return [
                dataclasses.replace(j.status, labels=dict(j.status.labels))
                for j in self._jobs.values()
                if all(j.status.labels.get(k) == v for k, v in wanted.items())
            ]

    # -- helpers beyond the protocol -----------------------------------------------------------
    def join(self, name: str, timeout: float | None = None) -> JobStatus:
        """Block until the job's thread ends (tests and scripts; the runner polls `get`)."""
        job = self._job(name)
        if job.thread is not None:
            job.thread.join(timeout)
        return self.get(name)

    def _job(self, name: str) -> _Job:
        key = name if name.startswith(NAME_PREFIX) else NAME_PREFIX + name.rsplit("/", 1)[-1]
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            raise JobNotFoundError(f"unknown batch job {name!r} (the local backend only knows jobs of this process)")
        return job

    def _set(self, job: _Job, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job.status, key, value)
            job.status.update_time = _now_iso()

    # -- the job -------------------------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        spec = job.spec
        try:
            with self._lock:
                if job.status.state is JobState.PENDING:
                    job.status.state = JobState.RUNNING
                    job.status.update_time = _now_iso()
            source = spec.input.render()
            total = self.warehouse.query_arrow(f"select count(*) as n from {source}").column(0)[0].as_py()
            with self._lock:
                job.total = int(total)
                job.status.incomplete = int(total)
            json_columns = ["request", "response"] + [
                c.name for c in self.warehouse.columns(spec.input) if c.type == "JSON" and c.name != "request"
            ]
            batches = self.warehouse.iter_batches(f"select * from {source}", batch_size=self.chunk_size)
            first = next(batches, None)
            if first is None:
                in_schema = self.warehouse.query_arrow(f"select * from {source} limit 0").schema
                batches = iter(())
            else:
                in_schema = first.schema
                batches = itertools.chain([first], batches)
            in_schema = pa.schema(list(in_schema))  # drop engine metadata
            if "request" not in in_schema.names:
                raise ExecutionError(f"batch input relation {spec.input} has no `request` column")
            out_schema = pa.schema(list(in_schema) + list(OUTPUT_FIELDS))
            self.warehouse.write_arrow(
                spec.output,
                self._answered(job, batches, in_schema, out_schema),
                out_schema,
                json_columns=json_columns,
            )
        except Exception as exc:  # the job itself broke: FAILED with the reason
            self._set(job, state=JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            done = job.status.successful + job.status.failed
            job.status.incomplete = max(0, (job.total or done) - done)
            job.status.state = JobState.CANCELLED if job.cancel.is_set() else JobState.SUCCEEDED
            job.status.update_time = _now_iso()

    def _answered(
        self, job: _Job, batches: Iterator[pa.RecordBatch], in_schema: pa.Schema, out_schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        """Output batches in input order, with at most `concurrency` chunks being answered at once."""
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bf-local-chunk")
        inflight: deque[Future] = deque()
        try:
            for batch in batches:
                if job.cancel.is_set():
                    break
                inflight.append(pool.submit(self._answer_chunk, job, batch, in_schema, out_schema))
                while len(inflight) >= self.concurrency or (inflight and inflight[0].done()):
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        finally:
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _answer_chunk(
        self, job: _Job, batch: pa.RecordBatch, in_schema: pa.Schema, out_schema: pa.Schema
    ) -> pa.RecordBatch:
        texts = batch.column(batch.schema.get_field_index("request")).to_pylist()
        n = len(texts)
        responses: list[str | None] = [None] * n
        statuses: list[str] = [""] * n
        requests: list[dict] = []
        positions: list[int] = []
        for i, text in enumerate(texts):
            if text is None:
                statuses[i] = error_status(400, "Request is empty (NULL).", "INVALID_ARGUMENT")
                continue
            try:
                request = _loads(text)
            except ValueError as exc:
                statuses[i] = error_status(400, f"Invalid JSON payload received. {exc}", "INVALID_ARGUMENT")
                continue
            if type(request) is not dict:
                statuses[i] = error_status(400, "Invalid JSON payload received. Request is not a JSON object.")
                continue
            requests.append(request)
            positions.append(i)

        if requests:
            try:
                results = self.provider.generate(job.spec.model, requests)
                if len(results) != len(requests):
                    raise RuntimeError(f"returned {len(results)} results for {len(requests)} requests")
            except Exception as exc:  # a provider bug: the rows fail, as internal errors do on Vertex
                failure = error_status(
                    500, f"provider {getattr(self.provider, 'name', '?')} failed: {type(exc).__name__}: {exc}"
                )
                results = [ProviderResult(None, failure)] * len(requests)
            for i, result in zip(positions, results):
                status = result.status
                if status:
                    statuses[i] = status
                else:
                    text = result.response_text()
                    if text is None:
                        statuses[i] = error_status(500, "provider returned neither a response nor an error")
                    else:
                        responses[i] = text

        failed = sum(1 for s in statuses if s)
        now = datetime.now(timezone.utc)
        columns = [batch.column(batch.schema.get_field_index(f.name)) for f in in_schema]
        columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, in_schema)]
        out = pa.RecordBatch.from_arrays(
            columns
            + [
                pa.array(responses, pa.string()),
                pa.array(statuses, pa.string()),
                pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            ],
            schema=out_schema,
        )
        with self._lock:
            job.status.successful += n - failed
            job.status.failed += failed
            if job.total is not None:
                job.status.incomplete = max(0, job.total - job.status.successful - job.status.failed)
            job.status.update_time = _now_iso()
        return out
