"""The local batch executor: Vertex batch semantics on the local warehouse.

A job reads its input relation in chunks, answers each chunk through a provider (mock, OpenAI-
compatible endpoint, ...) and writes a fresh output table with exactly Vertex's shape (contract
§2.2): every input column unchanged, then `response` (JSON, NULL for failed rows), `status` (STRING,
"" on success, ``<HTTP reason>: <google.rpc error JSON>`` otherwise) and `processed_time` (TIMESTAMP,
UTC). A chunk travels as its `request` column's text; the provider answers it as columns of text
(`Provider.generate_json`; `BaseProvider`'s calls `generate` on the parsed rows), never as per-row
objects the executor re-encodes. An embedding job (`JobSpec.model_parameters` set, contract §3) reads
`content` (and `task_type`, `title`) columns instead, answered by `Provider.embed_json`, and writes
`predictions` and `status` after its input columns.

Chunks are answered on a thread pool, which suits I/O-bound providers (an HTTP endpoint). Threads add
no CPU to a CPU-bound provider (the mock: all Python, under the GIL): a provider declaring ``cpu_bound``
gets one answering thread (more would only trade the GIL), and on machines with CPUs to spare
(`processes`) its big jobs (`process_min_rows`) are answered in worker processes instead: each holds a
pickled copy of the provider, receives a chunk's request column (Arrow) and sends back its response and
status columns. Until the first worker is up, chunks go to the thread. Answers are byte-identical
either way. Workers start with multiprocessing's forkserver (spawn where there is none), so the usual
rule applies to scripts: guard the entry point with ``if __name__ == "__main__":`` (the CLI does), or
pass ``processes=0``.

Answers are persisted as they come, because a local provider may be a paid endpoint or hours of GPU
time: `submit` creates the (empty) output table before it returns, and answered chunks are appended
in input order, each commit its own transaction (`Warehouse.append_arrow`). A kill -9 of this process
leaves the output table holding exactly the committed chunks, each row a complete answer; only the
chunks in flight (and those buffered by the commit policy, see `COMMIT_ROWS`) are lost. A cancel
stops after the chunks in flight and keeps every answered row.

Jobs run on a background thread per job; `get` reports live counts. Memory stays bounded: at most
`concurrency` chunks are in flight, plus at most `WAIT_ROWS` answered rows waiting for the warehouse.
Jobs live in this process only (a new process sees no old jobs: `jobs_outlive_process` is False).
"""

from __future__ import annotations

import dataclasses
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
from batchflow.batch.providers.base import Provider, error_status, loads_request, parse_request
from batchflow.errors import ExecutionError
from batchflow.warehouse.base import Warehouse

NAME_PREFIX = "projects/local/locations/local/batchPredictionJobs/"

#: The three columns Vertex appends to the input columns.
OUTPUT_FIELDS = (
    pa.field("response", pa.string()),
    pa.field("status", pa.string()),
    pa.field("processed_time", pa.timestamp("us", tz="UTC")),
)

