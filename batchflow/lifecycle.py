"""The batch lifecycle of one batch model: build → validate → collect → diff → shard → submit →
wait → land → results → report.

Each stage is a method with one job, so a run can be followed (and tested) stage by stage. All SQL
here is BigQuery SQL handed to the warehouse adapter; the backend only creates and polls jobs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from batchflow.batch.base import BatchBackend, JobSpec, JobState, JobStatus
from batchflow.compiler import Node, batch_results_relations
from batchflow.errors import BatchflowError, ConfigError, ExecutionError, RequestValidationError
from batchflow.ledger import LANDED, LOST, SUBMITTING, Ledger, LedgerEntry
from batchflow.relation import Relation, string_literal
from batchflow.requests import check_columns
from batchflow.warehouse.base import Warehouse

VERTEX_MAX_ROWS_PER_JOB = 200_000
BOOKKEEPING_COLUMNS = ("request_hash", "job_name", "model_name", "attempt")
# Row errors worth sending again: rate limits, server errors, not-yet-ready projects.
RETRYABLE_STATUS = r'"code":\s*(429|5[0-9][0-9])|RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|FAILED_PRECONDITION'
MAX_REPORTED_INVALID = 20

ProgressFn = Callable[[str, int, int, int], None]  # (state, done, failed, total)
MacroFn = Callable[..., str]


@dataclass
class BatchSettings:
    """A batch model's configuration, with defaults and limits applied."""

    model: str
    key: list[str]
    max_rows_per_job: int = 100_000
    max_concurrent_jobs: int = 4
    max_attempts: int = 3
    invalid_rows: str = "fail"  # or "skip"
    poll_interval: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], path: str) -> "BatchSettings":
        """Read and check `config(...)` of a batch model."""
        key = config.get("key") or []
        key = [key] if isinstance(key, str) else list(key)
        settings = cls(
            model=str(config["model"]),
            key=key,
            max_rows_per_job=int(config.get("max_rows_per_job", 100_000)),
            max_concurrent_jobs=int(config.get("max_concurrent_jobs", 4)),
            max_attempts=int(config.get("max_attempts", 3)),
            invalid_rows=str(config.get("invalid_rows", "fail")),
            poll_interval=float(config["poll_interval"]) if "poll_interval" in config else None,
        )
        if not 1 <= settings.max_rows_per_job <= VERTEX_MAX_ROWS_PER_JOB:
            raise ConfigError(
                f"max_rows_per_job must be between 1 and {VERTEX_MAX_ROWS_PER_JOB:,} (Vertex's limit)", path
            )
        if settings.max_concurrent_jobs < 1 or settings.max_attempts < 1:
            raise ConfigError("max_concurrent_jobs and max_attempts must be at least 1", path)
        if settings.invalid_rows not in ("fail", "skip"):
            raise ConfigError("invalid_rows must be 'fail' or 'skip'", path)
        return settings


@dataclass
class BatchReport:
    """What a batch model did in this run (goes to the terminal and run_results.json)."""

    rows_total: int = 0
    rows_invalid: int = 0
    rows_sent: int = 0  # distinct requests sent in this run
    rows_reused: int = 0  # distinct requests answered by an earlier run
    rows_duplicate: int = 0  # rows whose request is identical to another row's (answered once)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    total_tokens: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return dict(self.__dict__)


@dataclass
class _Shard:
    index: int
    entry: LedgerEntry
    input: Relation
    output: Relation
    status: JobStatus | None = None


