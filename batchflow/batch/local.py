"""The local batch executor: Vertex batch semantics on the local warehouse.

A job reads its input relation in chunks, answers each chunk through a provider (mock, OpenAI-
compatible endpoint, ...) and writes a fresh output table with exactly Vertex's shape (contract
§2.2): every input column unchanged, then `response` (JSON, NULL for failed rows), `status` (STRING,
"" on success, ``<HTTP reason>: <google.rpc error JSON>`` otherwise) and `processed_time` (TIMESTAMP,
UTC). A chunk travels as its `request` column's text; the provider answers it as columns of text
(`Provider.generate_json`, or `generate` on the parsed rows), never as per-row objects the executor
re-encodes.

Chunks are answered on a thread pool, which suits I/O-bound providers (an HTTP endpoint). Threads add
no CPU to a CPU-bound provider (the mock: all Python, under the GIL): a provider declaring ``cpu_bound``
gets one answering thread (more would only trade the GIL), and on machines with CPUs to spare
(`processes`) its big jobs (`process_min_rows`) are answered in worker processes instead: each holds a
pickled copy of the provider, receives a chunk's request column (Arrow) and sends back its response and
status columns. Until the first worker is up, chunks go to the thread. Answers are byte-identical
either way. Workers start with multiprocessing's forkserver (spawn where there is none), so the usual
rule applies to scripts: guard the entry point with ``if __name__ == "__main__":`` (the CLI does), or
pass ``processes=0``.

Jobs run on a background thread per job; `get` reports live counts. Memory stays bounded: at most
`concurrency` chunks are in flight, plus the one the warehouse is writing. Jobs live in this process
only (a new process sees no old jobs).
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from batchflow.batch.base import JobNotFoundError, JobSpec, JobState, JobStatus
from batchflow.batch.providers.base import Provider, error_status, generate_json, loads_request, parse_request
from batchflow.errors import ExecutionError
from batchflow.warehouse.base import Warehouse

NAME_PREFIX = "projects/local/locations/local/batchPredictionJobs/"

#: The three columns Vertex appends to the input columns.
OUTPUT_FIELDS = (
    pa.field("response", pa.string()),
    pa.field("status", pa.string()),
    pa.field("processed_time", pa.timestamp("us", tz="UTC")),
)

_loads = loads_request  # how a `request` text is parsed (see `loads_request`)
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
    written: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # rows handed to the writer: ok, failed


class LocalBackend:
    """`BatchBackend` running jobs in this process against `warehouse` with `provider`."""

    name = "local"
    #: in-process jobs: the lifecycle can poll often without cost
    poll_interval = 0.05

    #: jobs smaller than this stay on threads even with worker processes allowed (start-up cost)
    PROCESS_MIN_ROWS = 50_000

    def __init__(
        self,
        warehouse: Warehouse,
        provider: Provider,
        concurrency: int = 4,
        chunk_size: int = 5_000,
        processes: int = 0,
        process_min_rows: int | None = None,
    ):
        """`processes`: worker processes for a provider declaring ``cpu_bound`` (profiles.yml
        ``batch.processes``); 0, the default, answers on threads. Opt-in because it only pays with CPUs
        to spare: measured on 2 CPUs, the workers' pickling and pipes cost more than the second core
        gives (DuckDB's write needs that core); leave one CPU for the warehouse. Jobs under
        `process_min_rows` rows always use threads (worker start-up)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if processes < 0:
            raise ValueError("processes must be >= 0")
        self.warehouse = warehouse
        self.provider = provider
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        self.processes = processes
        self.process_min_rows = self.PROCESS_MIN_ROWS if process_min_rows is None else process_min_rows
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._processes: ProcessPoolExecutor | None = None
        self._pool_ready: Future | None = None
        self._finalizer: weakref.finalize | None = None

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
            # The rows in the output table: live counts may include chunks answered after a cancel.
            job.status.successful, job.status.failed = job.written
            done = job.status.successful + job.status.failed
            job.status.incomplete = max(0, (job.total or done) - done)
            job.status.state = JobState.CANCELLED if job.cancel.is_set() else JobState.SUCCEEDED
            job.status.update_time = _now_iso()

    def _answered(
        self, job: _Job, batches: Iterator[pa.RecordBatch], in_schema: pa.Schema, out_schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        """Output batches in input order, with at most `concurrency` chunks being answered at once:
        on threads, or in worker processes for a big job of a CPU-bound provider."""
        model = job.spec.model
        # The input's request_hash is the digest the mock derives answers from: reuse it if it is this model's.
        reuse_hashes = job.spec.hash_model == model
        # Worker processes take a second or so to start: until one is up, chunks go to threads.
        ready = self._warm_processes() if self._use_processes(job) else None
        # A CPU-bound provider gains nothing from a second thread (the GIL), only switching costs:
        # one thread answers, the `concurrency` chunks in flight queue up for it.
        workers = 1 if getattr(self.provider, "cpu_bound", False) else self.concurrency
        threads = ThreadPoolExecutor(workers, thread_name_prefix="bf-local-chunk")
        inflight: deque[tuple[pa.RecordBatch, Future, ProcessPoolExecutor | None]] = deque()

        def counted(future: Future) -> None:  # live counts, as soon as a chunk is answered
            if not future.cancelled() and future.exception() is None:
                self._count(job, *future.result()[2])

        try:
            for batch in batches:
                if job.cancel.is_set():
                    break
                requests = batch.column(batch.schema.get_field_index("request"))
                index = batch.schema.get_field_index("request_hash") if reuse_hashes else -1
                hashes = batch.column(index) if index >= 0 else None
                if ready is not None and ready.done() and ready.exception() is None:
                    future, pool = self._submit_to_processes(model, requests, hashes)
                else:
                    future, pool = threads.submit(_answer_column, self.provider, model, requests, hashes), None
                future.add_done_callback(counted)
                inflight.append((batch, future, pool))
                while len(inflight) >= self.concurrency or (inflight and inflight[0][1].done()):
                    yield self._output(job, *inflight.popleft(), in_schema, out_schema)
            while inflight:
                yield self._output(job, *inflight.popleft(), in_schema, out_schema)
        finally:
            for _, future, _ in inflight:
                future.cancel()
            threads.shutdown(wait=True, cancel_futures=True)

    def _output(
        self,
        job: _Job,
        batch: pa.RecordBatch,
        future: Future,
        pool: ProcessPoolExecutor | None,
        in_schema: pa.Schema,
        out_schema: pa.Schema,
    ) -> pa.RecordBatch:
        """The chunk's output batch: its input columns unchanged, then Vertex's three columns."""
        try:
            responses, statuses, (failed, n), now = future.result()
        except BrokenProcessPool as exc:  # a worker died (killed, out of memory): its chunks fail, not the job
            if pool is not None:
                self._discard_pool(pool)
            n = failed = batch.num_rows
            failure = error_status(500, f"local executor worker process failed: {type(exc).__name__}: {exc}")
            responses = pa.nulls(n, pa.string())
            statuses = pa.array([failure] * n, pa.string())
            now = datetime.now(timezone.utc)
            self._count(job, failed, n)
        with self._lock:
            job.written[0] += n - failed
            job.written[1] += failed
        columns = [batch.column(batch.schema.get_field_index(f.name)) for f in in_schema]
        columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, in_schema)]
        return pa.RecordBatch.from_arrays(
            columns + [responses, statuses, pa.repeat(pa.scalar(now, _TIMESTAMP), n)], schema=out_schema
        )

    def _count(self, job: _Job, failed: int, total: int) -> None:
        with self._lock:
            job.status.successful += total - failed
            job.status.failed += failed
            if job.total is not None:
                job.status.incomplete = max(0, job.total - job.status.successful - job.status.failed)
            job.status.update_time = _now_iso()

    # -- worker processes ------------------------------------------------------------------------
    def _use_processes(self, job: _Job) -> bool:
        """Worker processes for a CPU-bound provider on a job big enough to repay their start-up."""
        if not self.processes or not getattr(self.provider, "cpu_bound", False):
            return False
        return (job.total or 0) >= self.process_min_rows

    def _warm_processes(self) -> Future:
        """Start the worker processes (if not running); the future is done once one has answered.
        Workers that cannot start (a provider that does not pickle, ...) leave this backend on threads."""
        try:
            self._process_pool()
            return self._pool_ready
        except Exception as exc:  # noqa: BLE001 - threads answer as well, only slower
            with self._pool_lock:
                pool, self._processes, self.processes = self._processes, None, 0
                if pool is not None and self._finalizer is not None:
                    self._finalizer.detach()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _submit_to_processes(
        self, model: str, requests: pa.Array, hashes: pa.Array | None
    ) -> tuple[Future, ProcessPoolExecutor]:
        # Arrow arrays pickle as their buffers: send a slice's own rows only.
        if requests.get_total_buffer_size() > 2 * requests.nbytes + 65536:
            requests = requests.to_pylist()
            hashes = None if hashes is None else hashes.to_pylist()
        for attempt in (1, 2):
            pool = self._process_pool()
            try:
                return pool.submit(_answer_in_worker, model, requests, hashes), pool
            except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh once
                self._discard_pool(pool)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._processes is None:
                self._processes = ProcessPoolExecutor(
                    self.processes, mp_context=_mp_context(), initializer=_init_worker,
                    initargs=(self.provider, os.getpid()),
                )
                self._finalizer = weakref.finalize(self, self._processes.shutdown, wait=False, cancel_futures=True)
                # Start every worker now (not one per chunk submitted); ready when the first answers.
                self._pool_ready = self._processes.submit(os.getpid)
                for _ in range(self.processes - 1):
                    self._processes.submit(os.getpid)
            return self._processes

    def _discard_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._pool_lock:
            if self._processes is pool:
                self._processes = None
                self._finalizer.detach()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop when the backend is collected)."""
        with self._pool_lock:
            pool, self._processes = self._processes, None
            if pool is not None:
                self._finalizer.detach()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# -- answering one chunk (in a thread of this process, or in a worker process) --------------------

_TIMESTAMP = pa.timestamp("us", tz="UTC")


def answer_texts(provider: Provider, model: str, texts: list, hashes: list | None = None) -> tuple[list, list[str]]:
    """Request texts (None for NULL) → (responses as JSON text or None, statuses, "" on success).
    `hashes`, when given, holds each row's ``request_hash(request, model)`` (or None) for a provider's
    `generate_json` to reuse.

    Never raises: a provider exception fails its rows with a 500 status (rows that are not requests
    keep their 400), as internal errors do on Vertex."""
    try:
        own = getattr(provider, "generate_json", None)
        if own is not None:
            responses, statuses = own(model, texts) if hashes is None else own(model, texts, hashes)
            if len(responses) != len(texts) or len(statuses) != len(texts):
                raise RuntimeError(f"returned {len(responses)} responses and {len(statuses)} statuses "
                                   f"for {len(texts)} requests")
        else:
            responses, statuses = generate_json(provider, model, texts)
        return responses, statuses
    except Exception as exc:  # a provider bug: the rows fail, as internal errors do on Vertex
        failure = error_status(500, f"provider {getattr(provider, 'name', '?')} failed: {type(exc).__name__}: {exc}")
        return [None] * len(texts), [parse_request(t)[1] or failure for t in texts]


def _answer_column(
    provider: Provider, model: str, requests: pa.Array | list, hashes: pa.Array | list | None = None
) -> tuple[pa.Array, pa.Array, tuple[int, int], datetime]:
    """One chunk's `request` column (and `request_hash`, to reuse) → its `response` and `status`
    columns, (failed, rows), and the processed time."""
    texts = requests if isinstance(requests, list) else requests.to_pylist()
    if hashes is not None and not isinstance(hashes, list):
        hashes = hashes.to_pylist()
    responses, statuses = answer_texts(provider, model, texts, hashes)
    n = len(texts)
    response_array = pa.array(responses, pa.string())
    status_array = pa.array(statuses, pa.string())
    failed = n - statuses.count("")
    # Vertex's shape: a response exactly for the rows without a status (checked in Arrow: cheap).
    if response_array.null_count != failed or pc.any(pc.xor(pc.is_null(response_array), pc.not_equal(status_array, ""))).as_py():
        missing = error_status(500, "provider returned neither a response nor an error")
        statuses = [missing if r is None and not s else s for r, s in zip(responses, statuses)]
        failed = n - statuses.count("")
        response_array = pa.array([r if not s else None for r, s in zip(responses, statuses)], pa.string())
        status_array = pa.array(statuses, pa.string())
    return response_array, status_array, (failed, n), datetime.now(timezone.utc)


_worker_provider: Provider | None = None


def _init_worker(provider: Provider, owner: int) -> None:
    global _worker_provider
    _worker_provider = provider
    threading.Thread(target=_exit_with_owner, args=(owner,), name="bf-owner-watch", daemon=True).start()


def _exit_with_owner(owner: int) -> None:
    """End this worker when the process that started it is gone (killed without shutting the pool
    down): an orphaned worker would otherwise wait for work forever."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # pragma: no cover - a pid reused by another user's process
            os._exit(0)


def _answer_in_worker(model: str, requests: pa.Array | list, hashes: pa.Array | list | None):
    return _answer_column(_worker_provider, model, requests, hashes)


def _mp_context():
    """forkserver where there is one (safe with threads running, cheap per worker), else spawn. The
    fork server imports this module once, so each worker starts with pyarrow and the providers loaded."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "batchflow.batch.providers.mock"])
    return context