#: An embedding job's output columns after its input columns (contract §3): no `processed_time`.
EMBEDDING_OUTPUT_FIELDS = (
    pa.field("predictions", pa.string()),
    pa.field("status", pa.string()),
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
    in_schema: pa.Schema | None = None  # the input's columns, as read when the job was submitted
    json_columns: list[str] = dataclasses.field(default_factory=list)  # output columns typed JSON
    checked_json: list[str] = dataclasses.field(default_factory=list)  # of those, texts known to be JSON
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    total: int | None = None
    thread: threading.Thread | None = None
    committed: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # rows in the output table: ok, failed


class _Commits:
    """A job's committer: a thread appending the answered chunks to the output table in input order,
    by `LocalBackend`'s commit policy, while the job's thread keeps the answerers busy (a commit that
    blocked the job's thread would leave them idle: 1M mock rows took 2.5x as long). Each commit
    streams the chunks into the warehouse as they arrive (a `RecordBatchReader` over `_one_commit`),
    so answered rows are not held in memory until their commit: the warehouse holds what it is
    writing (DuckDB: the row group being filled), as a single CREATE TABLE AS did."""

    def __init__(self, backend: LocalBackend, job: _Job):
        self.backend = backend
        self.job = job
        self.cond = threading.Condition()
        self.waiting: deque[tuple[pa.RecordBatch, int]] = deque()  # (output batch, its failed rows)
        self.queued = 0  # rows waiting
        self.closed = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=f"bf-local-commit-{job.status.name[-8:]}", daemon=True)
        self.thread.start()

    def add(self, batch: pa.RecordBatch, failed: int) -> None:
        """Hand over the next chunk's output batch; blocks while WAIT_ROWS rows already wait for the
        warehouse to take them (memory stays bounded when the warehouse is slower than the provider)."""
        with self.cond:
            while self.queued >= self.backend.WAIT_ROWS and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            self.waiting.append((batch, failed))
            self.queued += batch.num_rows
            self.cond.notify_all()

    def close(self) -> None:
        """Commit what waits and stop; raises the error a commit failed with, if any."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        seconds = self.backend.commit_seconds()
        deadline = time.monotonic()  # the first answers are committed at once
        while True:
            with self.cond:
                while not self.waiting and not self.closed:
                    self.cond.wait()
                if not self.waiting:
                    return
                schema = self.waiting[0][0].schema
            taken = [0, 0]  # ok, failed rows in this commit
            reader = pa.RecordBatchReader.from_batches(schema, self._one_commit(deadline, taken))
            try:
                self.backend.warehouse.append_arrow(self.job.spec.output, reader, self.job.json_columns,
                                                    self.job.checked_json)
            except BaseException as exc:  # not retried: the job fails, its earlier commits stay
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                return
            with self.backend._lock:
                self.job.committed[0] += taken[0]
                self.job.committed[1] += taken[1]
            deadline = time.monotonic() + seconds

    def _one_commit(self, deadline: float, taken: list[int]) -> Iterator[pa.RecordBatch]:
        """The chunks of one commit, as they arrive: until COMMIT_ROWS rows are in it, or nothing
        waits once `deadline` has passed or the job is done. Counts what it hands over in `taken`."""
        limit = self.backend.COMMIT_ROWS
        while taken[0] + taken[1] < limit:
            with self.cond:
                while not self.waiting:
                    remaining = deadline - time.monotonic()
                    if self.closed or remaining <= 0:
                        return
                    self.cond.wait(remaining)
                batch, failed = self.waiting.popleft()
                self.queued -= batch.num_rows
                self.cond.notify_all()  # room for the job's thread
            taken[0] += batch.num_rows - failed
            taken[1] += failed
            yield batch


class LocalBackend:
    """`BatchBackend` running jobs in this process against `warehouse` with `provider`."""

    name = "local"
    #: jobs run on this process's threads: they die with it, and a new process knows none of them
    jobs_outlive_process = False
    #: a job reads its input through the warehouse as it runs: a view is as good as a table
    reads_views = True
    #: in-process jobs: the lifecycle can poll often without cost
    poll_interval = 0.05

    #: Commit policy: answered chunks are appended to the output table (`append_arrow`, one
    #: transaction each time) by a committer thread, at most once per COMMIT_SECONDS unless
    #: COMMIT_ROWS rows wait, each commit taking every chunk that waits. A slow provider (a chunk
    #: per second or slower) so gets each chunk committed as soon as it is answered; a fast one gets
    #: grouped commits. DuckDB writes an append of a whole row group (122,880 rows) straight to the
    #: file, a smaller one through its log and a checkpoint: measured (2 CPUs, 400k answer rows in
    #: one thread) 25,000-row appends cost 3x the CPU of one CREATE TABLE AS, row-group appends 1.1x;
    #: two concurrent mock jobs ran at 0.65x the old single write with a commit per second.
    #: A `cpu_bound` provider's answers cost only CPU to redo (no money, no quota), so its jobs
    #: commit by row group (COMMIT_SECONDS_CPU_BOUND bounds the wait); answers that cost a call
    #: (an HTTP provider) are committed every COMMIT_SECONDS, whatever that costs the warehouse.
    #: A kill -9 loses the chunks in flight and what waits: at most ~COMMIT_SECONDS of paid answers,
    #: or COMMIT_ROWS rows.
    COMMIT_ROWS = 122_880
    #: Answered rows the warehouse has not taken yet (a commit streams them in as they come): past
    #: this the job's thread waits. It bounds the memory they take apart from the commit size: with
    #: COMMIT_ROWS as the bound, each of two mock jobs could queue a row group of answers while a
    #: land merge held the warehouse up, and the 1M-row benchmark's peak RSS reached 1,515-1,565 MB
    #: (1,354-1,418 MB with this bound; benchmarks/RESULTS.md §5, fifth sitting).
    WAIT_ROWS = 20_000
    COMMIT_SECONDS = 1.0
    COMMIT_SECONDS_CPU_BOUND = 30.0

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
        # The one check of the provider: afterwards its declared attributes are used as they are.
        missing = [a for a in ("name", "cpu_bound", "encodes_json", "generate", "generate_json")
                   if not hasattr(provider, a)]
        if missing:
            raise TypeError(f"provider {type(provider).__name__} does not declare {', '.join(missing)} "
                            "(see batchflow.batch.providers.base.Provider; BaseProvider has the defaults)")
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

    def commit_seconds(self) -> float:
        """The longest answered rows wait before a commit, by what redoing them would cost."""
        return self.COMMIT_SECONDS_CPU_BOUND if self.provider.cpu_bound else self.COMMIT_SECONDS

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
        try:
            job.in_schema, job.json_columns, job.checked_json = self._input_shape(spec)
        except Exception as exc:  # an input the job cannot read: the job fails (as on Vertex), no table
            job.status.state = JobState.FAILED
            job.status.error = f"{type(exc).__name__}: {exc}"
        else:
            # Before returning: the table exists as soon as the job does, and holds each commit.
            out_schema = pa.schema(list(job.in_schema) + list(_output_fields(spec)))
            self.warehouse.create_table_from_schema(spec.output, out_schema, job.json_columns)
        with self._lock:
            self._jobs[name] = job
            snapshot = dataclasses.replace(job.status, labels=dict(job.status.labels))
        if job.status.state is JobState.FAILED:
            return snapshot
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"bf-local-job-{name[-8:]}", daemon=True)
        job.thread.start()
        return snapshot

    def _input_shape(self, spec: JobSpec) -> tuple[pa.Schema, list[str], list[str]]:
        """The input's Arrow schema, the output's JSON columns (`request`, `response` and every other
        JSON input column) and those of them whose texts are known to be JSON (`append_arrow`'s
        `checked_json`): what was read out of a JSON input column, and an encoding provider's answers."""
        source = spec.input.render()
        in_schema = pa.schema(list(self.warehouse.query_arrow(f"select * from {source} limit 0").schema))
        json_inputs = [c.name for c in self.warehouse.columns(spec.input) if c.type == "JSON"]
        if spec.model_parameters is not None:  # an embedding job: `content` in, `predictions` out (JSON text)
            if "content" not in in_schema.names:
                raise ExecutionError(f"embedding job input {spec.input} has no `content` column")
            return in_schema, json_inputs, json_inputs
        if "request" not in in_schema.names:
            raise ExecutionError(f"batch input relation {spec.input} has no `request` column")
        json_columns = ["request", "response"] + [c for c in json_inputs if c != "request"]
        return in_schema, json_columns, json_inputs + (["response"] if self.provider.encodes_json else [])

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

    def check(self) -> str:
        return self.provider.check()

    def describe(self) -> str:
        """The provider answering, and how jobs are run."""
        return (f"provider {self.provider.name} ({type(self.provider).__name__}), {self.concurrency} chunk(s) of "
                f"{self.chunk_size:,} rows in flight; jobs end with this process")

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
            batches = self.warehouse.iter_batches(f"select * from {source}", batch_size=self.chunk_size)
            commits = _Commits(self, job)
            try:
                self._answer_all(job, batches, commits)
            finally:
                commits.close()  # even when reading the input broke: what was answered is kept
        except Exception as exc:  # the job itself broke: FAILED with the reason (committed rows stay)
            self._settle(job, JobState.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._settle(job, JobState.CANCELLED if job.cancel.is_set() else JobState.SUCCEEDED)

    def _settle(self, job: _Job, state: JobState, error: str | None = None) -> None:
        """The final status: counts are the rows in the output table (live counts may include
        chunks answered but never committed)."""
        with self._lock:
            job.status.successful, job.status.failed = job.committed
            done = job.status.successful + job.status.failed
            job.status.incomplete = max(0, (job.total or done) - done)
            job.status.state = state
            if error is not None:
                job.status.error = error
            job.status.update_time = _now_iso()

    def _answer_all(self, job: _Job, batches: Iterator[pa.RecordBatch], commits: _Commits) -> None:
        """Answer the chunks, at most `concurrency` at once (on threads, or in worker processes for a
        big job of a CPU-bound provider), and hand their output batches to `commits` in input order.
        Stops reading the input on cancel; the chunks in flight are still answered and handed over."""
        model = job.spec.model
        in_schema = job.in_schema
        out_schema = pa.schema(list(in_schema) + list(_output_fields(job.spec)))
        embedding = job.spec.model_parameters is not None
        # The input's request_hash is the digest the mock derives answers from: reuse it if it is this model's.
        reuse_hashes = job.spec.hash_model == model
        # Worker processes take a second or so to start: until one is up, chunks go to threads.
        ready = self._warm_processes() if self._use_processes(job) and not embedding else None
        # A CPU-bound provider gains nothing from a second thread (the GIL), only switching costs:
        # one thread answers, the `concurrency` chunks in flight queue up for it.
        workers = 1 if self.provider.cpu_bound else self.concurrency
        threads = ThreadPoolExecutor(workers, thread_name_prefix="bf-local-chunk")
        inflight: deque[tuple[pa.RecordBatch, Future, ProcessPoolExecutor | None]] = deque()

        def counted(future: Future) -> None:  # live counts, as soon as a chunk is answered
            if not future.cancelled() and future.exception() is None:
                self._count(job, *future.result()[2])

        def next_output() -> None:
            commits.add(*self._output(job, *inflight.popleft(), in_schema, out_schema))

        try:
            for batch in batches:
                if job.cancel.is_set():
                    break
                if embedding:  # the rows' predict instances, answered on a thread
                    future, pool = threads.submit(_embed_rows, self.provider, model, batch, job.spec.model_parameters), None
                else:
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
                    next_output()
            while inflight:
                next_output()
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
    ) -> tuple[pa.RecordBatch, int]:
        """The chunk's output batch (its input columns unchanged, then Vertex's three columns) and
        its failed rows."""
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
        columns = [batch.column(batch.schema.get_field_index(f.name)) for f in in_schema]
        columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, in_schema)]
        answer = [responses, statuses] if job.spec.model_parameters is not None else [
            responses, statuses, pa.repeat(pa.scalar(now, _TIMESTAMP), n)]
        output = pa.RecordBatch.from_arrays(columns + answer, schema=out_schema)
        return output, failed

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
        if not self.processes or not self.provider.cpu_bound:
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
        responses, statuses = provider.generate_json(model, texts, hashes)
        if len(responses) != len(texts) or len(statuses) != len(texts):
            raise RuntimeError(f"returned {len(responses)} responses and {len(statuses)} statuses "
                               f"for {len(texts)} requests")
        return responses, statuses
    except Exception as exc:  # a provider bug: the rows fail, as internal errors do on Vertex
        failure = error_status(500, f"provider {provider.name} failed: {type(exc).__name__}: {exc}")
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