class BatchLifecycle:
    """Runs one batch model end to end against a warehouse, a backend and the ledger."""

    def __init__(
        self,
        node: Node,
        warehouse: Warehouse,
        backend: BatchBackend,
        ledger: Ledger,
        macro: MacroFn,
        run_id: str,
        progress: ProgressFn | None = None,
    ):
        self.node = node
        self.wh = warehouse
        self.backend = backend
        self.ledger = ledger
        self.macro = macro
        self.run_id = run_id
        self.progress = progress or (lambda *a: None)
        self.settings = BatchSettings.from_config(node.config, node.path)
        rels = batch_results_relations(node.relation)
        self.requests_rel = rels["requests"]
        self.responses_rel = rels["responses"]
        self.report = BatchReport()
        self._errors: list[str] = []

    # -- stages ------------------------------------------------------------------------------
    def run(self) -> BatchReport:
        """All stages in order. Raises ExecutionError after landing what it could if jobs failed."""
        self.build()
        self.validate()
        self.ensure_responses_table()
        self.collect_open_jobs()
        todo = self.diff()
        self.submit_and_wait(todo)
        self.build_results()
        self.summarise()
        if self._errors:
            raise ExecutionError("; ".join(self._errors))
        return self.report

    def build(self) -> None:
        """Stage 1: materialise the model's SELECT with a request hash per row."""
        hash_sql = self.wh.request_hash_sql("request", self.settings.model)
        sql = _strip(self.node.compiled_sql)
        self.wh.create_table_as(self.requests_rel, f"SELECT *, {hash_sql} AS request_hash FROM ({sql})")

    def validate(self) -> None:
        """Stage 1b: column rules, then every row; nothing paid happens when this fails."""
        columns = [c for c in self.wh.columns(self.requests_rel) if c.name != "request_hash"]
        problems = check_columns(columns)
        clash = [c.name for c in columns if c.name in BOOKKEEPING_COLUMNS]
        if clash:
            problems.append(f"column(s) {', '.join(clash)} are reserved for batchflow's bookkeeping")
        if problems:
            raise RequestValidationError("; ".join(problems), self.node.path)
        missing_key = [k for k in self.settings.key if k not in {c.name for c in columns}]
        if missing_key:
            raise ConfigError(f"key column(s) {', '.join(missing_key)} are not in the model's output", self.node.path)
        problem = self.wh.request_problem_sql("request")
        key_sql = self._key_sql()
        bad = self.wh.query_arrow(
            f"SELECT {key_sql} AS row_key, problem FROM ("
            f"SELECT *, {problem} AS problem FROM {self.requests_rel.render()}) WHERE problem IS NOT NULL "
            f"ORDER BY row_key LIMIT {MAX_REPORTED_INVALID + 1}"
        ).to_pylist()
        self.report.rows_total = self._count(self.requests_rel.render())
        if not bad:
            return
        self.report.rows_invalid = self._count(
            f"(SELECT {problem} AS problem FROM {self.requests_rel.render()}) WHERE problem IS NOT NULL"
        )
        listed = "; ".join(f"{self._key_label()}={r['row_key']}: {r['problem']}" for r in bad[:MAX_REPORTED_INVALID])
        more = self.report.rows_invalid - min(len(bad), MAX_REPORTED_INVALID)
        message = f"{self.report.rows_invalid} invalid request row(s): {listed}" + (f" (and {more} more)" if more > 0 else "")
        if self.settings.invalid_rows == "fail":
            raise RequestValidationError(message + "; nothing was submitted", self.node.path)
        self.report.warnings.append(message + "; those rows were skipped")

    def ensure_responses_table(self) -> None:
        """The model's store of every answer ever landed, keyed by request hash."""
        self.wh.execute(
            f"CREATE TABLE IF NOT EXISTS {self.responses_rel.render()} ("
            "request_hash STRING, request JSON, response JSON, status STRING, processed_time TIMESTAMP, "
            "job_name STRING, model_name STRING, attempt INT64, landed_at TIMESTAMP)"
        )

    def collect_open_jobs(self) -> None:
        """Stage 2a: jobs an earlier run submitted and did not land: adopt, wait for and land them."""
        shards: list[_Shard] = []
        for entry in self.ledger.entries(node=self.node.name, open_only=True):
            status = self._find_job(entry)
            if status is None:
                self.ledger.update(entry.job_key, state=LOST)
                continue
            shard = _Shard(entry.shard, entry, _parse_relation(entry.input_table), _parse_relation(entry.output_table), status)
            shards.append(shard)
        if shards:
            self._wait_and_land(shards, pending=[])

    def diff(self) -> Relation:
        """Stage 2b: the distinct requests that still need an answer, as a numbered table."""
        todo = self.requests_rel.with_identifier(f"{self.node.relation.identifier}__todo")
        where_valid = f"WHERE {self.wh.request_problem_sql('q.request')} IS NULL" if self.report.rows_invalid else ""
        self.wh.create_table_as(
            todo,
            f"SELECT request_hash, request, ROW_NUMBER() OVER (ORDER BY request_hash) AS shard_row FROM ("
            f"SELECT q.request_hash, ANY_VALUE(q.request) AS request FROM {self.requests_rel.render()} q "
            f"LEFT JOIN {self.responses_rel.render()} a ON a.request_hash = q.request_hash "
            f"{where_valid}{' AND' if where_valid else 'WHERE'} (a.request_hash IS NULL OR "
            f"(a.status != '' AND REGEXP_CONTAINS(a.status, r'{RETRYABLE_STATUS}') "
            f"AND a.attempt < {self.settings.max_attempts})) "
            "GROUP BY q.request_hash)",
        )
        to_send = self._count(todo.render())
        self.report.rows_sent = to_send
        distinct = self._count(f"(SELECT DISTINCT request_hash FROM {self.requests_rel.render()})")
        self.report.rows_duplicate = self.report.rows_total - distinct
        self.report.rows_reused = max(distinct - to_send - self.report.rows_invalid, 0)
        return todo

    def submit_and_wait(self, todo: Relation) -> None:
        """Stages 3–6: shard, record, submit at most `max_concurrent_jobs` at once, wait, land."""
        total = self.report.rows_sent
        size = self.settings.max_rows_per_job
        pending = [self._plan_shard(todo, i, start, min(start + size, total + 1)) for i, start in
                   enumerate(range(1, total + 1, size))]
        self._wait_and_land([], pending)
        self.wh.drop(todo)

    def build_results(self) -> None:
        """Stage 7a: the model's relation: each current request row with its latest answer."""
        self.wh.create_table_as(
            self.node.relation,
            f"SELECT q.* EXCEPT (request_hash), a.response, a.status, a.processed_time, q.request_hash, "
            f"a.job_name, a.model_name, a.attempt FROM {self.requests_rel.render()} q "
            f"LEFT JOIN {self.responses_rel.render()} a ON a.request_hash = q.request_hash",
        )

    def summarise(self) -> None:
        """Stage 7b: row outcomes and tokens of the model's current rows."""
        outcome = self.macro("row_outcome", "response", "status")
        tokens = self.macro("usage_tokens", "response", "totalTokenCount")
        rows = self.wh.query_arrow(
            f"SELECT CASE WHEN job_name IS NULL THEN 'missing' ELSE {outcome} END AS outcome, "
            f"COUNT(*) AS n, SUM({tokens}) AS tokens FROM {self.node.relation.render()} GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        self.report.outcomes = {r["outcome"]: int(r["n"]) for r in rows}
        self.report.total_tokens = int(sum(r["tokens"] or 0 for r in rows))

    # -- jobs --------------------------------------------------------------------------------
    def _plan_shard(self, todo: Relation, index: int, start: int, stop: int) -> _Shard:
        base = self.node.relation.identifier
        suffix = f"{self.run_id}_{index:04d}"
        shard_input = self.requests_rel.with_identifier(f"{base}__in_{suffix}")
        output = self.requests_rel.with_identifier(f"{base}__out_{suffix}")
        rows = self.wh.create_table_as(
            shard_input,
            f"SELECT request_hash, request FROM {todo.render()} WHERE shard_row >= {start} AND shard_row < {stop}",
        )
        fingerprint = self.wh.query_arrow(
            f"SELECT TO_HEX(SHA256(STRING_AGG(request_hash, ',' ORDER BY request_hash))) AS f FROM {shard_input.render()}"
        ).column("f")[0].as_py()
        entry = LedgerEntry(
            job_key=f"{self.run_id}-{_label(self.node.name)}-{index}",
            job_name=None,
            node=self.node.name,
            run_id=self.run_id,
            shard=index,
            gemini_model=self.settings.model,
            input_table=str(shard_input),
            output_table=str(output),
            fingerprint=fingerprint or "",
            state=SUBMITTING,
            row_count=rows,
        )
        return _Shard(index, entry, shard_input, output)

    def _labels(self, entry: LedgerEntry) -> dict[str, str]:
        return {
            "batchflow_run": _label(entry.run_id),
            "batchflow_node": _label(entry.node),
            "batchflow_shard": str(entry.shard),
            "batchflow_job_key": _label(entry.job_key),
        }

    def _submit(self, shard: _Shard) -> None:
        # Record the intent first: if we die between create() and the update below, the next
        # run finds the job by its labels instead of creating a second, paid one.
        self.ledger.record(shard.entry)
        spec = JobSpec(
            model=self.settings.model,
            input=shard.input,
            output=shard.output,
            display_name=f"batchflow-{shard.entry.job_key}"[:128],
            labels=self._labels(shard.entry),
        )
        try:
            shard.status = self.backend.submit(spec)
        except BatchflowError as exc:
            self.ledger.update(shard.entry.job_key, state="FAILED", error=str(exc))
            raise
        shard.entry.job_name = shard.status.name
        self.ledger.update(shard.entry.job_key, job_name=shard.status.name, state=shard.status.state.value)

    def _find_job(self, entry: LedgerEntry) -> JobStatus | None:
        if entry.job_name:
            try:
                return self.backend.get(entry.job_name)
            except BatchflowError:
                return None
        found = self.backend.list({"batchflow_job_key": _label(entry.job_key)})
        if found:
            self.ledger.update(entry.job_key, job_name=found[0].name, state=found[0].state.value)
            entry.job_name = found[0].name
            return found[0]
        return None

    def _wait_and_land(self, active: list[_Shard], pending: list[_Shard]) -> None:
        total = sum(s.entry.row_count for s in active + pending)
        finished_rows = 0
        interval = self.settings.poll_interval or getattr(self.backend, "poll_interval", 5.0)
        delay = interval
        while active or pending:
            while pending and len(active) < self.settings.max_concurrent_jobs:
                shard = pending.pop(0)
                self._submit(shard)
                active.append(shard)
            changed = False
            for shard in list(active):
                assert shard.entry.job_name is not None
                status = self.backend.get(shard.entry.job_name)
                if shard.status is None or status.state != shard.status.state:
                    changed = True
                    self.ledger.update(shard.entry.job_key, state=status.state.value)
                shard.status = status
                if status.state.terminal:
                    self._finish(shard)
                    active.remove(shard)
                    finished_rows += shard.entry.row_count
                elif status.state == JobState.PAUSED:
                    self._errors.append(f"job {status.name} is PAUSED and needs attention")
                    active.remove(shard)
            done = finished_rows + sum((s.status.successful + s.status.failed) for s in active if s.status)
            failed = sum(s.status.failed for s in active if s.status)
            state = ",".join(sorted({s.status.state.value for s in active if s.status})) or "DONE"
            self.progress(state, done, failed, total)
            if active:
                delay = interval if changed else min(delay * 1.5, max(interval, 60.0))
                time.sleep(delay)

    def _finish(self, shard: _Shard) -> None:
        status = shard.status
        assert status is not None
        job = {"name": status.name, "state": status.state.value, "rows": shard.entry.row_count,
               "successful": status.successful, "failed": status.failed}
        self.report.jobs.append(job)
        if status.state.has_output and self.wh.kind(shard.output) is not None:
            self._land(shard)
            self.ledger.update(shard.entry.job_key, state=LANDED, successful_count=status.successful,
                               failed_count=status.failed)
            self.wh.drop(shard.output)
            self.wh.drop(shard.input)
        else:
            self.ledger.update(shard.entry.job_key, state=status.state.value, error=status.error)
        if status.state != JobState.SUCCEEDED:
            self._errors.append(f"job {status.name} ended {status.state.value}" + (f": {status.error}" if status.error else ""))

    def _land(self, shard: _Shard) -> None:
        """Stage 6: merge a job's output into the responses store, keyed by request hash, atomically."""
        types = {c.name: c.type for c in self.wh.columns(shard.output)}
        response = "response" if types.get("response") == "JSON" else "SAFE.PARSE_JSON(response)"
        request = "request" if types.get("request") == "JSON" else "SAFE.PARSE_JSON(request)"
        job_name = string_literal(shard.status.name if shard.status else shard.entry.job_name)
        self.wh.merge_into(
            self.responses_rel,
            f"SELECT o.request_hash, {_qualify(request, 'o')} AS request, {_qualify(response, 'o')} AS response, "
            f"o.status, o.processed_time, {job_name} AS job_name, {string_literal(shard.entry.gemini_model)} AS model_name, "
            f"COALESCE(p.attempt, 0) + 1 AS attempt, CURRENT_TIMESTAMP() AS landed_at "
            f"FROM {shard.output.render()} o LEFT JOIN {self.responses_rel.render()} p ON p.request_hash = o.request_hash",
            ["request_hash"],
        )

    # -- helpers -----------------------------------------------------------------------------
    def _count(self, from_sql: str) -> int:
        return int(self.wh.query_arrow(f"SELECT COUNT(*) AS n FROM {from_sql}").column("n")[0].as_py())

    def _key_sql(self) -> str:
        if not self.settings.key:
            return "ROW_NUMBER() OVER ()"
        if len(self.settings.key) == 1:
            return f"CAST(`{self.settings.key[0]}` AS STRING)"
        return "CONCAT(" + ", '|', ".join(f"CAST(`{k}` AS STRING)" for k in self.settings.key) + ")"

    def _key_label(self) -> str:
        return "|".join(self.settings.key) if self.settings.key else "row"


def _strip(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _qualify(expr: str, alias: str) -> str:
    """Prefix the bare column in `expr` (request/response) with the table alias."""
    for column in ("request", "response"):
        if expr == column:
            return f"{alias}.{column}"
        expr = expr.replace(f"({column})", f"({alias}.{column})")
    return expr


def _label(value: str) -> str:
    """A Vertex label value: lowercase letters, digits, `_` and `-`, at most 63 characters."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in value.lower())
    if len(cleaned) > 63:
        cleaned = cleaned[:54] + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]
    return cleaned


def _parse_relation(text: str) -> Relation:
    parts = text.split(".")
    if len(parts) == 3:
        return Relation(parts[0], parts[1], parts[2])
    return Relation(None, parts[0], parts[1])

