"""A Vertex AI batch prediction emulator on 127.0.0.1, for tests (contract: shared/contract/vertex-batch.md §4).

It never imports batchflow: its storage (`tables.py`), answers (`gemini.py`), output schema and
status texts are its own, written from the contract, so a bug shared with batchflow cannot hide.

It serves the REST surface google-genai calls on Vertex, under `/v1beta1/` and `/v1/`:

    POST   /{v}/projects/{p}/locations/{l}/batchPredictionJobs              create
    GET    /{v}/projects/{p}/locations/{l}/batchPredictionJobs              list (filter, pageSize, pageToken)
    GET    /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}         get
    POST   /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel  cancel
    DELETE /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}         delete (returns an Operation)

with proto3 JSON (camelCase, int64 as strings, default values omitted) and google.rpc error bodies.
Jobs move [QUEUED →] PENDING → RUNNING → terminal on `clock` (`queued_seconds`, `pending_seconds`,
`running_seconds`, `cancel_seconds`, read when a job is created). On RUNNING a job reads its input
table (`bq://p.d.t`) and answers each `request` (gemini.py); when it ends it writes the output table
(contract §2.2: input columns, then `response` JSON, `status` STRING, `processed_time` TIMESTAMP).
A text-embedding model's job (contract §3, embeddings.py) reads `content` (and `task_type`, `title`)
columns instead, takes `modelParameters` (outputDimensionality, autoTruncate) from the create body,
and writes the input columns, then `predictions` (STRING, JSON text) and `status`. A
`gemini-embedding-*` model with BigQuery input is refused at create (400), as Vertex documents.

Construction: `VertexEmulator(tables, ...)` where `tables` is a `DuckDBTables` / `BigQueryTables`
(tables.py), a DuckDB file path, a DuckDB connection or a `google.cloud.bigquery.Client`. The server is
threaded and runs in the test process, so batchflow may run in-process or in a subprocess pointed at
`url`; with a subprocess, store tables in BigQuery (the BigQuery emulator): another process holding a
DuckDB file locks it.

Test knobs (Python API on the emulator object):
- `emu.row_rules = [{"when_prompt_contains": "lyrics", "outcome": "recitation", "limit": 1}, ...]`:
  row-level outcomes (gemini.py: recitation, safety, prompt_blocked, max_tokens, transient_error,
  server_error, failed_precondition, bad_request); `limit` counts over the emulator's life.
- `emu.answers`: one `Answer` per row written to an output table (input row, response, status, outcome).
- `emu.faults.<op> = [503, 429, "drop", ...]` for op in create/get/list/cancel/delete: consumed one per
  call, in order; an int answers with that HTTP error, "drop" closes the connection without an answer.
  A create fault creates nothing.
- `emu.faults.create_after_commit = [500 | "drop"]` / `emu.faults.create_timeout_after_commit = True`
  (one "drop"): the job IS created, then the error is returned (an ambiguous create).
- `emu.next_job_outcome = "SUCCEEDED" | "FAILED" | "EXPIRED" | "PARTIALLY_SUCCEEDED" | "CANCELLED" | "PAUSED"`
  (next create only); `emu.next_job_error = {"code":..., "message":..., "details": [...]}` overrides the error.
- `emu.next_job_output_rows = N | None` (next create only): how many rows the job leaves in its output
  table. None = the state's own default: SUCCEEDED all rows; PARTIALLY_SUCCEEDED the last third
  (at least one row) is absent from the table; FAILED and EXPIRED no table (an EXPIRED job never
  runs); CANCELLED the rows processed when it was cancelled (half for `next_job_outcome`). An int
  writes exactly the first N rows (capped at the input size) for any terminal state, FAILED and
  EXPIRED included (Vertex keeps completed work on cancel/timeout, contract §1, §4.1); such an
  EXPIRED job runs, then expires. `completionStats` count what was written: successful/failed among
  the written rows, the rest incomplete.
- Cancel of a terminal job answers 400 FAILED_PRECONDITION; delete of a running one too.
- Hooks, called in the HTTP thread BEFORE the response is sent, outside the emulator's lock (a hook
  may block, e.g. on a threading.Event, while the test SIGKILLs the client):
  `emu.on_request(op, callback)` for op in create/get/list/cancel/delete (faulted calls included);
  `emu.on_state(state, callback)` when a get is about to report `state` (e.g. "JOB_STATE_SUCCEEDED").
  `callback(call: Call, state: str | None)`; `call.status_code` is the HTTP status about to be sent,
  `state` the job state a get carries (None otherwise). Both return a function that removes the hook.
  `emu.hold(op=..., state=..., times=1) -> Hold`: a ready-made blocking hook: `hold.reached` (Event)
  is set when a matching response is held, `hold.release()` lets it go (stop() releases every hold).
- `emu.output_table_format = "uri" | "name"`: `outputInfo.bigqueryOutputTable` as `bq://p.d.t` or bare.
- `emu.max_page_size` caps list pages.
- `emu.use_manual_clock()` freezes time and returns the clock; `clock.advance(s)` moves it and steps
  every job at once (no background tick needed), so any terminal state is reached without sleeping.
- `emu.calls` records every request (method, path, query, body, headers); `emu.count("create")`.
"""