def _output_fields(spec: JobSpec) -> tuple[pa.Field, ...]:
    """The columns a job appends to its input's: Vertex's for a Gemini or an embedding job."""
    return EMBEDDING_OUTPUT_FIELDS if spec.model_parameters is not None else OUTPUT_FIELDS


def _embed_rows(
    provider: Provider, model: str, batch: pa.RecordBatch, parameters: dict
) -> tuple[pa.Array, pa.Array, tuple[int, int], datetime]:
    """One chunk of an embedding job → its `predictions` and `status` columns, (failed, rows), the time.
    Never raises: a provider exception fails the chunk's rows with a 500 status."""
    names = [f for f in ("content", "task_type", "title") if f in batch.schema.names]
    instances = batch.select(names).to_pylist()
    n = len(instances)
    try:
        predictions, statuses = provider.embed_json(model, instances, dict(parameters))
        if len(predictions) != n or len(statuses) != n:
            raise RuntimeError(f"returned {len(predictions)} predictions and {len(statuses)} statuses for {n} rows")
        missing = error_status(500, "provider returned neither predictions nor an error")
        statuses = [missing if p is None and not st else st for p, st in zip(predictions, statuses)]
        predictions = [p if not st else None for p, st in zip(predictions, statuses)]
    except Exception as exc:  # a provider bug: the rows fail, as internal errors do on Vertex
        predictions = [None] * n
        statuses = [error_status(500, f"provider {provider.name} failed: {type(exc).__name__}: {exc}")] * n
    failed = n - statuses.count("")
    return pa.array(predictions, pa.string()), pa.array(statuses, pa.string()), (failed, n), datetime.now(timezone.utc)


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
