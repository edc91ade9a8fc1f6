"""A Vertex AI batch prediction emulator on 127.0.0.1, for tests (contract: shared/contract/vertex-batch.md §4).

It serves the REST surface google-genai calls on Vertex, under `/v1beta1/` and `/v1/`:

    POST   /{v}/projects/{p}/locations/{l}/batchPredictionJobs              create
    GET    /{v}/projects/{p}/locations/{l}/batchPredictionJobs              list (filter, pageSize, pageToken)
    GET    /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}         get
    POST   /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel  cancel
    DELETE /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}         delete (returns an Operation)

with proto3 JSON (camelCase, int64 as strings, default values omitted) and google.rpc error bodies.
Jobs move [QUEUED →] PENDING → RUNNING → terminal on `clock` (`queued_seconds`, `pending_seconds`,
`running_seconds`, `cancel_seconds`, read when a job is created). On RUNNING a job reads its input table
through a `Warehouse` (`bq://p.d.t` → `warehouse.relation(t, d)`), answers each `request` with the
mock provider, and at the end writes the output table with Vertex's columns (input columns, `response`
JSON, `status` STRING, `processed_time` TIMESTAMP) through `warehouse.write_arrow`.

Test knobs (Python API on the emulator object):
- `emu.faults.<op> = [503, 429, "drop", ...]` for op in create/get/list/cancel/delete: consumed one per
  call, in order; an int answers with that HTTP error, "drop" closes the connection without an answer.
  A create fault creates nothing.
- `emu.faults.create_after_commit = [500 | "drop"]` / `emu.faults.create_timeout_after_commit = True`
  (one "drop"): the job IS created, then the error is returned (an ambiguous create).
- `emu.next_job_outcome = "FAILED" | "EXPIRED" | "PARTIALLY_SUCCEEDED" | "CANCELLED" | "PAUSED"` (next
  create only); `emu.next_job_error = {"code":..., "message":..., "details": [...]}` overrides the error.
- `emu.provider` (default `MockProvider({})`; pass `{"failures": [...]}` rules for row-level failures).
- `emu.output_table_format = "uri" | "name"`: `outputInfo.bigqueryOutputTable` as `bq://p.d.t` or bare.
- `emu.max_page_size` caps list pages; `emu.use_manual_clock()` freezes time (then `clock.advance(s)`).
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

from batchflow.batch.local import OUTPUT_FIELDS
from batchflow.batch.providers.base import Provider, ProviderResult, error_status
from batchflow.batch.providers.mock import MockProvider
from batchflow.relation import Relation
from batchflow.warehouse.base import Warehouse

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
OUTCOMES = ("SUCCEEDED", "FAILED", "EXPIRED", "PARTIALLY_SUCCEEDED", "CANCELLED", "PAUSED")
TERMINAL = {f"JOB_STATE_{s}" for s in ("SUCCEEDED", "FAILED", "EXPIRED", "PARTIALLY_SUCCEEDED", "CANCELLED")}


class ManualClock:
    """A clock that moves only when told (`advance`), for tests that step a job through its states."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    """One HTTP request as the emulator received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    op: str | None  # create | get | list | cancel | delete | None (unrouted)


@dataclass
class Job:
    """One emulated batch prediction job (times are `clock` values)."""

    name: str
    display_name: str
    model: str
    input_uri: str
    output_uri: str
    output: Relation
    output_table_uri: str
    labels: dict[str, str]
    outcome: str
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
    batches: list[pa.RecordBatch] = field(default_factory=list)
    schema: pa.Schema | None = None
    json_columns: list[str] = field(default_factory=list)
    row_ok: list[bool] = field(default_factory=list)
    processed: int = 0
    written: bool = False


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}.get(code, "INTERNAL")


