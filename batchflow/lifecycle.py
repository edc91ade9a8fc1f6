"""The evaluator of a batch model's plan (`batchflow.batch_stages`): one method per stage.

Stages run in the plan's order against a warehouse, a backend and the ledger. The SQL comes from the
pure functions of `batch_stages`; this module decides, records and reports. The job states and what a
rerun does with each come from `batchflow.batch.states`, nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from batchflow import batch_stages as S
from batchflow.batch.base import BatchBackend, JobNotFoundError, JobSpec, JobStatus
from batchflow.batch.states import CLOSED, LANDED, LOST, SUBMITTING, JobState, Rerun, rule
from batchflow.compiler import Node, batch_results_relations
from batchflow.cost import CHARS_PER_TOKEN, Estimate, Price, RunBudget, check_model_limits, price_for
from batchflow.errors import BatchflowError, ConfigError, ExecutionError, RequestValidationError
from batchflow.faultpoints import checkpoint
from batchflow.interrupt import NEVER, Interrupt
from batchflow.ledger import Ledger, LedgerEntry
from batchflow.relation import Relation
from batchflow.requests import EMBEDDING_MAX_ROWS_PER_JOB, check_columns, is_embedding_model
from batchflow.settings import BatchSettings  # noqa: F401  (re-exported: one declaration, in settings.py)
from batchflow.warehouse.base import Warehouse

MAX_REPORTED_INVALID = 20
MAX_POLL_DELAY = 60.0  # seconds between polls of unchanged jobs, at most
POLL_LAG = 0.1  # ... and at most this share of the time they have been unchanged
PROGRESS_POLL_DELAY = 0.5  # seconds between polls, at most, while rows are being answered (live counts)


def next_poll_delay(delay: float, interval: float, unchanged_for: float, moving: bool = False) -> float:
    """Seconds to sleep before the next poll, after sleeping `delay`. Unchanged jobs are polled less and
    less often (x1.5 a poll, from `interval`), but never later than `POLL_LAG` of the time they have gone
    unchanged: a job that ends is noticed within ~10% of its run time (plain x1.5 backoff can add 50%),
    and never later than `MAX_POLL_DELAY` nor sooner than `interval`. Right after a change
    (`unchanged_for` 0) that is `interval` again. While rows are being answered (`moving`: the counts
    moved since the last poll) the live counts refresh at least every `PROGRESS_POLL_DELAY`, but rows
    alone do not reset the backoff: polling an in-process job at its 50 ms interval all along cost
    the answering threads CPU for nothing a progress bar shows."""
    backoff = min(delay * 1.5, MAX_POLL_DELAY, POLL_LAG * unchanged_for)
    if moving:
        backoff = min(backoff, PROGRESS_POLL_DELAY)
    return max(interval, backoff)


@dataclass(frozen=True)
class BatchProgress:
    """One progress update of a batch model (the CLI's bar, JSON `batch_progress` events)."""

    phase: str  # "waiting" (jobs answering) | "landing" (merging a job's output) | "building results"
    state: str  # the live job states, comma-separated ("" outside waiting)
    done: int  # rows answered or failed, over every job of this round
    failed: int
    total: int  # rows this round sends
    running: int = 0  # jobs submitted and not ended
    queued: int = 0  # shards not submitted yet (max_concurrent_jobs)


ProgressFn = Callable[[BatchProgress], None]
MacroFn = Callable[..., str]


@dataclass
class RunFlags:
    """How this run treats a batch model."""

    dry_run: bool = False  # count and estimate; submit nothing (the plan stops after estimate)
    no_wait: bool = False  # submit and return; a later run lands the answers
    retry_failed: bool = False  # send only rows whose last answer failed, ignoring max_attempts
    resubmit_all: bool = False  # send every request again, even those with a good answer (pays again)
    online: bool = False  # answered at once (`--online`, or a `backend: online` target): mode "online"
    sample: int | None = None  # send only this many distinct requests per batch model (`--sample`)
    sample_fraction: float | None = None  # ... or this share of them (`--sample-fraction`)

    @property
    def sampled(self) -> str | None:
        """The sample as the ledger and run results record it (`20`, `0.1`), None for a whole run."""
        if self.sample is not None:
            return str(self.sample)
        return None if self.sample_fraction is None else repr(self.sample_fraction)


@dataclass
class BatchReport:
    """What a batch model did in this run (goes to the terminal and run_results.json)."""

    rows_total: int = 0
    rows_invalid: int = 0
    rows_duplicate: int = 0  # rows whose request is identical to another row's (answered once)
    rows_sent: int = 0  # distinct requests submitted in this run (a refused or dry run sends none)
    would_send: int = 0  # dry run: requests a real run would submit now
    rows_retried: int = 0  # of those sent, requests whose last answer failed, was missing or blocked for retry_on
    rows_reused: int = 0  # distinct requests answered by an earlier run and not sent again
    rows_pending: int = 0  # requests in jobs still running (--no-wait)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # usage of this run's answers
    estimate: dict[str, Any] = field(default_factory=dict)  # before sending
    actual_cost: float | None = None  # this run's answers at the configured price
    rows_missing: int = 0  # rows without an answer at the end (sent and lost, or never sent)
    dry_run: bool = False  # nothing was submitted; `would_send` says what a run would
    plan: str = ""  # the stages this run evaluates (`--dry-run` prints it)
    pending: bool = False
    interrupted: bool = False  # a signal stopped the run; open jobs stay in the ledger
    warnings: list[str] = field(default_factory=list)
    mode: str = "batch"  # "online" when the requests were answered at once (`--online`)
    #: a sampled run: {"requests": distinct requests kept, "of": distinct valid requests, "rows": N or
    #: None, "fraction": p or None}; the model's relation holds only the sampled rows
    sample: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return dict(self.__dict__)



class _NotCreated(Exception):
    """A signal arrived between the ledger row and create(): the job was not created."""


@dataclass
class _Job:
    """A job of this run (or adopted from the ledger) while the lifecycle tracks it."""

    entry: LedgerEntry
    input: Relation
    output: Relation
    status: JobStatus | None = None
    retried: int = 0


def plan_batch(node: Node, settings: BatchSettings, flags: RunFlags) -> S.BatchPlan:
    """The stages of one batch model for this run's flags."""
    rels = batch_results_relations(node.relation)
    requests, responses, todo = rels["requests"], rels["responses"], rels["todo"]
    ignore_online = not flags.online and settings.online_answers == "ignore"
    diff = S.Diff(requests, responses, todo, settings.model, settings.fallback_model, tuple(settings.retry_on),
                  settings.max_attempts, flags.retry_failed, flags.resubmit_all, ignore_online)
    sample = (S.Sample(requests, flags.sample, flags.sample_fraction),) if flags.sampled else ()
    head: tuple[S.Stage, ...] = (
        S.Build(node.compiled_sql, requests, settings.model),
        S.Validate(requests, tuple(settings.key), settings.invalid_rows),
        *sample,
        S.Collect(node.name, f"{node.relation.identifier}__"),
    )
    embedding = is_embedding_model(settings.model)  # an embedding answer has no output tokens
    estimate = S.Estimate(todo, 0 if embedding else settings.output_tokens)
    tail = (S.Results(node.relation, requests, responses, ignore_online), S.Report(node.relation, responses))
    if flags.dry_run:
        return S.BatchPlan(node.name, head + (diff, estimate), "dry_run", ("dry run: submits nothing",))
    rows_per_job = min(settings.max_rows_per_job, EMBEDDING_MAX_ROWS_PER_JOB) if embedding else settings.max_rows_per_job
    submit = (S.Shard(todo, rows_per_job), S.Submit(settings.max_concurrent_jobs))
    if flags.no_wait:
        return S.BatchPlan(node.name, head + (diff, estimate) + submit + tail, "no_wait",
                           ("--no-wait: a later run lands the jobs",))
    # --retry-failed and --resubmit-batches make one deliberate pass; otherwise rows that come back with
    # a retryable failure (or missing) are resent in the same run, max_attempts rounds in all.
    rounds = 1 if flags.retry_failed or flags.resubmit_all else settings.max_attempts
    loop = S.Rounds((diff, estimate) + submit + (S.Wait(settings.poll_interval), S.Land(responses)), rounds)
    return S.BatchPlan(node.name, head + (loop,) + tail)


class BatchLifecycle:
    """Evaluates one batch model's plan against a warehouse, a backend and the ledger."""

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
        interrupt: Interrupt | None = None,
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
        self.progress = progress or (lambda p: None)
        self.interrupt = interrupt or NEVER
        merged = {k: v for k, v in (defaults or {}).items() if k != "prices"}
        merged.update(node.config)
        self.settings = BatchSettings.from_config(merged, node.path)
        self.plan = plan_batch(node, self.settings, self.flags)
        rels = batch_results_relations(node.relation)
        self.responses_rel, self.todo_rel = rels["responses"], rels["todo"]
        # An embedding model (contract §3): `content` in, `predictions` out, parameters once per job.
        self.embedding = is_embedding_model(self.settings.model)
        self.requests_rel = rels["requests"]
        self._embedding_fields: tuple[str, ...] = ("content",)  # input columns of its jobs
        self._embedding_parameters: dict[str, Any] = {}  # the jobs' modelParameters
        self.mode = "online" if self.flags.online else "batch"
        # a batch run with `online_answers: ignore` sends online-answered requests again and lets its answers replace them
        self._replace_online = not self.flags.online and self.settings.online_answers == "ignore"
        self.report = BatchReport(dry_run=self.flags.dry_run, plan=self.plan.describe(), mode=self.mode)
        self._errors: list[str] = []
        self._ended_badly: list[str] = []  # jobs of this run that ended other than SUCCEEDED
        self._in_flight: list[_Job] = []  # open jobs whose rows must not be sent again
        self._landed_jobs: list[str] = []
        self._round = 0
        self._shards: list[tuple[str, int, int]] = []  # (model, first row, row after the last) to submit
        self._jobs: list[_Job] = []  # running jobs of the current round
        # The next shard's job, cut while the running jobs work so a freed slot is filled at once (a cut
        # copies the shard's requests: at 1M rows, cutting on the spot kept a slot idle ~2.5 s per job). It
        # has no ledger row until it is submitted: a run that dies leaves its input to collect's clean-up.
        self._ahead: _Job | None = None
        self._plan: list[tuple[str, int]] = []  # (send model, requests) of the current round
        self._job_seq = 0  # numbers this run's jobs: each has its own key, labels and tables

    @property
    def backend(self) -> BatchBackend:
        """Opened on first use: a rerun that sends nothing never needs the backend's client."""
        return self._backend_factory()

    # -- the evaluator -------------------------------------------------------------------------------
    def run(self) -> BatchReport:
        """Every stage of the plan in order. Raises after landing what it could if the model failed."""
        skipping = False  # a stage answered False: nothing to send, skip on to results and report
        try:
            for stage in self.plan.stages:
                final = isinstance(stage, (S.Results, S.Report))
                if self.interrupt.is_set() and not isinstance(stage, S.Report):
                    self.report.interrupted = True
                    continue
                if skipping and not final:
                    continue
                if self._evaluate(stage) is False:
                    skipping = True
            if self._jobs:  # a signal between submit and wait: stop (or record) the jobs it left running
                self.report.interrupted = True
                self._wait(S.Wait(self.settings.poll_interval))
        except BaseException:
            self._abandon()
            raise
        finally:
            self._drop_ahead()
            if self.backend.reads_views:  # a job left open (a failed submit, a cancel) keeps its rows
                self._settle_open_inputs(self.ledger.entries(node=self.node.name, open_only=True))
            self.wh.drop(self.todo_rel)
        self.report.pending = bool(self._in_flight)
        self.report.rows_pending = sum(j.entry.row_count for j in self._in_flight)
        if self.report.interrupted and self.flags.dry_run is False:
            self.report.warnings.append(
                f"interrupted: {len(self._in_flight)} job(s) still running are recorded in the ledger; "
                "the next run lands them" if self._in_flight else "interrupted before everything was sent")
        if self._errors:
            raise ExecutionError("; ".join(self._errors), self.node.path)
        return self.report

    def _evaluate(self, stage: S.Stage) -> bool | None:
        """Run one stage; False means "nothing to send": skip on to results and report."""
        methods: dict[type, Callable[[Any], bool | None]] = {
            S.Build: self._build, S.Validate: self._validate, S.Sample: self._sample, S.Collect: self._collect, S.Diff: self._diff,
            S.Estimate: self._estimate, S.Shard: self._shard, S.Submit: self._submit, S.Wait: self._wait,
            S.Land: self._land, S.Rounds: self._rounds, S.Results: self._results, S.Report: self._report,
        }
        return methods[type(stage)](stage)

    # -- stages ----------------------------------------------------------------------------------------
    def _build(self, stage: S.Build) -> None:
        """Check the SELECT's columns (cheap: no rows), then materialise it with a hash per row."""
        _, columns = self.wh.dry_run(S.strip_sql(stage.model_sql))
        self._check_columns(columns)
        self.wh.create_table_as(stage.requests, S.build_sql(stage.model_sql, self.wh.request_hash_sql("request", stage.hash_model)))
        checkpoint("after_build")

    def _check_columns(self, columns: list) -> None:
        names = {c.name.lower() for c in columns}
        problems = check_columns(columns, self.embedding)
        if problems:
            raise RequestValidationError("; ".join(problems) + "; nothing was submitted", self.node.path)
        missing_key = [k for k in self.settings.key if k.lower() not in names]
        if missing_key:
            raise ConfigError(f"key column(s) {', '.join(missing_key)} are not in the model's output", self.node.path)

    def _problem_sql(self) -> str:
        """SQL giving each request row's problem (NULL when valid), by the model's contract."""
        if self.embedding:
            return self.macro("embedding_request_problem", "request")
        return self.wh.request_problem_sql("request", "request_hash")

    def _validate(self, stage: S.Validate) -> None:
        problem = self._problem_sql()
        counts = self.wh.query_arrow(S.validate_counts_sql(stage.requests, problem)).to_pylist()[0]
        self.report.rows_total = int(counts["n"])
        self.report.rows_invalid = int(counts["bad"] or 0)
        self.report.rows_duplicate = self.report.rows_total - self.report.rows_invalid - int(counts["d"])
        if self.embedding:
            self._embedding_shape(stage, problem)
        if not self.report.rows_invalid:
            return
        bad = self.wh.query_arrow(
            S.invalid_rows_sql(stage.requests, problem, self._key_sql(), MAX_REPORTED_INVALID)).to_pylist()
        listed = "; ".join(f"{self._key_label()}={r['row_key']}: {r['problem']}" for r in bad)
        more = self.report.rows_invalid - len(bad)
        message = f"{self.report.rows_invalid} invalid request row(s): {listed}" + (f" (and {more} more)" if more > 0 else "")
        if stage.invalid_rows == "fail":
            raise RequestValidationError(message + "; nothing was submitted", self.node.path)
        self.report.warnings.append(message + "; those rows were skipped")

    def _embedding_shape(self, stage: S.Validate, problem: str) -> None:
        """An embedding model's jobs take one set of parameters: every valid row must ask for the same."""
        shape = self.wh.query_arrow(S.embedding_shape_sql(stage.requests, problem)).to_pylist()[0]
        if int(shape["kinds"] or 0) > 1:
            raise RequestValidationError(
                f"rows ask for different embedding parameters ({shape['parameters']} and {shape['other']}); a batch "
                "job takes one set (output_dimensionality, auto_truncate) for all its rows: give every row the "
                "same, or split the model; nothing was submitted", self.node.path)
        text = shape["parameters"]
        parsed = json.loads(text) if text else None
        self._embedding_parameters = {k: v for k, v in (parsed or {}).items() if v is not None}
        self._embedding_fields = ("content",) + tuple(
            f for f, n in (("task_type", shape["task_types"]), ("title", shape["titles"])) if int(n or 0))

    def _sample(self, stage: S.Sample) -> None:
        """Stage: keep only the sampled requests (the N distinct valid ones with the smallest hashes); the
        counts are the sample's from here on (its invalid rows are gone with the rest)."""
        problem = self._problem_sql()
        distinct = self.report.rows_total - self.report.rows_duplicate - self.report.rows_invalid
        rows = stage.rows if stage.rows is not None else math.ceil((stage.fraction or 0) * distinct)
        self.wh.execute(S.sample_sql(stage.requests, rows, f"{problem} IS NULL" if self.report.rows_invalid else ""))
        counts = self.wh.query_arrow(S.validate_counts_sql(stage.requests, problem)).to_pylist()[0]
        self.report.rows_total, self.report.rows_invalid = int(counts["n"]), 0
        self.report.rows_duplicate = self.report.rows_total - int(counts["d"])
        self.report.sample = {"requests": int(counts["d"]), "of": distinct, "rows": stage.rows,
                              "fraction": stage.fraction}

    def _collect(self, stage: S.Collect) -> None:
        """Every open ledger row of this model, by what its state asks for (`states.Rerun`)."""
        self.wh.create_table_if_missing(self.responses_rel, S.RESPONSES_COLUMNS, S.RESPONSES_OPTIONS)
        have = {c.name for c in self.wh.columns(self.responses_rel)}
        for name, kind in S.RESPONSES_ADDED_COLUMNS:  # a store from before these columns existed
            if name not in have:
                self.wh.execute(S.add_column_sql(self.responses_rel, name, kind))
        entries = self._settle_open_inputs(self.ledger.entries(node=stage.node, open_only=True))
        jobs = [_Job(e, _parse_relation(e.input_table), _parse_relation(e.output_table)) for e in entries]
        if self.flags.dry_run:  # count them as in flight without asking the backend
            self._in_flight = jobs
            return
        waiting: list[_Job] = []
        for job in jobs:
            action = rule(job.entry.state).rerun
            if action is Rerun.ADOPT or action is Rerun.ATTENTION:
                job.status = self._find_job(job.entry)
                if job.status is None:  # the backend does not know it: land what it left
                    self.ledger.update(job.entry.job_key, state=LOST, job_state=LOST)
                    self._close(job, LOST)
                    continue
                waiting.append(job)
            elif action is Rerun.LAND:
                job.status = JobStatus(job.entry.job_name or "", JobState.parse(job.entry.state))
                self._close(job, job.entry.state)
        if waiting:
            self._jobs = waiting
            self._wait(S.Wait(self.settings.poll_interval), adopted=True)
        self._clean_leftovers(stage)

    def _settle_open_inputs(self, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        """Open ledger rows whose shard input is a view over the todo table (`_cut`; left by a run
        that failed or was killed) get a table copy of its rows, recorded as their input, before the
        todo table goes or is replaced: a later run lands or resends exactly the rows each job was
        sent. Safe to repeat: a crash between the copy and the ledger update leaves the copy to
        `_clean_leftovers`, and one after it leaves the view."""
        settled = []
        for entry in entries:
            view = _parse_relation(entry.input_table)
            if self.wh.kind(view) == "view":
                table = view.with_identifier(f"{view.identifier}_t")
                self.wh.drop(table)  # a copy a crash left unrecorded
                self.wh.create_table_as(table, f"SELECT * FROM {view.render()}")
                self.ledger.update(entry.job_key, input_table=str(table))
                self.wh.drop(view)
                entry = replace(entry, input_table=str(table))
            settled.append(entry)
        return settled

    def _clean_leftovers(self, stage: S.Collect) -> None:
        """Scratch tables no open ledger row owns (an older version, or a crash between the ledger's
        LANDED and the drop): land an output table's rows (never over a good answer), drop the rest."""
        if self.interrupt.is_set():
            return
        owned = {str(r) for j in self._in_flight + self._jobs for r in (j.input, j.output)}
        schema = self.node.relation.schema
        for relation in self.wh.list_relations(schema, stage.prefix):
            name = relation.identifier[len(stage.prefix):]
            if str(relation) in owned or not (name.startswith("in_") or name.startswith("out_") or name == "todo"):
                continue
            answer = "predictions" if self.embedding else "response"
            if name.startswith("out_") and {"request_hash", answer, "status"} <= {c.name for c in self.wh.columns(relation)}:
                self._merge(relation, job_name=f"leftover:{relation.identifier}", model=self.settings.model)
            self.wh.drop(relation)

    def _diff(self, stage: S.Diff) -> bool | None:
        """Stage: which requests need an answer, into the todo table. False when nothing does."""
        self._round += 1
        valid = f"{self._problem_sql()} IS NULL" if self.report.rows_invalid else ""
        in_flight = [j.input for j in self._in_flight]
        distinct = bool(self.report.rows_duplicate)
        first = self._round == 1
        if not first:
            # After a round, usually nothing is left to send: ask that over the hashes alone before
            # building the todo table (which carries every request's payload).
            left = self.wh.query_arrow(S.remaining_sql(stage, self.macro, in_flight, valid, distinct)).column("n")[0].as_py()
            if not left:
                return False
        self.wh.create_table_as(stage.todo, S.diff_sql(stage, self.macro, in_flight, valid, distinct))
        rows = self.wh.query_arrow(S.plan_counts_sql(stage.todo)).to_pylist()
        self._plan = [(r["send_model"], int(r["n"])) for r in rows]
        if first:
            self.report.rows_pending = sum(j.entry.row_count for j in self._in_flight)
            distinct_rows = self.report.rows_total - self.report.rows_duplicate - self.report.rows_invalid
            self.report.rows_reused = max(distinct_rows - sum(n for _, n in self._plan) - self.report.rows_pending, 0)
        if self.flags.dry_run:
            self.report.would_send = sum(n for _, n in self._plan)
        return None

    def _estimate(self, stage: S.Estimate) -> bool | None:
        """Stage: tokens and cost of the todo table; refuses (sending nothing) over a limit."""
        total = Estimate()
        if self._plan:
            for r in self.wh.query_arrow(S.estimate_sql(stage.todo, stage.output_tokens)).to_pylist():
                input_tokens = int((r["chars"] or 0) / CHARS_PER_TOKEN)
                output_tokens = int(r["out_tokens"] or 0)
                price = price_for(self.prices, r["send_model"])
                price = price.for_mode(self.mode) if price else None  # --online pays online prices
                total.add(Estimate(int(r["n"]), input_tokens, output_tokens,
                                   price.cost(input_tokens, output_tokens) if price else None))
        previous = self.report.estimate
        shown = Estimate(previous["requests"], previous["input_tokens"], previous["output_tokens"],
                         previous["cost"]) if previous else Estimate()
        shown.add(total)  # a retry round: the report shows what all rounds were estimated at
        self.report.estimate = {"requests": shown.requests, "input_tokens": shown.input_tokens,
                                "output_tokens": shown.output_tokens,
                                "cost": None if shown.cost is None else round(shown.cost, 6)}
        if not self._plan or self.flags.dry_run:
            return False if not self._plan else None
        check_model_limits(self.node.name, total, self.settings.max_requests, self.settings.max_estimated_cost)
        self.budget.reserve(self.node.name, total)
        return None

    def _shard(self, stage: S.Shard) -> None:
        """Stage: shard boundaries only; a shard's input table is cut when its job is submitted, or
        one shard ahead while jobs run (`_ahead`)."""
        size = stage.max_rows_per_job
        self._shards = [(model, start, min(start + size, rows + 1))
                        for model, rows in self._plan for start in range(1, rows + 1, size)]

    def _submit(self, stage: S.Submit) -> bool | None:
        """Stage: submit up to max_concurrent_jobs; with --no-wait, the rest wait for a later run."""
        self._top_up(stage.max_concurrent_jobs)
        if self.flags.no_wait:
            if self.backend.jobs_outlive_process:
                self._in_flight.extend(self._jobs)
                self._jobs = []
                return None  # on to results and report; a later run lands the jobs
            self.report.warnings.append(
                f"--no-wait: the {self.backend.name} backend's jobs end with this process, so batchflow waited for them")
            self._wait(S.Wait(self.settings.poll_interval))
        return None

    def _wait(self, stage: S.Wait, adopted: bool = False) -> None:
        """Stage: poll until every job ended, topping up to max_concurrent_jobs, landing each as it ends."""
        total = sum(j.entry.row_count for j in self._jobs) + sum(stop - start for _, start, stop in self._shards)
        finished_rows = 0
        interval = stage.poll_interval or self.backend.poll_interval
        delay = interval
        unchanged_since = time.monotonic()
        stopping = False
        last_counts = (0, 0)
        while self._jobs or (self._queued() and not adopted and not stopping):
            if not stopping and self.interrupt.is_set():
                stopping = True
                self._shards = []  # nothing new after a signal
                self._drop_ahead()
                if not self.backend.jobs_outlive_process:
                    for job in self._jobs:  # in-process jobs stop after the chunks in flight; land them
                        self.backend.cancel(job.entry.job_name)
                else:
                    break
            if not adopted and not stopping:
                self._top_up(self.settings.max_concurrent_jobs)
            changed = False
            ended: list[_Job] = []
            checkpoint("while_waiting")
            for job in list(self._jobs):
                try:
                    status = self.backend.get(job.entry.job_name)
                except JobNotFoundError:
                    status = JobStatus(job.entry.job_name, JobState.UNSPECIFIED)
                    self._jobs.remove(job)
                    job.status = status
                    self._close(job, LOST)
                    changed = True
                    continue
                if job.status is None or status.state != job.status.state:
                    changed = True
                    self.ledger.update(job.entry.job_key, state=status.state.value, job_state=status.state.value,
                                       successful_count=status.successful, failed_count=status.failed)
                job.status = status
                if status.state.terminal:
                    ended.append(job)
                    self._jobs.remove(job)
                elif rule(status.state.value).rerun is Rerun.ATTENTION:
                    self._errors.append(f"job {status.name} is PAUSED and needs attention: resume it, or "
                                        f"`batchflow jobs cancel {job.entry.job_key}` and rerun")
                    self._jobs.remove(job)
                    self._in_flight.append(job)
            try:
                if ended and not adopted and not stopping:
                    # Landing takes a while (a merge of the whole output): start the next jobs first,
                    # so max_concurrent_jobs stay running meanwhile instead of idling behind the merge.
                    self._top_up(self.settings.max_concurrent_jobs)
            finally:  # land what ended even when a submit failed
                for job in ended:
                    self.progress(BatchProgress("landing", "", finished_rows + job.entry.row_count,
                                                sum(j.status.failed for j in self._jobs if j.status), total,
                                                len(self._jobs), self._queued()))
                    checkpoint("before_land")
                    self._close(job, job.status.state.value)
                    finished_rows += job.entry.row_count
            done = finished_rows + sum(j.status.successful + j.status.failed for j in self._jobs if j.status)
            failed = sum(j.status.failed for j in self._jobs if j.status)
            state = ",".join(sorted({j.status.state.value for j in self._jobs if j.status})) or "DONE"
            self.progress(BatchProgress("waiting", state, done, failed, total, len(self._jobs), self._queued()))
            moved = (done, failed) != last_counts  # rows answered since the last poll: refresh the counts soon
            last_counts = (done, failed)
            if self._jobs:
                if not adopted and not stopping:
                    self._cut_ahead()
                if changed:
                    unchanged_since = time.monotonic()
                delay = next_poll_delay(delay, interval, time.monotonic() - unchanged_since, moving=moved)
                self.interrupt.wait(delay)
        if self._jobs:  # interrupted with jobs that outlive us: the ledger has them open
            self._in_flight.extend(self._jobs)
            self._jobs = []

    def _land(self, stage: S.Land) -> None:
        """Stage: each job is landed as it ends (in `_wait`, so max_concurrent_jobs stay busy); nothing
        is left here. Kept as a stage so the plan shows it and a test can find it."""

    def _rounds(self, stage: S.Rounds) -> bool | None:
        """Diff → … → land, again while rows are left to (re)send; False from a stage ends the rounds."""
        for _ in range(stage.max_rounds):
            for inner in stage.stages:
                if self.interrupt.is_set():
                    self.report.interrupted = True
                    return None
                if self._evaluate(inner) is False:
                    return None
            if self._errors:
                return None
        return None

    def _results(self, stage: S.Results) -> None:
        self.progress(BatchProgress("building results", "", self.report.rows_total, 0, self.report.rows_total))
        checkpoint("before_results")
        self.wh.create_table_as(stage.relation, S.results_sql(stage.requests, stage.responses, self.embedding,
                                                              stage.ignore_online))

    def _report(self, stage: S.Report) -> None:
        if self.wh.kind(stage.relation) is None or self.report.interrupted:
            return
        rows = self.wh.query_arrow(S.outcomes_sql(stage.relation, self.macro, self.embedding)).to_pylist()
        self.report.outcomes = {r["outcome"]: int(r["n"]) for r in rows}
        self.report.rows_missing = max(0, self.report.outcomes.get("missing", 0) - self.report.rows_pending
                                       - self.report.rows_invalid)
        if self._ended_badly and self.report.rows_missing > 0 and not self.flags.no_wait:
            self._errors.append(
                f"{self.report.rows_missing:,} row(s) have no answer after job(s) ended badly: "
                + "; ".join(self._ended_badly) + " (a rerun resends them while attempts remain)")
        elif self._ended_badly:
            self.report.warnings.extend(self._ended_badly)
        if self.report.rows_missing > 0 and not self._ended_badly:
            self.report.warnings.append(
                f"{self.report.rows_missing:,} row(s) have no answer after {self.settings.max_attempts} attempt(s); "
                "`batchflow retry` sends them again")
        if not self._landed_jobs:
            self.report.tokens = {"prompt": 0, "candidates": 0, "total": 0}
            self.report.actual_cost = 0.0
            return
        usage = self.wh.query_arrow(S.usage_sql(stage.responses, self._landed_jobs, self.macro, self.embedding)).to_pylist()
        self.report.tokens = {k: int(sum(u[k] or 0 for u in usage)) for k in ("prompt", "candidates", "total")}
        cost: float | None = 0.0
        for u in usage:
            price = price_for(self.prices, u["model_name"])
            price = price.for_mode(self.mode) if price else None
            cost = None if cost is None or price is None else cost + price.cost(int(u["prompt"] or 0),
                                                                                 int(u["candidates"] or 0))
        self.report.actual_cost = None if cost is None else round(cost, 6)

    # -- jobs ----------------------------------------------------------------------------------------
    def _queued(self) -> int:
        """Shards still to submit this round (the one cut ahead included)."""
        return len(self._shards) + (self._ahead is not None)

    def _top_up(self, limit: int) -> None:
        while self._queued() and len(self._jobs) < limit and not self.interrupt.is_set():
            if self._ahead is not None:
                job, self._ahead = self._ahead, None
            else:
                job = self._cut_next()
            if self.interrupt.is_set():  # a signal while the shard was cut: record and submit nothing
                self.wh.drop(job.input)
                return
            try:
                self._create(job)
            except _NotCreated:
                return
            self._jobs.append(job)

    def _cut_ahead(self) -> None:
        """Cut the next shard's input while jobs run (see `_ahead`)."""
        if self._ahead is not None or not self._shards or self.interrupt.is_set():
            return
        self._ahead = self._cut_next()
        if self.interrupt.is_set():
            self._drop_ahead()

    def _cut_next(self) -> _Job:
        """Cut the next queued shard, numbered as this run's next job."""
        self._job_seq += 1
        return self._cut(*self._shards.pop(0), index=self._job_seq)

    def _drop_ahead(self) -> None:
        """Drop the shard cut ahead, unsubmitted: its rows are still unanswered, so a later diff sends them."""
        if self._ahead is not None:
            job, self._ahead = self._ahead, None
            self.wh.drop(job.input)

    def _abandon(self) -> None:
        """The run is failing with jobs still running: jobs that end with this process are cancelled
        and waited for (so nothing writes to the warehouse once the run returns); the next run lands
        what they wrote. Jobs that outlive the process stay open in the ledger."""
        if not self._jobs or self.backend.jobs_outlive_process:
            return
        for job in self._jobs:
            try:
                self.backend.cancel(job.entry.job_name)
            except BatchflowError:
                pass
        deadline = time.monotonic() + 60.0
        while self._jobs and time.monotonic() < deadline:
            for job in list(self._jobs):
                try:
                    ended = self.backend.get(job.entry.job_name).state.terminal
                except BatchflowError:
                    ended = True
                if ended:
                    self._jobs.remove(job)
            if self._jobs:
                time.sleep(self.backend.poll_interval)

    def _cut(self, model: str, start: int, stop: int, index: int) -> _Job:
        """A shard's input table and ledger entry; each job of a run has its own key and tables."""
        base = self.node.relation.identifier
        suffix = f"{self.run_id}_r{self._round}_{index:04d}"
        shard_input = self.todo_rel.with_identifier(f"{base}__in_{suffix}")
        output = self.todo_rel.with_identifier(f"{base}__out_{suffix}")
        fields = self._embedding_fields if self.embedding else None
        select = S.shard_input_sql(self.todo_rel, model, start, stop, fields)
        counts = self.wh.query_arrow(S.shard_retried_sql(self.todo_rel, model, start, stop)).to_pylist()[0]
        retried = int(counts["r"] or 0)
        if self.backend.reads_views:
            # No copy of the requests: a job reading a view reads the todo table's rows of its shard
            # (as many as the todo rows just counted). The todo table outlives every job of its round
            # (replaced by the next round's diff once they all landed; after a crash the next run
            # closes them before it diffs again).
            self.wh.create_view_as(shard_input, select)
            rows = int(counts["n"])
        else:
            rows = self.wh.create_table_as(shard_input, select)
        fingerprint = self.wh.query_arrow(S.fingerprint_sql(shard_input)).column("f")[0].as_py()
        entry = LedgerEntry(
            job_key=f"{self.run_id}-{_label(self.node.name)}-r{self._round}-{index}",
            job_name=None, node=self.node.name, run_id=self.run_id, shard=index, gemini_model=model,
            input_table=str(shard_input), output_table=str(output), fingerprint=fingerprint or "",
            state=SUBMITTING, row_count=rows, mode=self.mode, sample=self.flags.sampled,
        )
        return _Job(entry, shard_input, output, retried=retried)

    def _labels(self, entry: LedgerEntry) -> dict[str, str]:
        return {
            "batchflow_run": _label(entry.run_id),
            "batchflow_node": _label(entry.node),
            "batchflow_shard": str(entry.shard),
            "batchflow_job_key": _label(entry.job_key),
        }

    def _create(self, job: _Job) -> None:
        # Record the intent first: if we die between create() and the update below, the next
        # run finds the job by its labels instead of creating a second, paid one.
        self.ledger.record(job.entry)
        checkpoint("after_ledger_record")
        if self.interrupt.is_set():  # the signal came while the row was written: create nothing
            self.ledger.update(job.entry.job_key, state=CLOSED, job_state="NOT_CREATED", missing_count=0)
            self.wh.drop(job.input)
            raise _NotCreated()
        spec = JobSpec(
            model=job.entry.gemini_model, input=job.input, output=job.output,
            display_name=f"batchflow-{job.entry.job_key}"[:128], labels=self._labels(job.entry),
            hash_model=self.settings.model,  # build hashed every row with the primary model
            model_parameters=dict(self._embedding_parameters) if self.embedding else None,
        )
        try:
            job.status = self.backend.submit(spec)
        except BatchflowError as exc:
            # The backend already looked for a half-created job by its labels; leave the row
            # SUBMITTING so the next run looks again before anything is resubmitted.
            self.ledger.update(job.entry.job_key, error=str(exc))
            raise
        checkpoint("after_create")
        job.entry.job_name = job.status.name
        self.report.rows_sent += job.entry.row_count
        self.report.rows_retried += job.retried
        self.ledger.update(job.entry.job_key, job_name=job.status.name, state=job.status.state.value,
                           job_state=job.status.state.value)

    def _find_job(self, entry: LedgerEntry) -> JobStatus | None:
        if entry.job_name:
            try:
                return self.backend.get(entry.job_name)
            except JobNotFoundError:
                return None  # other errors propagate: an unreachable backend is not a lost job
        found = self.backend.list({"batchflow_job_key": _label(entry.job_key)})
        if found:
            self.ledger.update(entry.job_key, job_name=found[0].name, state=found[0].state.value,
                               job_state=found[0].state.value)
            entry.job_name = found[0].name
            return found[0]
        return None

    def _close(self, job: _Job, state: str) -> None:
        """Land whatever an ended job left (any state), record the rows it did not answer, close its
        ledger row and drop its tables. Safe to repeat: a crash anywhere in here lands it again."""
        status = job.status
        name = (status.name if status and status.name else None) or job.entry.job_name or job.entry.job_key
        has_output = self.wh.kind(job.output) is not None
        has_input = self.wh.kind(job.input) is not None
        mode = job.entry.mode or "batch"  # a job of an earlier online run lands as online
        output_rows = self._merge(job.output, name, job.entry.gemini_model, mode) if has_output else 0
        missing = 0
        if has_input:
            missing = self._count(job.input) - (self._count_answered(job) if has_output else 0)
            if missing > 0:
                self.wh.merge_into(self.responses_rel, S.missing_sql(
                    job.input, job.output if has_output else None, self.responses_rel, name, job.entry.gemini_model,
                    self.requests_rel if self.embedding else None, mode=mode,
                    replace_online=self._replace_online and mode == "batch"),
                    ["request_hash"])
        checkpoint("during_merge")
        closed = LANDED if has_output else CLOSED
        self.ledger.update(job.entry.job_key, state=closed, job_state=state, missing_count=max(missing, 0),
                           successful_count=status.successful if status else 0,
                           failed_count=status.failed if status else 0, error=status.error if status else None)
        if has_output:
            self._landed_jobs.append(name)
        # Only after the ledger says so: until then the raw output is the one copy of what was paid for.
        self.wh.drop(job.output)
        self.wh.drop(job.input)
        self.report.jobs.append({"name": name, "state": state, "model": job.entry.gemini_model,
                                 "rows": job.entry.row_count, "successful": status.successful if status else 0,
                                 "failed": status.failed if status else 0, "missing": max(missing, 0),
                                 "landed_rows": output_rows})
        if state != JobState.SUCCEEDED.value:
            text = f"job {name} ended {state}" + (f": {status.error}" if status and status.error else "")
            if missing > 0:
                text += f" ({missing:,} of its {job.entry.row_count:,} row(s) had no answer)"
            self._ended_badly.append(text)

    def _merge(self, output: Relation, job_name: str, model: str, mode: str | None = None) -> int:
        """Land an output table; `mode`: how its job answered (default: as this run does)."""
        mode = mode or self.mode
        modes = {"mode": mode, "replace_online": self._replace_online and mode == "batch"}
        types = {c.name: c.type for c in self.wh.columns(output)}
        if self.embedding:  # `predictions` out; the request comes from the model's request relation
            request_types = {c.name: c.type for c in self.wh.columns(self.requests_rel)}
            answers_are_json = types.get("predictions") == "JSON"
            sql = S.land_sql(output, self.responses_rel, job_name, model, request_types.get("request") == "JSON",
                             answers_are_json, self.requests_rel, **modes)
        else:
            answers_are_json = types.get("response") == "JSON"
            sql = S.land_sql(output, self.responses_rel, job_name, model, types.get("request") == "JSON",
                             answers_are_json, **modes)
        if answers_are_json:
            return self.wh.merge_into(self.responses_rel, sql, ["request_hash"])
        # Answers as JSON text (a Vertex embedding job's `predictions` is a STRING column) are parsed
        # by a plain CREATE TABLE AS first, then merged: local-bigquery, the BigQuery emulator, cannot
        # run SAFE.PARSE_JSON inside a MERGE's source (BigQuery can). One more statement per job; a
        # crash leaves an `out_*` table without answer columns, which collect drops.
        parsed = output.with_identifier(f"{output.identifier}_parsed")
        self.wh.drop(parsed)
        self.wh.create_table_as(parsed, sql)
        try:
            return self.wh.merge_into(self.responses_rel, f"SELECT * FROM {parsed.render()}", ["request_hash"])
        finally:
            self.wh.drop(parsed)

    def _count(self, relation: Relation) -> int:
        return int(self.wh.query_arrow(S.count_sql(relation)).column("n")[0].as_py())

    def _count_answered(self, job: _Job) -> int:
        return int(self.wh.query_arrow(S.answered_count_sql(job.input, job.output)).column("n")[0].as_py())

    # -- helpers -------------------------------------------------------------------------------------
    def _key_sql(self) -> str:
        if not self.settings.key:
            return "ROW_NUMBER() OVER ()"
        if len(self.settings.key) == 1:
            return f"CAST(`{self.settings.key[0]}` AS STRING)"
        return "CONCAT(" + ", '|', ".join(f"CAST(`{k}` AS STRING)" for k in self.settings.key) + ")"

    def _key_label(self) -> str:
        return "|".join(self.settings.key) if self.settings.key else "row"


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