from __future__ import annotations

import base64
import builtins
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest

from . import embeddings
from .gemini import RowResult, RowRule, answer
from .tables import OUTPUT_COLUMNS, Column, DuckDBTables, Tables, open_tables

PROJECT = "test-project"
LOCATION = "us-central1"

_PATH = re.compile(
    r"^/(?:v1beta1|v1)/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/batchPredictionJobs"
    r"(?:/(?P<id>[^/:]+))?(?P<cancel>:cancel)?$"
)
_MODEL = re.compile(r"^(publishers/[^/]+/models/[^/]+|projects/[^/]+/locations/[^/]+/(models|endpoints)/[^/]+)$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_FILTER_TERM = re.compile(r'^(?P<field>[a-zA-Z_][\w.]*)\s*(?P<op>=|!=|:)\s*(?P<value>"[^"]*"|[^\s"]+)$')
_FORBIDDEN_INPUT_TYPES = ("ARRAY", "STRUCT", "RANGE", "DATETIME", "GEOGRAPHY")
_KNOWN_FIELDS = {
    "name", "displayName", "model", "modelVersionId", "unmanagedContainerModel", "inputConfig", "instanceConfig",
    "modelParameters", "outputConfig", "dedicatedResources", "serviceAccount", "manualBatchTuningParameters",
    "generateExplanation", "explanationSpec", "labels", "encryptionSpec", "disableContainerLogging",
}
_RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
               501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
OUTCOMES = ("SUCCEEDED", "FAILED", "EXPIRED", "PARTIALLY_SUCCEEDED", "CANCELLED", "PAUSED")
TERMINAL = {f"JOB_STATE_{s}" for s in ("SUCCEEDED", "FAILED", "EXPIRED", "PARTIALLY_SUCCEEDED", "CANCELLED")}
OPS = ("create", "get", "list", "cancel", "delete")


class ManualClock:
    """A clock that moves only when told (`advance`), for tests that step a job through its states.
    `on_advance` callbacks run after each move (the emulator steps its jobs there)."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self.on_advance: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for callback in self.on_advance:
            callback()


@dataclass
class Faults:
    """Injected failures, consumed one per call in list order (see the module docstring)."""

    create: builtins.list = field(default_factory=builtins.list)
    create_after_commit: builtins.list = field(default_factory=builtins.list)
    create_timeout_after_commit: bool = False
    get: builtins.list = field(default_factory=builtins.list)
    list: builtins.list = field(default_factory=builtins.list)
    cancel: builtins.list = field(default_factory=builtins.list)
    delete: builtins.list = field(default_factory=builtins.list)

    def take(self, op: str) -> int | str | None:
        queue = getattr(self, op)
        return queue.pop(0) if queue else None


@dataclass
class Call:
    """One HTTP request as the emulator received it, and the status it was answered with."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    op: str | None  # create | get | list | cancel | delete | None (unrouted)
    status_code: int | None = None  # HTTP status sent (0: connection dropped)
    state: str | None = None  # the job state a get / create / cancel reply carries


@dataclass
class Answer:
    """One row the emulator wrote to an output table: what a correct landing must reflect."""

    job: str
    table: str
    row: dict[str, Any]  # the input row's columns (JSON columns as text)
    response: dict | list | None  # an embedding job's row: its predictions list
    status: str
    outcome: str  # ok | invalid | truncated | a row-rule outcome


@dataclass
class Job:
    """One emulated batch prediction job (times are `clock` values)."""

    name: str
    display_name: str
    model: str
    input_uri: str
    output_uri: str
    output_table_uri: str
    labels: dict[str, str]
    outcome: str
    output_rows: int | None
    error: dict | None
    created: float
    queued_until: float
    pending_until: float
    running_seconds: float
    cancel_seconds: float
    state: str = "JOB_STATE_PENDING"
    history: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    cancel_at: float | None = None
    # filled when the job starts running
    columns: list[Column] = field(default_factory=list)
    input: pa.Table | None = None
    results: list[RowResult] = field(default_factory=list)
    processed: int = 0  # rows done so far (while running)
    written: int | None = None  # rows in the output table once ended; None = no table
    parameters: dict[str, Any] = field(default_factory=dict)  # modelParameters (embedding jobs)

    @property
    def embedding(self) -> bool:
        return embeddings.is_embedding_model(self.model)


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or _RPC_STATUS.get(code, "INTERNAL")


class Hold:
    """A blocking hook: holds up to `times` matching responses until `release()`."""

    def __init__(self, times: int = 1, timeout: float = 300.0):
        self.reached = threading.Event()
        self.calls: list[Call] = []
        self._released = threading.Event()
        self._left = times
        self._timeout = timeout
        self._lock = threading.Lock()

    def __call__(self, call: Call, state: str | None) -> None:
        with self._lock:
            if self._left <= 0:
                return
            self._left -= 1
            self.calls.append(call)
        self.reached.set()
        self._released.wait(self._timeout)

    def release(self) -> None:
        self._released.set()


class VertexEmulator:
    """The emulator: `start()` serves on 127.0.0.1 (`url`), `stop()` shuts it down."""

    def __init__(
        self,
        tables: Tables | Any,
        *,
        row_rules: list[dict | RowRule] | None = None,
        queued_seconds: float = 0.0,
        pending_seconds: float = 0.2,
        running_seconds: float = 0.2,
        cancel_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tables: Tables = open_tables(tables)
        self.row_rules = row_rules or []
        self.queued_seconds = queued_seconds
        self.pending_seconds = pending_seconds
        self.running_seconds = running_seconds
        self.cancel_seconds = cancel_seconds
        self.clock = clock
        self.faults = Faults()
        self.next_job_outcome: str | None = None
        self.next_job_output_rows: int | None = None
        self.next_job_error: dict | None = None
        self.output_table_format = "uri"
        self.max_page_size = 100
        self.calls: list[Call] = []
        self.jobs: dict[str, Job] = {}
        self.answers: list[Answer] = []
        self._request_hooks: dict[str, list[Callable]] = {op: [] for op in OPS}
        self._state_hooks: dict[str, list[Callable]] = {}
        self._holds: list[Hold] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._t0 = (clock(), datetime.now(timezone.utc))
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def row_rules(self) -> list[RowRule]:
        return self._row_rules

    @row_rules.setter
    def row_rules(self, rules: list[dict | RowRule]) -> None:
        """Parsed once, so a rule's `limit` counts across jobs."""
        self._row_rules = [RowRule.parse(r) for r in rules]

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> "VertexEmulator":
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.02,), name="vertex-emu-http", daemon=True),
            threading.Thread(target=self._tick, name="vertex-emu-clock", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for hold in self._holds:
            hold.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(5)
        self._server = None

    def use_manual_clock(self, start: float = 0.0) -> ManualClock:
        """Freeze time: jobs move only when the returned clock advances (call before creating jobs);
        each `advance` steps every job right away, so the output is there when it returns."""
        with self._lock:
            clock = ManualClock(start)
            clock.on_advance.append(self.step)
            self.clock = clock
            self._t0 = (start, self._t0[1])
            return clock

    def step(self) -> None:
        """Bring every job up to the clock's now (the background tick does this every 20 ms)."""
        with self._lock:
            for job in list(self.jobs.values()):
                self._advance(job)

    def client(self, project: str = PROJECT, location: str = LOCATION, api_version: str | None = None):
        """A real `genai.Client` pointed at this emulator (contract §4.4 loopback setup)."""
        return make_client(self.url, project, location, api_version)

    # -- hooks -----------------------------------------------------------------------------------
    def on_request(self, op: str, callback: Callable[[Call, str | None], None]) -> Callable[[], None]:
        """Call `callback(call, state)` before each `op` response is sent; returns the remover."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        self._request_hooks[op].append(callback)
        return lambda: self._request_hooks[op].remove(callback)

    def on_state(self, state: str, callback: Callable[[Call, str | None], None]) -> Callable[[], None]:
        """Call `callback(call, state)` before a get reporting `state` is sent; returns the remover."""
        if not state.startswith("JOB_STATE_"):
            state = f"JOB_STATE_{state.upper()}"
        hooks = self._state_hooks.setdefault(state, [])
        hooks.append(callback)
        return lambda: hooks.remove(callback)

    def hold(self, op: str | None = None, state: str | None = None, times: int = 1, timeout: float = 300.0) -> Hold:
        """Hold the next `times` responses to `op` (or gets reporting `state`) until released."""
        if (op is None) == (state is None):
            raise ValueError("give exactly one of op, state")
        hold = Hold(times, timeout)
        self._holds.append(hold)
        if op is not None:
            self.on_request(op, hold)
        else:
            self.on_state(state, hold)
        return hold

    def _run_hooks(self, call: Call) -> None:
        for callback in list(self._request_hooks.get(call.op or "", [])):
            callback(call, call.state if call.op == "get" else None)
        if call.op == "get" and call.state is not None:
            for callback in list(self._state_hooks.get(call.state, [])):
                callback(call, call.state)

    # -- inspection ------------------------------------------------------------------------------
    def count(self, op: str) -> int:
        """How many requests of `op` (create, get, list, cancel, delete) arrived (failed ones included)."""
        return sum(1 for c in self.calls if c.op == op)

    def job(self, name: str) -> Job:
        with self._lock:
            return self.jobs[name.rsplit("/", 1)[-1]]

    # -- the clock ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                for job in list(self.jobs.values()):
                    try:
                        self._advance(job)
                    except Exception:  # pragma: no cover - a broken job must not stop the clock
                        pass

    def _wall(self, t: float) -> datetime:
        return self._t0[1] + timedelta(seconds=t - self._t0[0])

    def _stamp(self, t: float | None) -> str | None:
        if t is None:
            return None
        return self._wall(t).isoformat(timespec="microseconds").replace("+00:00", "Z")

    def _set(self, job: Job, state: str, at: float) -> None:
        job.state = state
        job.history.append(state)
        job.updated = at

    def _advance(self, job: Job) -> None:
        """Move `job` along its timeline up to now (transitions stamped at their scheduled time)."""
        now = self.clock()
        while True:
            st = job.state
            if st == "JOB_STATE_QUEUED" and now >= job.queued_until:
                self._set(job, "JOB_STATE_PENDING", job.queued_until)
            elif st == "JOB_STATE_PENDING" and now >= job.pending_until:
                if job.outcome == "EXPIRED" and job.output_rows is None:  # expired in the queue: never ran
                    self._set(job, "JOB_STATE_EXPIRED", job.pending_until)
                    job.ended = job.pending_until
                else:
                    job.started = job.pending_until
                    self._set(job, "JOB_STATE_RUNNING", job.started)
                    self._start(job)
            elif st == "JOB_STATE_RUNNING":
                job.processed = self._progress(job, now)
                if now < job.started + job.running_seconds:
                    break
                if job.outcome == "CANCELLED":  # cancelled by someone else half-way: half the rows are kept
                    job.processed = len(job.results) // 2
                self._finish(job, job.outcome, job.started + job.running_seconds)
            elif st == "JOB_STATE_CANCELLING" and now >= job.cancel_at + job.cancel_seconds:
                self._finish(job, "CANCELLED", job.cancel_at + job.cancel_seconds)
            else:
                break

    def _progress(self, job: Job, now: float) -> int:
        total = len(job.results)
        if job.running_seconds <= 0:
            return total
        return min(total, int(total * (now - job.started) / job.running_seconds + 1e-9))

    def _fail(self, job: Job, at: float, code: int, message: str) -> None:
        job.error = job.error or {"code": code, "message": message}
        job.ended = at
        self._set(job, "JOB_STATE_FAILED", at)

    def _start(self, job: Job) -> None:
        """Read and answer the input (the output is written when the job ends)."""
        uri = job.input_uri
        if not self.tables.exists(uri):
            return self._fail(job, job.started, 3, f"Failed to import data. Not found: Table {uri[5:]} was not found.")
        columns = self.tables.columns(uri)
        needed = "content" if job.embedding else "request"
        if needed not in [c.name for c in columns]:
            return self._fail(job, job.started, 3, f"Failed to import data. The input table has no `{needed}` column.")
        bad = [c for c in columns if c.type.split("<")[0] in _FORBIDDEN_INPUT_TYPES]
        if bad:
            return self._fail(
                job, job.started, 3, f"Failed to import data. Unsupported column type {bad[0].type} of {bad[0].name}."
            )
        try:
            data = self.tables.read(uri)
            job.columns, job.input = columns, data.select([c.name for c in columns])
            if job.embedding:
                fields = [f for f in embeddings.INSTANCE_FIELDS if f in data.column_names]
                for row in data.select(fields).to_pylist():
                    job.results.append(embeddings.answer(row, job.model, job.parameters, self.row_rules))
                return
            texts = data.column("request").to_pylist()
            model, total = job.model.rsplit("/", 1)[-1], len(texts)
            for i, text in enumerate(texts):
                job.results.append(answer(text, model, self.row_rules, self._stamp(_row_at(job, i, total))))
        except Exception as exc:
            self._fail(job, job.started, 13, f"Internal error: {type(exc).__name__}: {exc}")

    def _rows_to_write(self, job: Job, outcome: str) -> int | None:
        """How many leading rows end up in the output table (None: no table); see `next_job_output_rows`."""
        total = len(job.results)
        if job.output_rows is not None:
            return min(job.output_rows, total)
        if outcome == "SUCCEEDED":
            return total
        if outcome == "PARTIALLY_SUCCEEDED":
            return total - max(1, total // 3) if total else 0
        if outcome == "CANCELLED":
            return job.processed if job.started is not None else None
        return None  # FAILED, EXPIRED

    def _finish(self, job: Job, outcome: str, at: float) -> None:
        if outcome == "PAUSED":
            self._set(job, "JOB_STATE_PAUSED", at)
            return
        if job.started is None and job.output_rows is not None:  # cancelled while pending, rows asked for
            job.started = at
            self._start(job)
            if job.state == "JOB_STATE_FAILED":
                return
        rows = self._rows_to_write(job, outcome)
        if rows is not None:
            if self.tables.exists(job.output_table_uri):
                return self._fail(job, at, 3, f"Failed to export data: table {job.output_table_uri[5:]} already exists.")
            try:
                self._write(job, rows)
            except Exception as exc:
                return self._fail(job, at, 13, f"Failed to export data: {type(exc).__name__}: {exc}")
        job.written = rows
        if outcome == "FAILED":
            return self._fail(job, at, 13, "Batch prediction job failed: internal error while running predictions.")
        if outcome == "CANCELLED":
            job.error = job.error or {"code": 1, "message": "CANCELED"}
        job.ended = at
        self._set(job, f"JOB_STATE_{outcome}", at)

    def _write(self, job: Job, rows: int) -> None:
        """Create the output table with the first `rows` rows (contract §2.2 columns)."""
        results = job.results[:rows]
        head = job.input.slice(0, rows)
        if job.embedding:  # contract §3: input columns, predictions (JSON text), status
            extra = [pa.array([embeddings.predictions_text(r) for r in results], pa.string()),
                     pa.array([r.status for r in results], pa.string())]
            names = [c.name for c in job.columns] + [name for name, _ in embeddings.OUTPUT_COLUMNS]
            table = pa.Table.from_arrays([head.column(i) for i in range(head.num_columns)] + extra, names=names)
            self.tables.create_output(job.output_table_uri, job.columns + [
                Column(name, kind) for name, kind in embeddings.OUTPUT_COLUMNS], table)
            for row, result in zip(head.to_pylist(), results):
                self.answers.append(Answer(job.name, job.output_table_uri, row, result.response, result.status,
                                           result.outcome))
            return
        times = [self._wall(_row_at(job, i, len(job.results))) for i in range(rows)]
        extra = [
            pa.array([json.dumps(r.response, ensure_ascii=False) if r.response is not None else None for r in results],
                     pa.string()),
            pa.array([r.status for r in results], pa.string()),
            pa.array(times, pa.timestamp("us", tz="UTC")),
        ]
        names = [c.name for c in job.columns] + [name for name, _ in OUTPUT_COLUMNS]
        table = pa.Table.from_arrays([head.column(i) for i in range(head.num_columns)] + extra, names=names)
        columns = job.columns + [Column(name, kind) for name, kind in OUTPUT_COLUMNS]
        self.tables.create_output(job.output_table_uri, columns, table)
        for row, result in zip(head.to_pylist(), results):
            self.answers.append(Answer(job.name, job.output_table_uri, row, result.response, result.status, result.outcome))

    # -- REST ----------------------------------------------------------------------------------------
    def _to_json(self, job: Job) -> dict:
        out: dict[str, Any] = {
            "name": job.name,
            "displayName": job.display_name,
            "model": job.model,
            "inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": job.input_uri}},
            "outputConfig": {"predictionsFormat": "bigquery", "bigqueryDestination": {"outputUri": job.output_uri}},
            "state": job.state,
            "createTime": self._stamp(job.created),
            "updateTime": self._stamp(job.updated),
        }
        if job.started is not None:
            out["startTime"] = self._stamp(job.started)
            ds = job.output_table_uri.rsplit(".", 1)[0]
            table = job.output_table_uri if self.output_table_format == "uri" else job.output_table_uri.rsplit(".", 1)[1]
            out["outputInfo"] = {"bigqueryOutputDataset": ds, "bigqueryOutputTable": table}
            # while running: the rows done so far; once ended: the rows in the output table
            done = (job.written or 0) if job.ended is not None else job.processed
            ok = sum(1 for r in job.results[:done] if r.status == "")
            stats = {
                "successfulCount": str(ok),
                "failedCount": str(done - ok),
                "incompleteCount": str(len(job.results) - done),
            }
            out["completionStats"] = {k: v for k, v in stats.items() if v != "0"}  # proto3 omits zeros
        if job.ended is not None:
            out["endTime"] = self._stamp(job.ended)
        if job.error and job.state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            out["error"] = job.error
        if job.state == "JOB_STATE_PARTIALLY_SUCCEEDED":
            out["partialFailures"] = [{"code": 13, "message": "Some predictions could not be written."}]
        if job.labels:
            out["labels"] = dict(job.labels)
        return out

    def _create(self, project: str, location: str, body: Any) -> tuple[Job, dict]:
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received.")
        unknown = sorted(set(body) - _KNOWN_FIELDS)
        if unknown:
            raise ApiError(400, f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
        if location == "global":
            raise ApiError(400, "BigQuery input and output are not supported for batch jobs on the global endpoint.")
        display = body.get("displayName")
        if not display:
            raise ApiError(400, "BatchPredictionJob.display_name is required.")
        model = body.get("model") or ""
        if not _MODEL.match(model):
            raise ApiError(400, f"Invalid model name {model!r}.")
        if re.match(r"^(gemini-embedding-|multimodalembedding)", model.rsplit("/", 1)[-1]):
            raise ApiError(400, f"Model {model} does not support BigQuery input for batch prediction; "
                                "use JSONL files in Cloud Storage.")
        parameters = body.get("modelParameters") or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, "Invalid JSON payload received. modelParameters must be an object.")
        inp, outp = body.get("inputConfig") or {}, body.get("outputConfig") or {}
        input_uri = (inp.get("bigquerySource") or {}).get("inputUri") or ""
        output_uri = (outp.get("bigqueryDestination") or {}).get("outputUri") or ""
        if inp.get("instancesFormat") != "bigquery" or not re.fullmatch(r"bq://[^.]+\.[^.]+\.[^.]+", input_uri):
            raise ApiError(400, "The emulator supports BigQuery input `bq://project.dataset.table` only.")
        if outp.get("predictionsFormat") != "bigquery" or not re.fullmatch(r"bq://[^.]+(\.[^.]+){0,2}", output_uri):
            raise ApiError(400, "The emulator supports BigQuery output `bq://project[.dataset[.table]]` only.")
        labels = body.get("labels") or {}
        for k, v in labels.items():
            if not _LABEL_KEY.match(k) or not isinstance(v, str) or not _LABEL_VALUE.match(v):
                raise ApiError(400, f"Invalid label {k}={v!r}.")
        now = self.clock()
        job_id = str(1_000_000_000_000_000_000 + next(self._ids) * 7919)
        stamp = self._stamp(now).replace("-", "_").replace(":", "_").replace(".", "_")
        parts = output_uri[5:].split(".")
        if len(parts) == 1:  # Vertex creates a dataset, then a table in it
            parts.append(f"prediction_{model.rsplit('/', 1)[-1].replace('-', '_').replace('.', '_')}_{stamp}")
            self.tables.ensure_dataset(parts[0], parts[1])
        if len(parts) == 2:
            parts.append(f"predictions_{stamp}")
        table_uri = "bq://" + ".".join(parts)
        for other in self.jobs.values():
            if other.output_table_uri == table_uri and other.state not in TERMINAL:
                raise ApiError(400, f"BigQuery table {table_uri[5:]} is the destination of running job {other.name}.")
        if self.tables.exists(table_uri):
            raise ApiError(400, f"BigQuery table {table_uri[5:]} already exists. Please use a new table.")
        outcome = (self.next_job_outcome or "SUCCEEDED").upper()
        if outcome not in OUTCOMES:
            raise ValueError(f"next_job_outcome must be one of {OUTCOMES}")
        output_rows = self.next_job_output_rows
        if output_rows is not None and (not isinstance(output_rows, int) or output_rows < 0):
            raise ValueError("next_job_output_rows must be None or an int >= 0")
        job = Job(
            name=f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}",
            display_name=display,
            model=model,
            input_uri=input_uri,
            output_uri=output_uri,
            output_table_uri=table_uri,
            labels=dict(labels),
            outcome=outcome,
            output_rows=output_rows,
            error=self.next_job_error,
            created=now,
            queued_until=now + self.queued_seconds,
            pending_until=now + self.queued_seconds + self.pending_seconds,
            running_seconds=self.running_seconds,
            cancel_seconds=self.cancel_seconds,
            state="JOB_STATE_QUEUED" if self.queued_seconds > 0 else "JOB_STATE_PENDING",
            updated=now,
        )
        job.parameters = dict(parameters)
        job.history.append(job.state)
        self.next_job_outcome = self.next_job_error = self.next_job_output_rows = None
        self.jobs[job_id] = job
        return job, self._to_json(job)

    def _lookup(self, project: str, location: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.name != f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}":
            raise ApiError(404, f"The BatchPredictionJob does not exist: projects/{project}/locations/{location}/batchPredictionJobs/{job_id}")
        self._advance(job)
        return job

    def _list(self, project: str, location: str, query: dict[str, list[str]]) -> dict:
        terms = _parse_filter(query.get("filter", [""])[0])
        prefix = f"projects/{project}/locations/{location}/"
        for job in self.jobs.values():
            self._advance(job)
        jobs = [j for j in self.jobs.values() if j.name.startswith(prefix) and all(t(j) for t in terms)]
        jobs.sort(key=lambda j: (j.created, j.name), reverse=True)
        size = int(query.get("pageSize", ["100"])[0] or 100)
        size = max(1, min(size, self.max_page_size))
        token = query.get("pageToken", [""])[0]
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise ApiError(400, "Invalid page token.") from None
        page = jobs[start : start + size]
        out: dict[str, Any] = {}
        if page:
            out["batchPredictionJobs"] = [self._to_json(j) for j in page]
        if start + size < len(jobs):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return out

    def _cancel(self, job: Job) -> dict:
        if job.state in TERMINAL:
            # INFERRED: the contract does not give Vertex's text for this; code and status are google.rpc's
            # FAILED_PRECONDITION (the operation is refused in the resource's current state).
            raise ApiError(400, f"The BatchPredictionJob is already in a terminal state: {job.state}.",
                           "FAILED_PRECONDITION")
        if job.state != "JOB_STATE_CANCELLING":
            job.cancel_at = self.clock()
            job.processed = self._progress(job, job.cancel_at) if job.started is not None else 0
            self._set(job, "JOB_STATE_CANCELLING", job.cancel_at)
        return {}

    def _delete(self, job: Job) -> dict:
        if job.state not in TERMINAL and job.state != "JOB_STATE_PAUSED":
            raise ApiError(400, f"Cannot delete {job.name} in state {job.state}.", "FAILED_PRECONDITION")
        del self.jobs[job.name.rsplit("/", 1)[-1]]
        return {
            "name": f"{job.name}/operations/{next(self._ids)}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1beta1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": self._stamp(self.clock()), "updateTime": self._stamp(self.clock())},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[int, Any]:
        """Route one request; returns (HTTP status, JSON body) or (0, None) to drop the connection."""
        call, status, body = self._dispatch(method, raw_path, headers, raw_body)
        return status, body

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[Call, int, Any]:
        call, (status, body) = self._route(method, raw_path, headers, raw_body)
        call.status_code = status
        if status == 200 and isinstance(body, dict) and call.op in ("create", "get"):
            call.state = body.get("state")
        return call, status, body

    def _route(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[Call, tuple[int, Any]]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode(errors="replace")
        m = _PATH.match(parts.path)
        op = None
        if m:
            op = {
                ("POST", False, False): "create",
                ("GET", False, False): "list",
                ("GET", True, False): "get",
                ("POST", True, True): "cancel",
                ("DELETE", True, False): "delete",
            }.get((method, m["id"] is not None, m["cancel"] is not None))
        with self._lock:
            call = Call(method, parts.path, query, body, dict(headers), op)
            self.calls.append(call)
            return call, self._answer_call(call, m, headers, query, body)

    def _answer_call(self, call: Call, m: re.Match | None, headers: dict[str, str], query: dict, body: Any) -> tuple[int, Any]:
        op = call.op
        try:
            if op is None or m is None:
                raise ApiError(404, f"No route for {call.method} {call.path}.")
            if not headers.get("authorization", "").startswith("Bearer ") and "x-goog-api-key" not in headers:
                raise ApiError(401, "Request is missing required authentication credential.")
            fault = self.faults.take(op)
            if fault is not None:
                return (0, None) if fault == "drop" else _error(int(fault), f"Injected fault on {op}.")
            p, l = m["p"], m["l"]
            if op == "create":
                _job, result = self._create(p, l, body)
                after = self.faults.take("create_after_commit")
                if after is None and self.faults.create_timeout_after_commit:
                    self.faults.create_timeout_after_commit, after = False, "drop"
                if after is not None:
                    return (0, None) if after == "drop" else _error(int(after), "Injected fault after commit.")
                return 200, result
            if op == "list":
                return 200, self._list(p, l, query)
            job = self._lookup(p, l, m["id"])
            if op == "get":
                return 200, self._to_json(job)
            if op == "cancel":
                return 200, self._cancel(job)
            return 200, self._delete(job)
        except ApiError as exc:
            return _error(exc.code, exc.message, exc.status)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emu: VertexEmulator

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        call, status, body = self.emu._dispatch(self.command, self.path, headers, raw)
        self.emu._run_hooks(call)  # outside the lock: a hook may block while the client is killed
        if status == 0:  # drop: no answer at all, as after a timeout or a reset
            self.close_connection = True
            return
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client died while its answer was held
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


# -- helpers ----------------------------------------------------------------------------------------
def make_client(base_url: str, project: str = PROJECT, location: str = LOCATION, api_version: str | None = None):
    """`genai.Client(vertexai=True, ...)` with a static bearer token, talking to `base_url`."""
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        credentials=google.oauth2.credentials.Credentials(token="test"),
        http_options=types.HttpOptions(base_url=base_url, api_version=api_version),
    )


def _row_at(job: Job, i: int, total: int) -> float:
    """When row `i` of `total` is processed: rows finish evenly over the running time."""
    return job.started + job.running_seconds * (i + 1) / max(total, 1)


def _error(code: int, message: str, status: str | None = None) -> tuple[int, dict]:
    """A google.rpc error body."""
    return code, {"error": {"code": code, "message": message, "status": status or _RPC_STATUS.get(code, "UNKNOWN")}}


def _parse_filter(text: str) -> list[Callable[[Job], bool]]:
    """The list filter subset: `labels.k="v"`, `labels.k:*`, `state=...`, `display_name=...`, joined by AND."""
    terms: list[Callable[[Job], bool]] = []
    for raw in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        m = _FILTER_TERM.match(raw.strip())
        if not m:
            raise ApiError(400, f"Unsupported filter: {raw!r}.")
        fld, op, value = m["field"], m["op"], m["value"].strip('"')
        if fld.startswith("labels."):
            key = fld[len("labels."):]
            get = (lambda k: lambda j: j.labels.get(k))(key)
        elif fld in ("state", "display_name", "displayName", "model"):
            attr = {"display_name": "display_name", "displayName": "display_name"}.get(fld, fld)
            get = (lambda a: lambda j: getattr(j, a))(attr)
        else:
            raise ApiError(400, f"Unsupported filter field: {fld!r}.")
        if op == ":" and value == "*":
            terms.append(lambda j, g=get: g(j) is not None)
        elif op == ":" and value.endswith("*"):
            terms.append(lambda j, g=get, v=value[:-1]: (g(j) or "").startswith(v))
        elif op == "!=":
            terms.append(lambda j, g=get, v=value: g(j) != v)
        else:
            terms.append(lambda j, g=get, v=value: g(j) == v)
    return terms


@pytest.fixture
def vertex_emulator(tmp_path) -> Iterator[VertexEmulator]:
    """A started emulator over a DuckDB file at `tmp_path` (dataset `ds` exists); short job durations."""
    tables = DuckDBTables(tmp_path / "vertex.duckdb")
    tables.ensure_dataset(PROJECT, "ds")
    emu = VertexEmulator(tables, pending_seconds=0.2, running_seconds=0.2).start()
    try:
        yield emu
    finally:
        emu.stop()