class VertexEmulator:
    """The emulator: `start()` serves on 127.0.0.1 (`url`), `stop()` shuts it down."""

    def __init__(
        self,
        warehouse: Warehouse,
        *,
        provider: Provider | None = None,
        queued_seconds: float = 0.0,
        pending_seconds: float = 0.2,
        running_seconds: float = 0.2,
        cancel_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.warehouse = warehouse
        self.provider: Provider = provider or MockProvider({})
        self.queued_seconds = queued_seconds
        self.pending_seconds = pending_seconds
        self.running_seconds = running_seconds
        self.cancel_seconds = cancel_seconds
        self.clock = clock
        self.faults = Faults()
        self.next_job_outcome: str | None = None
        self.next_job_error: dict | None = None
        self.output_table_format = "uri"
        self.max_page_size = 100
        self.calls: list[Call] = []
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._t0 = (clock(), datetime.now(timezone.utc))
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

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
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(5)
        self._server = None

    def use_manual_clock(self, start: float = 0.0) -> ManualClock:
        """Freeze time: jobs move only when the returned clock advances (call before creating jobs)."""
        with self._lock:
            clock = ManualClock(start)
            self.clock = clock
            self._t0 = (start, self._t0[1])
            return clock

    def client(self, project: str = PROJECT, location: str = LOCATION, api_version: str | None = None):
        """A real `genai.Client` pointed at this emulator (contract §4.4 loopback setup)."""
        return make_client(self.url, project, location, api_version)

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

    def _stamp(self, t: float | None) -> str | None:
        if t is None:
            return None
        wall = self._t0[1] + timedelta(seconds=t - self._t0[0])
        return wall.isoformat(timespec="microseconds").replace("+00:00", "Z")

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
                if job.outcome == "EXPIRED":
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
                    job.processed = len(job.row_ok) // 2
                self._finish(job, job.outcome, job.started + job.running_seconds)
            elif st == "JOB_STATE_CANCELLING" and now >= job.cancel_at + job.cancel_seconds:
                self._finish(job, "CANCELLED", job.cancel_at + job.cancel_seconds)
            else:
                break

    def _progress(self, job: Job, now: float) -> int:
        total = len(job.row_ok)
        if job.running_seconds <= 0:
            return total
        return min(total, int(total * (now - job.started) / job.running_seconds + 1e-9))

    def _fail(self, job: Job, at: float, code: int, message: str) -> None:
        job.error = job.error or {"code": code, "message": message}
        job.ended = at
        self._set(job, "JOB_STATE_FAILED", at)

    def _start(self, job: Job) -> None:
        """Read and answer the input (the output is written when the job ends)."""
        source = _relation(self.warehouse, job.input_uri)
        if self.warehouse.kind(source) is None:
            return self._fail(job, job.started, 3, f"Failed to import data. Not found: Table {job.input_uri[5:]} was not found.")
        columns = self.warehouse.columns(source)
        names = [c.name for c in columns]
        if "request" not in names:
            return self._fail(job, job.started, 3, "Failed to import data. The input table has no `request` column.")
        bad = [c for c in columns if c.type.split("<")[0] in _FORBIDDEN_INPUT_TYPES]
        if bad:
            return self._fail(
                job, job.started, 3, f"Failed to import data. Unsupported column type {bad[0].type} of {bad[0].name}."
            )
        try:
            batches = list(self.warehouse.iter_batches(f"select * from {source.render()}"))
            schema = pa.schema(list(batches[0].schema)) if batches else self.warehouse.query_arrow(
                f"select * from {source.render()} limit 0").schema
            schema = pa.schema(list(schema))  # drop engine metadata
            job.schema = pa.schema(list(schema) + list(OUTPUT_FIELDS))
            job.json_columns = ["response"] + [c.name for c in columns if c.type == "JSON"]
            model = job.model.rsplit("/", 1)[-1]  # the mock hashes the short name, as the local backend does
            for batch in batches:
                out, ok = _answer(self.provider, model, batch, schema, job.schema, self._stamp(job.started))
                job.batches.append(out)
                job.row_ok.extend(ok)
        except Exception as exc:
            self._fail(job, job.started, 13, f"Internal error: {type(exc).__name__}: {exc}")

    def _finish(self, job: Job, outcome: str, at: float) -> None:
        if outcome == "PAUSED":
            self._set(job, "JOB_STATE_PAUSED", at)
            return
        if outcome == "FAILED":
            return self._fail(job, at, 13, "Batch prediction job failed: internal error while running predictions.")
        if outcome == "CANCELLED":
            job.error = job.error or {"code": 1, "message": "CANCELED"}
        else:
            job.processed = len(job.row_ok)
        if job.started is not None:
            rows = job.processed
            target = _relation(self.warehouse, job.output_table_uri)
            if self.warehouse.kind(target) is not None:
                return self._fail(job, at, 3, f"Failed to export data: table {job.output_table_uri[5:]} already exists.")
            try:
                self.warehouse.write_arrow(target, _head(job.batches, rows), job.schema, json_columns=job.json_columns)
                job.written = True
            except Exception as exc:
                return self._fail(job, at, 13, f"Failed to export data: {type(exc).__name__}: {exc}")
        job.ended = at
        self._set(job, f"JOB_STATE_{outcome}", at)

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
            ok = sum(job.row_ok[: job.processed])
            stats = {
                "successfulCount": str(ok),
                "failedCount": str(job.processed - ok),
                "incompleteCount": str(len(job.row_ok) - job.processed),
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
            self.warehouse.ensure_schema(parts[1])
        if len(parts) == 2:
            parts.append(f"predictions_{stamp}")
        table_uri = "bq://" + ".".join(parts)
        for other in self.jobs.values():
            if other.output_table_uri == table_uri and other.state not in TERMINAL:
                raise ApiError(400, f"BigQuery table {table_uri[5:]} is the destination of running job {other.name}.")
        if self.warehouse.kind(_relation(self.warehouse, table_uri)) is not None:
            raise ApiError(400, f"BigQuery table {table_uri[5:]} already exists. Please use a new table.")
        outcome = (self.next_job_outcome or "SUCCEEDED").upper()
        if outcome not in OUTCOMES:
            raise ValueError(f"next_job_outcome must be one of {OUTCOMES}")
        job = Job(
            name=f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}",
            display_name=display,
            model=model,
            input_uri=input_uri,
            output_uri=output_uri,
            output=_relation(self.warehouse, table_uri),
            output_table_uri=table_uri,
            labels=dict(labels),
            outcome=outcome,
            error=self.next_job_error,
            created=now,
            queued_until=now + self.queued_seconds,
            pending_until=now + self.queued_seconds + self.pending_seconds,
            running_seconds=self.running_seconds,
            cancel_seconds=self.cancel_seconds,
            state="JOB_STATE_QUEUED" if self.queued_seconds > 0 else "JOB_STATE_PENDING",
            updated=now,
        )
        job.history.append(job.state)
        self.next_job_outcome = self.next_job_error = None
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
            raise ApiError(400, f"Cannot cancel {job.name} in state {job.state}.", "FAILED_PRECONDITION")
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
            self.calls.append(Call(method, parts.path, query, body, dict(headers), op))
            try:
                if op is None:
                    raise ApiError(404, f"No route for {method} {parts.path}.")
                if not headers.get("authorization", "").startswith("Bearer ") and "x-goog-api-key" not in headers:
                    raise ApiError(401, "Request is missing required authentication credential.")
                fault = self.faults.take(op)
                if fault is not None:
                    return (0, None) if fault == "drop" else _error(int(fault), f"Injected fault on {op}.")
                p, l = m["p"], m["l"]
                if op == "create":
                    job, result = self._create(p, l, body)
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
        status, body = self.emu.handle(self.command, self.path, headers, raw)
        if status == 0:  # drop: no answer at all, as after a timeout or a reset
            self.close_connection = True
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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


def _relation(warehouse: Warehouse, uri: str) -> Relation:
    _project, dataset, table = uri.removeprefix("bq://").split(".")
    return warehouse.relation(table, dataset)


def _error(code: int, message: str, status: str | None = None) -> tuple[int, dict]:
    from batchflow.batch.providers.base import rpc_status

    return code, {"error": {"code": code, "message": message, "status": status or rpc_status(code)}}


def _head(batches: list[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if rows <= 0:
            return
        yield batch.slice(0, rows) if batch.num_rows > rows else batch
        rows -= batch.num_rows


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


def _answer(
    provider: Provider, model: str, batch: pa.RecordBatch, in_schema: pa.Schema, out_schema: pa.Schema, stamp: str
) -> tuple[pa.RecordBatch, list[bool]]:
    """One input batch → its output batch (Vertex's columns) and per-row success flags.
    The same row rules as `batchflow.batch.local` (which exposes no function for them)."""
    texts = batch.column(batch.schema.get_field_index("request")).to_pylist()
    responses: list[str | None] = [None] * len(texts)
    statuses = [""] * len(texts)
    requests, positions = [], []
    for i, text in enumerate(texts):
        try:
            request = json.loads(text) if text is not None else None
        except ValueError as exc:
            statuses[i] = error_status(400, f"Invalid JSON payload received. {exc}", "INVALID_ARGUMENT")
            continue
        if not isinstance(request, dict):
            statuses[i] = error_status(400, "Invalid JSON payload received. Request is not a JSON object.")
            continue
        requests.append(request)
        positions.append(i)
    results: list[ProviderResult] = provider.generate(model, requests) if requests else []
    for i, result in zip(positions, results):
        if result.status:
            statuses[i] = result.status
        else:
            responses[i] = result.response_text()
    processed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    columns = [batch.column(batch.schema.get_field_index(f.name)).cast(f.type) for f in in_schema]
    out = pa.RecordBatch.from_arrays(
        columns
        + [
            pa.array(responses, pa.string()),
            pa.array(statuses, pa.string()),
            pa.array([processed] * len(texts), pa.timestamp("us", tz="UTC")),
        ],
        schema=out_schema,
    )
    return out, [s == "" for s in statuses]


@pytest.fixture
def vertex_emulator(tmp_path) -> Iterator[VertexEmulator]:
    """A started emulator over a DuckDB warehouse at `tmp_path` (dataset `ds`); short job durations."""
    from batchflow.warehouse.duckdb import DuckDBWarehouse

    warehouse = DuckDBWarehouse(tmp_path / "vertex.duckdb", schema="ds")
    emu = VertexEmulator(warehouse, pending_seconds=0.2, running_seconds=0.2).start()
    try:
        yield emu
    finally:
        emu.stop()
        warehouse.close()
