"""The batch lifecycle of one batch model: build → validate → collect → diff → estimate → shard →
submit → wait → land → results → report.

Each stage is a method with one job, so a run can be followed (and tested) stage by stage. All SQL
here is BigQuery SQL handed to the warehouse adapter; the backend only creates and polls jobs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from batchflow.batch.base import BatchBackend, JobNotFoundError, JobSpec, JobState, JobStatus
from batchflow.compiler import Node, batch_results_relations
from batchflow.cost import (
    CHARS_PER_TOKEN,
    DEFAULT_OUTPUT_TOKENS,
    Estimate,
    Price,
    RunBudget,
    check_model_limits,
    price_for,
)
from batchflow.errors import BatchflowError, ConfigError, ExecutionError, RequestValidationError
from batchflow.ledger import LANDED, LOST, SUBMITTING, Ledger, LedgerEntry
from batchflow.relation import Relation, string_literal
from batchflow.requests import check_columns
from batchflow.warehouse.base import Warehouse

VERTEX_MAX_ROWS_PER_JOB = 200_000
BOOKKEEPING_COLUMNS = ("request_hash", "job_name", "model_name", "attempt")
# Row errors worth sending again: rate limits, server errors, not-yet-ready projects.
RETRYABLE_STATUS = r'"code":\s*(429|5[0-9][0-9])|RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|FAILED_PRECONDITION'
BLOCK_REASONS = ("RECITATION", "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MAX_TOKENS", "OTHER")
MAX_REPORTED_INVALID = 20
MAX_POLL_DELAY = 60.0  # seconds between polls of unchanged jobs, at most
POLL_LAG = 0.1  # ... and at most this share of the time they have been unchanged


def next_poll_delay(delay: float, interval: float, unchanged_for: float) -> float:
    """Seconds to sleep before the next poll, after sleeping `delay`. Unchanged jobs are polled less and
    less often (x1.5 a poll, from `interval`), but never later than `POLL_LAG` of the time they have gone
    unchanged: a job that ends is noticed within ~10% of its run time (plain x1.5 backoff can add 50%),
    and never later than `MAX_POLL_DELAY` nor sooner than `interval`. Right after a change
    (`unchanged_for` 0) that is `interval` again."""
    return max(interval, min(delay * 1.5, MAX_POLL_DELAY, POLL_LAG * unchanged_for))

ProgressFn = Callable[[str, int, int, int], None]  # (state, done, failed, total)
MacroFn = Callable[..., str]


@dataclass
class BatchSettings:
    """A batch model's configuration (project `batch:` defaults, then the model's config)."""

    model: str
    key: list[str]
    max_rows_per_job: int = 100_000
    max_concurrent_jobs: int = 4
    max_attempts: int = 3
    invalid_rows: str = "fail"  # or "skip"
    retry_on: list[str] = field(default_factory=list)  # finish/block reasons worth resending, e.g. RECITATION
    fallback_model: str | None = None  # where rows blocked for a `retry_on` reason are resent
    max_requests: int | None = None
    max_estimated_cost: float | None = None
    output_tokens: int = DEFAULT_OUTPUT_TOKENS  # estimate when a request sets no maxOutputTokens
    poll_interval: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], path: str) -> "BatchSettings":
        """Read and check the merged configuration of a batch model."""
        key = config.get("key") or []
        key = [key] if isinstance(key, str) else list(key)
        retry_on = config.get("retry_on") or []
        retry_on = [retry_on] if isinstance(retry_on, str) else [str(r).upper() for r in retry_on]
        try:
            settings = cls(
                model=str(config["model"]),
                key=key,
                max_rows_per_job=int(config.get("max_rows_per_job", 100_000)),
                max_concurrent_jobs=int(config.get("max_concurrent_jobs", 4)),
                max_attempts=int(config.get("max_attempts", 3)),
                invalid_rows=str(config.get("invalid_rows", "fail")),
                retry_on=retry_on,
                fallback_model=config.get("fallback_model"),
                max_requests=int(config["max_requests"]) if config.get("max_requests") is not None else None,
                max_estimated_cost=float(config["max_estimated_cost"])
                if config.get("max_estimated_cost") is not None else None,
                output_tokens=int(config.get("estimated_output_tokens", DEFAULT_OUTPUT_TOKENS)),
                poll_interval=float(config["poll_interval"]) if "poll_interval" in config else None,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad batch config: {exc}", path) from None
        if not 1 <= settings.max_rows_per_job <= VERTEX_MAX_ROWS_PER_JOB:
            raise ConfigError(
                f"max_rows_per_job must be between 1 and {VERTEX_MAX_ROWS_PER_JOB:,} (Vertex's limit)", path
            )
        if settings.max_concurrent_jobs < 1 or settings.max_attempts < 1:
            raise ConfigError("max_concurrent_jobs and max_attempts must be at least 1", path)
        if settings.invalid_rows not in ("fail", "skip"):
            raise ConfigError("invalid_rows must be 'fail' or 'skip'", path)
        unknown = [r for r in settings.retry_on if r not in BLOCK_REASONS]
        if unknown:
            raise ConfigError(f"retry_on accepts {', '.join(BLOCK_REASONS)}; got {', '.join(unknown)}", path)
        return settings


@dataclass
class RunFlags:
    """How this run treats a batch model."""

    dry_run: bool = False  # count and estimate; submit nothing
    no_wait: bool = False  # submit and return; a later run lands the answers
    retry_failed: bool = False  # send only rows whose last answer failed, ignoring max_attempts
    resubmit_all: bool = False  # send every request again, even those with a good answer (pays again)


@dataclass
class BatchReport:
    """What a batch model did in this run (goes to the terminal and run_results.json)."""

    rows_total: int = 0
    rows_invalid: int = 0
    rows_duplicate: int = 0  # rows whose request is identical to another row's (answered once)
    rows_sent: int = 0  # distinct requests sent in this run
    rows_retried: int = 0  # of those, requests that had an answer before (a failed one)
    rows_reused: int = 0  # distinct requests answered by an earlier run and not sent again
    rows_pending: int = 0  # requests in jobs still running (--no-wait)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # usage of this run's answers
    estimate: dict[str, Any] = field(default_factory=dict)  # before sending
    actual_cost: float | None = None  # this run's answers at the configured price
    pending: bool = False
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
        backend: Callable[[], BatchBackend],
        ledger: Ledger,
        macro: MacroFn,
        run_id: str,
        *,
        defaults: dict[str, Any] | None = None,
        prices: dict[str, Price] | None = None,
        budget: RunBudget | None = None,
        flags: RunFlags | None = None,
        progress: ProgressFn | None = None,
    ):
        self.node = node
        self.wh = warehouse
        self._backend_factory = backend
        self.ledger = ledger
        self.macro = macro
        self.run_id = run_id
        self.prices = prices or {}
        self.budget = budget or RunBudget({})
        self.flags = flags or RunFlags()
        self.progress = progress or (lambda *a: None)
        merged = {k: v for k, v in (defaults or {}).items() if k != "prices"}
        merged.update(node.config)
        self.settings = BatchSettings.from_config(merged, node.path)
        rels = batch_results_relations(node.relation)
        self.requests_rel = rels["requests"]
        self.responses_rel = rels["responses"]
        self.todo_rel = self.requests_rel.with_identifier(f"{node.relation.identifier}__todo")
        self.report = BatchReport()
        self._errors: list[str] = []
        self._open: list[_Shard] = []  # jobs still running at the end of a --no-wait run
        self._landed_jobs: list[str] = []

    @property
    def backend(self) -> BatchBackend:
        """Opened on first use: a rerun that sends nothing never needs the backend's client."""
        return self._backend_factory()

    # -- stages ------------------------------------------------------------------------------
    def run(self) -> BatchReport:
        """All stages in order. Raises after landing what it could if jobs failed."""
        self.build()
        self.validate()
        self.ensure_responses_table()
        if self.flags.dry_run:
            self._open = self._open_shards()  # count them as in flight without asking the backend
        else:
            self.collect_open_jobs()
        plan = self.diff()
        estimate = self.estimate(plan)
        if self.flags.dry_run:
            self.wh.drop(self.todo_rel)
            return self.report
        # Rows that come back with a retryable failure are resent in the same run, up to
        # max_attempts rounds in all; every round passes the same limits first.
        for _ in range(self.settings.max_attempts):
            if not plan:
                break
            check_model_limits(self.node.name, estimate, self.settings.max_requests, self.settings.max_estimated_cost)
            self.budget.reserve(self.node.name, estimate)
            self.submit_and_wait(plan)
            if self.flags.no_wait or self._errors or self.flags.retry_failed or self.flags.resubmit_all:
                break
            plan = self.diff(first=False)
            estimate = self.estimate(plan)
        self.wh.drop(self.todo_rel)
        self.build_results()
        self.summarise()
        if self._errors:
            raise ExecutionError("; ".join(self._errors), self.node.path)
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
            raise RequestValidationError("; ".join(problems) + "; nothing was submitted", self.node.path)
        missing_key = [k for k in self.settings.key if k not in {c.name for c in columns}]
        if missing_key:
            raise ConfigError(f"key column(s) {', '.join(missing_key)} are not in the model's output", self.node.path)
        problem = self.wh.request_problem_sql("request", "request_hash")
        checked = f"(SELECT *, {problem} AS problem FROM {self.requests_rel.render()})"
        counts = self.wh.query_arrow(
            f"SELECT COUNT(*) AS n, COUNTIF(problem IS NOT NULL) AS bad, "
            f"COUNT(DISTINCT IF(problem IS NULL, request_hash, NULL)) AS d FROM {checked}"
        ).to_pylist()[0]
        self.report.rows_total = int(counts["n"])
        self.report.rows_invalid = int(counts["bad"] or 0)
        self.report.rows_duplicate = self.report.rows_total - self.report.rows_invalid - int(counts["d"])
        if not self.report.rows_invalid:
            return
        bad = self.wh.query_arrow(
            f"SELECT {self._key_sql()} AS row_key, problem FROM {checked} WHERE problem IS NOT NULL "
            f"ORDER BY row_key LIMIT {MAX_REPORTED_INVALID}"
        ).to_pylist()
        listed = "; ".join(f"{self._key_label()}={r['row_key']}: {r['problem']}" for r in bad)
        more = self.report.rows_invalid - len(bad)
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

    def _open_shards(self) -> list[_Shard]:
        return [
            _Shard(e.shard, e, _parse_relation(e.input_table), _parse_relation(e.output_table))
            for e in self.ledger.entries(node=self.node.name, open_only=True)
        ]

    def collect_open_jobs(self) -> None:
        """Stage 2a: jobs an earlier run submitted and did not land: adopt, wait for and land them."""
        shards: list[_Shard] = []
        for shard in self._open_shards():
            shard.status = self._find_job(shard.entry)
            if shard.status is None:
                self.ledger.update(shard.entry.job_key, state=LOST)
                self.wh.drop(shard.input)
                continue
            shards.append(shard)
        if shards:
            self._wait_and_land(shards, pending=[])

    def diff(self, first: bool = True) -> list[tuple[str, int]]:
        """Stage 2b: the requests that need an answer, each with the model to send it to.
        Returns (model, rows) per model, numbered in `<model>__todo` for sharding."""
        s = self.settings
        valid = f"WHERE {self.wh.request_problem_sql('request', 'request_hash')} IS NULL" if self.report.rows_invalid else ""
        in_flight = " UNION ALL ".join(f"SELECT request_hash FROM {shard.input.render()}" for shard in self._open)
        not_in_flight = f"WHERE c.request_hash NOT IN ({in_flight})" if in_flight else ""
        primary = string_literal(s.model)
        fallback = string_literal(s.fallback_model or s.model)
        reasons = ", ".join(string_literal(r) for r in s.retry_on) or "NULL"
        blocked = (f"({self.macro('finish_reason', 'a.response')} IN ({reasons}) "
                   f"OR {self.macro('block_reason', 'a.response')} IN ({reasons}))")
        transient = f"REGEXP_CONTAINS(a.status, r'{RETRYABLE_STATUS}')"
        under_limit = "TRUE" if self.flags.retry_failed else f"a.attempt < {s.max_attempts}"
        if self.flags.resubmit_all:
            decide = primary
        else:
            decide = (
                "CASE "
                f"WHEN a.request_hash IS NULL THEN {'NULL' if self.flags.retry_failed else primary} "
                f"WHEN COALESCE(a.status, '') != '' AND ({'TRUE' if self.flags.retry_failed else transient}) "
                f"AND {under_limit} THEN {primary} "
                f"WHEN COALESCE(a.status, '') = '' AND {blocked} AND {under_limit} THEN {fallback} "
                "END"
            )
        answered = f"LEFT JOIN {self.responses_rel.render()} a ON a.request_hash = c.request_hash {not_in_flight}"
        # One row per distinct request; validate() counted the duplicates, and with none there is
        # nothing to group (grouping drags every request's payload through a hash table).
        unique = not self.report.rows_duplicate
        if not first:
            # After a round, usually nothing is left to send: ask that with the same rule over the
            # hashes alone before building the todo table (which carries every request's payload).
            hashes = f"SELECT {'' if unique else 'DISTINCT '}request_hash FROM {self.requests_rel.render()} {valid}"
            left = self.wh.query_arrow(
                f"SELECT COUNT(*) AS n FROM ({hashes}) c {answered} WHERE ({decide}) IS NOT NULL"
            ).column("n")[0].as_py()
            if not left:
                return []
        requests = (f"SELECT request_hash, request FROM {self.requests_rel.render()} {valid}" if unique else
                    f"SELECT request_hash, ANY_VALUE(request) AS request FROM {self.requests_rel.render()} {valid} "
                    "GROUP BY request_hash")
        self.wh.create_table_as(
            self.todo_rel,
            "SELECT request_hash, request, send_model, previous_attempt, "
            "ROW_NUMBER() OVER (PARTITION BY send_model ORDER BY request_hash) AS shard_row FROM ("
            f"SELECT c.request_hash, c.request, {decide} AS send_model, COALESCE(a.attempt, 0) AS previous_attempt "
            f"FROM ({requests}) c {answered}) WHERE send_model IS NOT NULL",
        )
        rows = self.wh.query_arrow(
            f"SELECT send_model, COUNT(*) AS n, COUNTIF(previous_attempt > 0) AS retried "
            f"FROM {self.todo_rel.render()} GROUP BY send_model ORDER BY send_model"
        ).to_pylist()
        plan = [(r["send_model"], int(r["n"])) for r in rows]
        if first:
            self.report.rows_pending = sum(sh.entry.row_count for sh in self._open)
            distinct = self.report.rows_total - self.report.rows_duplicate - self.report.rows_invalid
            self.report.rows_reused = max(distinct - sum(n for _, n in plan) - self.report.rows_pending, 0)
        self.report.rows_sent += sum(n for _, n in plan)
        self.report.rows_retried += sum(int(r["retried"]) for r in rows)
        return plan

    def estimate(self, plan: list[tuple[str, int]]) -> Estimate:
        """Stage 2c: tokens and cost of what the diff would send."""
        total = Estimate()
        if not plan:
            self.report.estimate = self.report.estimate or {"requests": 0, "input_tokens": 0, "output_tokens": 0,
                                                            "cost": 0.0}
            return total
        max_out = ("COALESCE(SAFE_CAST(JSON_VALUE(request, '$.generationConfig.maxOutputTokens') AS INT64), "
                   "SAFE_CAST(JSON_VALUE(request, '$.generation_config.max_output_tokens') AS INT64), "
                   f"{self.settings.output_tokens})")
        rows = self.wh.query_arrow(
            f"SELECT send_model, COUNT(*) AS n, SUM(LENGTH(TO_JSON_STRING(request))) AS chars, "
            f"SUM({max_out}) AS out_tokens FROM {self.todo_rel.render()} GROUP BY send_model"
        ).to_pylist()
        for r in rows:
            input_tokens = int((r["chars"] or 0) / CHARS_PER_TOKEN)
            output_tokens = int(r["out_tokens"] or 0)
            price = price_for(self.prices, r["send_model"])
            total.add(Estimate(int(r["n"]), input_tokens, output_tokens,
                               price.cost(input_tokens, output_tokens) if price else None))
        previous = self.report.estimate
        if previous:  # a retry round: the report shows what all rounds were estimated at
            total_report = Estimate(previous["requests"], previous["input_tokens"], previous["output_tokens"],
                                    previous["cost"])
            total_report.add(total)
        else:
            total_report = total
        self.report.estimate = {"requests": total_report.requests, "input_tokens": total_report.input_tokens,
                                "output_tokens": total_report.output_tokens,
                                "cost": None if total_report.cost is None else round(total_report.cost, 6)}
        return total

    def submit_and_wait(self, plan: list[tuple[str, int]]) -> None:
        """Stages 3–6: shard, record, submit at most `max_concurrent_jobs` at once, wait, land."""
        size = self.settings.max_rows_per_job
        # (model, index, first row, row after the last): a shard's input table is cut from the todo
        # table only when its job is about to be submitted, so later cuts overlap running jobs.
        pending: list[tuple[str, int, int, int]] = []
        for model, rows in plan:
            for start in range(1, rows + 1, size):
                pending.append((model, len(pending), start, min(start + size, rows + 1)))
        self._wait_and_land(list(self._open), pending)

    def build_results(self) -> None:
        """Stage 7a: the model's relation: each current request row with its latest answer."""
        self.wh.create_table_as(
            self.node.relation,
            f"SELECT q.* EXCEPT (request_hash), a.response, a.status, a.processed_time, q.request_hash, "
            f"a.job_name, a.model_name, a.attempt FROM {self.requests_rel.render()} q "
            f"LEFT JOIN {self.responses_rel.render()} a ON a.request_hash = q.request_hash",
        )

    def summarise(self) -> None:
        """Stage 7b: row outcomes of the model's current rows; tokens and cost of this run's answers."""
        outcome = self.macro("row_outcome", "response", "status")
        rows = self.wh.query_arrow(
            f"SELECT CASE WHEN job_name IS NULL THEN 'missing' ELSE {outcome} END AS outcome, COUNT(*) AS n "
            f"FROM {self.node.relation.render()} GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        self.report.outcomes = {r["outcome"]: int(r["n"]) for r in rows}
        self.report.pending = bool(self._open)
        self.report.rows_pending = sum(shard.entry.row_count for shard in self._open)
        if not self._landed_jobs:
            self.report.tokens = {"prompt": 0, "candidates": 0, "total": 0}
            self.report.actual_cost = 0.0
            return
        jobs = ", ".join(string_literal(j) for j in self._landed_jobs)
        usage = self.wh.query_arrow(
            f"SELECT model_name, SUM({self.macro('usage_tokens', 'response', 'promptTokenCount')}) AS prompt, "
            f"SUM({self.macro('usage_tokens', 'response', 'candidatesTokenCount')}) + "
            f"COALESCE(SUM({self.macro('usage_tokens', 'response', 'thoughtsTokenCount')}), 0) AS candidates, "
            f"SUM({self.macro('usage_tokens', 'response', 'totalTokenCount')}) AS total "
            f"FROM {self.responses_rel.render()} WHERE job_name IN ({jobs}) GROUP BY model_name"
        ).to_pylist()
        self.report.tokens = {k: int(sum(u[k] or 0 for u in usage)) for k in ("prompt", "candidates", "total")}
        cost: float | None = 0.0
        for u in usage:
            price = price_for(self.prices, u["model_name"])
            cost = None if cost is None or price is None else cost + price.cost(int(u["prompt"] or 0),
                                                                                 int(u["candidates"] or 0))
        self.report.actual_cost = None if cost is None else round(cost, 6)

    # -- jobs --------------------------------------------------------------------------------
    def _plan_shard(self, model: str, index: int, start: int, stop: int) -> _Shard:
        base = self.node.relation.identifier
        suffix = f"{self.run_id}_{index:04d}"
        shard_input = self.requests_rel.with_identifier(f"{base}__in_{suffix}")
        output = self.requests_rel.with_identifier(f"{base}__out_{suffix}")
        rows = self.wh.create_table_as(
            shard_input,
            f"SELECT request_hash, request FROM {self.todo_rel.render()} "
            f"WHERE send_model = {string_literal(model)} AND shard_row >= {start} AND shard_row < {stop}",
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
            gemini_model=model,
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
            model=shard.entry.gemini_model,
            input=shard.input,
            output=shard.output,
            display_name=f"batchflow-{shard.entry.job_key}"[:128],
            labels=self._labels(shard.entry),
            hash_model=self.settings.model,  # build() hashed every row with the primary model
        )
        try:
            shard.status = self.backend.submit(spec)
        except BatchflowError as exc:
            # The backend already looked for a half-created job by its labels; leave the row
            # SUBMITTING so the next run looks again before anything is resubmitted.
            self.ledger.update(shard.entry.job_key, error=str(exc))
            raise
        shard.entry.job_name = shard.status.name
        self.ledger.update(shard.entry.job_key, job_name=shard.status.name, state=shard.status.state.value)

    def _find_job(self, entry: LedgerEntry) -> JobStatus | None:
        if entry.job_name:
            try:
                return self.backend.get(entry.job_name)
            except JobNotFoundError:
                return None  # other errors propagate: an unreachable backend is not a lost job
        found = self.backend.list({"batchflow_job_key": _label(entry.job_key)})
        if found:
            self.ledger.update(entry.job_key, job_name=found[0].name, state=found[0].state.value)
            entry.job_name = found[0].name
            return found[0]
        return None

    def _wait_and_land(self, active: list[_Shard], pending: list[tuple[str, int, int, int]]) -> None:
        total = sum(s.entry.row_count for s in active) + sum(stop - start for _, _, start, stop in pending)
        finished_rows = 0
        interval = self.settings.poll_interval or getattr(self.backend, "poll_interval", 5.0)
        delay = interval
        unchanged_since = time.monotonic()
        self._open = []

        def top_up() -> None:
            while pending and len(active) < self.settings.max_concurrent_jobs:
                shard = self._plan_shard(*pending.pop(0))
                self._submit(shard)
                active.append(shard)

        while active or pending:
            top_up()
            changed = False
            finished: list[_Shard] = []
            for shard in list(active):
                assert shard.entry.job_name is not None
                status = self.backend.get(shard.entry.job_name)
                if shard.status is None or status.state != shard.status.state:
                    changed = True
                    self.ledger.update(shard.entry.job_key, state=status.state.value,
                                       successful_count=status.successful, failed_count=status.failed)
                shard.status = status
                if status.state.terminal:
                    finished.append(shard)
                    active.remove(shard)
                elif status.state == JobState.PAUSED:
                    self._errors.append(f"job {status.name} is PAUSED and needs attention")
                    active.remove(shard)
            try:
                if finished and not self.flags.no_wait:
                    # Landing takes a while (a merge of the whole output): start the next jobs first,
                    # so max_concurrent_jobs stay running meanwhile instead of idling behind the merge.
                    top_up()
            finally:  # land what finished even when a submit failed
                for shard in finished:
                    self._finish(shard)
                    finished_rows += shard.entry.row_count
            done = finished_rows + sum((s.status.successful + s.status.failed) for s in active if s.status)
            failed = sum(s.status.failed for s in active if s.status)
            state = ",".join(sorted({s.status.state.value for s in active if s.status})) or "DONE"
            self.progress(state, done, failed, total)
            if self.flags.no_wait:
                # Leave running jobs to a later run, which adopts them from the ledger. Shards that
                # did not fit under max_concurrent_jobs were never cut nor recorded: their rows are
                # simply still unanswered, and a later run's diff sends them.
                self._open = list(active)
                return
            if active:
                if changed:
                    unchanged_since = time.monotonic()
                delay = next_poll_delay(delay, interval, time.monotonic() - unchanged_since)
                time.sleep(delay)

    def _finish(self, shard: _Shard) -> None:
        status = shard.status
        assert status is not None
        self.report.jobs.append({"name": status.name, "state": status.state.value, "model": shard.entry.gemini_model,
                                 "rows": shard.entry.row_count, "successful": status.successful,
                                 "failed": status.failed})
        if status.state.has_output and self.wh.kind(shard.output) is not None:
            self._land(shard)
            self.ledger.update(shard.entry.job_key, state=LANDED, successful_count=status.successful,
                               failed_count=status.failed)
            self._landed_jobs.append(status.name)
            # Only after the merge committed: the raw output is the one copy until then.
            self.wh.drop(shard.output)
        else:
            self.ledger.update(shard.entry.job_key, state=status.state.value, error=status.error)
        self.wh.drop(shard.input)
        if status.state != JobState.SUCCEEDED:
            self._errors.append(f"job {status.name} ended {status.state.value}" + (f": {status.error}" if status.error else ""))

    def _land(self, shard: _Shard) -> None:
        """Stage 6: merge a job's output into the responses store, keyed by request hash, atomically."""
        types = {c.name: c.type for c in self.wh.columns(shard.output)}
        response = "o.response" if types.get("response") == "JSON" else "SAFE.PARSE_JSON(o.response)"
        request = "o.request" if types.get("request") == "JSON" else "SAFE.PARSE_JSON(o.request)"
        job_name = string_literal(shard.status.name if shard.status else shard.entry.job_name)
        self.wh.merge_into(
            self.responses_rel,
            f"SELECT o.request_hash, {request} AS request, {response} AS response, "
            f"o.status, o.processed_time, {job_name} AS job_name, {string_literal(shard.entry.gemini_model)} AS model_name, "
            f"COALESCE(p.attempt, 0) + 1 AS attempt, CURRENT_TIMESTAMP() AS landed_at "
            f"FROM {shard.output.render()} o LEFT JOIN {self.responses_rel.render()} p ON p.request_hash = o.request_hash",
            ["request_hash"],
        )

    # -- helpers -----------------------------------------------------------------------------
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
