"""The batch lifecycle as data: a plan of frozen stages, and the SQL of each stage as a pure function.

A batch model's plan is

    build → validate → [sample →] collect → [diff → estimate → shard → submit → wait → land] × max_attempts → results → report

`--dry-run` stops after the first estimate; `--no-wait` stops after submit (the next run's collect stage
lands what it submitted); a rerun after a crash starts over at build, and collect picks up every job
the ledger still has open. The evaluator (`batchflow.lifecycle`) has one method per stage.

Answers carry the `mode` they were answered in (`batch`, or `online` for `--online` runs). A batch run
of a model with `online_answers: ignore` (the default) treats online answers as absent: it sends those
requests again, lets any batch answer replace them, and leaves them out of the model's relation, so a
production table is never built from prompt-iteration answers unnoticed. An online run reuses any
good answer, batch or online.

`--sample N` / `--sample-fraction p` (the sample stage) cut the request relation down to the N distinct
valid requests with the smallest hashes (N = ⌈p × distinct⌉): the same rows every run, a bigger sample
holding the smaller one. Everything after works on those rows, so the model's relation holds only them;
the next unsampled run builds the whole relation again, sending what has no reusable answer.

Every function here returns BigQuery SQL and touches no warehouse, so a test can call it and assert on
the text. `macro` arguments render a built-in macro (e.g. `finish_reason`) for the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from batchflow.relation import Relation, string_literal
from batchflow.table_options import Partitioning, TableOptions

MacroFn = Callable[..., str]

#: Row errors worth sending again: rate limits, server errors, not-yet-ready projects.
RETRYABLE_STATUS = r'"code":\s*(429|5[0-9][0-9])|RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|FAILED_PRECONDITION'


# -- stages -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Build:
    """Materialise the model's SELECT with a request hash per row into `requests`."""

    model_sql: str
    requests: Relation
    hash_model: str


@dataclass(frozen=True)
class Validate:
    """Column rules, then every row's request; nothing paid happens when this fails."""

    requests: Relation
    key: tuple[str, ...]
    invalid_rows: str


@dataclass(frozen=True)
class Sample:
    """Keep only the sampled requests in `requests` (`rows` of them, or the `fraction` of the distinct ones)."""

    requests: Relation
    rows: int | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class Collect:
    """Jobs earlier runs left open: adopt and wait for them, land what they wrote, clean leftovers."""

    node: str
    prefix: str  # `<model>__`: the model's own scratch tables start with it


@dataclass(frozen=True)
class Diff:
    """The requests that need an answer, each with the model to send it to, into `todo`."""

    requests: Relation
    responses: Relation
    todo: Relation
    model: str
    fallback_model: str | None
    retry_on: tuple[str, ...]
    max_attempts: int
    retry_failed: bool = False
    resubmit_all: bool = False
    ignore_online: bool = False  # a batch run with `online_answers: ignore`: online answers count as absent


@dataclass(frozen=True)
class Estimate:
    """Tokens and cost of what the diff would send; the limits are checked here."""

    todo: Relation
    output_tokens: int


@dataclass(frozen=True)
class Shard:
    """Split `todo` into jobs of at most `max_rows_per_job` rows per model."""

    todo: Relation
    max_rows_per_job: int


@dataclass(frozen=True)
class Submit:
    """Record each shard in the ledger, then create its job; at most `max_concurrent_jobs` at once."""

    max_concurrent_jobs: int


@dataclass(frozen=True)
class Wait:
    """Poll the jobs (with backoff) until they end, topping up to `max_concurrent_jobs` (the next
    shard's input is cut ahead while jobs run)."""

    poll_interval: float | None


@dataclass(frozen=True)
class Land:
    """Merge each ended job's output into `responses`; record the rows it left unanswered."""

    responses: Relation


@dataclass(frozen=True)
class Rounds:
    """Diff to land, repeated while rows are left to (re)send, at most `max_rounds` times."""

    stages: tuple["Stage", ...]
    max_rounds: int


@dataclass(frozen=True)
class Results:
    """The model's relation: each current request row with its latest answer."""

    relation: Relation
    requests: Relation
    responses: Relation
    ignore_online: bool = False  # leave online answers out (a batch run with `online_answers: ignore`)


@dataclass(frozen=True)
class Report:
    """Row outcomes of the model's rows; tokens and cost of this run's answers."""

    relation: Relation
    responses: Relation


Stage = Union[Build, Validate, Sample, Collect, Diff, Estimate, Shard, Submit, Wait, Land, Rounds, Results, Report]


@dataclass(frozen=True)
class BatchPlan:
    """The stages of one batch model in this run."""

    node: str
    stages: tuple[Stage, ...]
    mode: str = "run"  # "run", "dry_run" (stops after estimate) or "no_wait" (stops after submit)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line: `node: build → validate → … → report`."""
        return f"{self.node}: " + " → ".join(_name(s) for s in self.stages) + (
            f"  ({'; '.join(self.notes)})" if self.notes else "")


def _name(stage: Stage) -> str:
    if isinstance(stage, Rounds):
        inner = " → ".join(_name(s) for s in stage.stages)
        return f"[{inner}] ×{stage.max_rounds}" if stage.max_rounds > 1 else inner
    return type(stage).__name__.lower()


# -- SQL of each stage ------------------------------------------------------------------------------
def strip_sql(sql: str) -> str:
    """A SELECT without trailing semicolons or whitespace, to nest as a subquery."""
    return sql.strip().rstrip(";").strip()


def build_sql(model_sql: str, hash_sql: str) -> str:
    """The request relation: every column of the model's SELECT plus `request_hash`."""
    return f"SELECT *, {hash_sql} AS request_hash FROM ({strip_sql(model_sql)})"


def validate_counts_sql(requests: Relation, problem_sql: str) -> str:
    """Rows, invalid rows and distinct valid requests (`n`, `bad`, `d`)."""
    return (f"SELECT COUNT(*) AS n, COUNTIF(problem IS NOT NULL) AS bad, "
            f"COUNT(DISTINCT IF(problem IS NULL, request_hash, NULL)) AS d "
            f"FROM (SELECT *, {problem_sql} AS problem FROM {requests.render()})")


def invalid_rows_sql(requests: Relation, problem_sql: str, key_sql: str, limit: int) -> str:
    """The first `limit` invalid rows with their key and problem."""
    return (f"SELECT {key_sql} AS row_key, problem FROM (SELECT *, {problem_sql} AS problem "
            f"FROM {requests.render()}) WHERE problem IS NOT NULL ORDER BY row_key LIMIT {limit}")


def sample_sql(requests: Relation, rows: int, valid_sql: str = "") -> str:
    """Delete every request row but those of the `rows` distinct valid requests with the smallest hashes."""
    where = f" AND {valid_sql}" if valid_sql else ""
    return (f"DELETE FROM {requests.render()} WHERE request_hash IS NULL OR request_hash NOT IN ("
            f"SELECT request_hash FROM (SELECT DISTINCT request_hash FROM {requests.render()} "
            f"WHERE request_hash IS NOT NULL{where}) ORDER BY request_hash LIMIT {int(rows)})")


def is_online(alias: str) -> str:
    """True for an answer row given online (`--online`); rows landed before modes existed are batch."""
    return f"(COALESCE({alias}.mode, 'batch') = 'online')"


def answer_is_good(alias: str) -> str:
    """True when an answer row holds a response (a finished call, blocked or not)."""
    return f"(COALESCE({alias}.status, '') = '' AND {alias}.response IS NOT NULL)"


def answer_is_missing(alias: str) -> str:
    """True for a row a job was sent and left out of its output (response and status both NULL)."""
    return f"({alias}.status IS NULL AND {alias}.response IS NULL)"


def send_model_sql(stage: Diff, macro: MacroFn) -> str:
    """Per request (`c`) and its latest answer (`a`, LEFT JOINed): the model to send it to, or NULL."""
    primary = string_literal(stage.model)
    if stage.resubmit_all:
        return primary
    fallback = string_literal(stage.fallback_model or stage.model)
    # With no retry_on, no good answer is resent, so no answer's JSON is read: a diff after a round (or
    # a rerun with nothing new) would otherwise parse every stored answer for a test that cannot hold.
    blocked = _blocked_for_retry(stage, macro)
    transient = f"REGEXP_CONTAINS(a.status, r'{RETRYABLE_STATUS}')"
    under_limit = "TRUE" if stage.retry_failed else f"a.attempt < {stage.max_attempts}"
    ignored = f"WHEN {is_online('a')} THEN {primary} " if stage.ignore_online else ""
    return (
        "CASE "
        f"WHEN a.request_hash IS NULL THEN {'NULL' if stage.retry_failed else primary} "
        f"{ignored}"
        f"WHEN {answer_is_missing('a')} AND {under_limit} THEN {primary} "
        f"WHEN COALESCE(a.status, '') != '' AND ({'TRUE' if stage.retry_failed else transient}) "
        f"AND {under_limit} THEN {primary} "
        f"WHEN COALESCE(a.status, '') = '' AND a.response IS NOT NULL AND {blocked} AND {under_limit} THEN {fallback} "
        "END"
    )


def _candidates_sql(stage: Diff, in_flight: list[Relation], valid_sql: str, distinct: bool, payload: bool) -> str:
    cols = "request_hash, request" if payload else "request_hash"
    if distinct:
        cols = "request_hash, ANY_VALUE(request) AS request" if payload else "DISTINCT request_hash"
    group = " GROUP BY request_hash" if distinct and payload else ""
    flight = " UNION ALL ".join(f"SELECT request_hash FROM {r.render()}" for r in in_flight)
    where = [w for w in (valid_sql, f"request_hash NOT IN ({flight})" if flight else "") if w]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {cols} FROM {stage.requests.render()}{clause}{group}"


def remaining_sql(stage: Diff, macro: MacroFn, in_flight: list[Relation], valid_sql: str, distinct: bool) -> str:
    """How many requests the diff would send (`n`), over the hashes alone (cheap after a round)."""
    return (f"SELECT COUNT(*) AS n FROM ({_candidates_sql(stage, in_flight, valid_sql, distinct, False)}) c "
            f"LEFT JOIN {stage.responses.render()} a ON a.request_hash = c.request_hash "
            f"WHERE ({send_model_sql(stage, macro)}) IS NOT NULL")


def diff_sql(stage: Diff, macro: MacroFn, in_flight: list[Relation], valid_sql: str, distinct: bool) -> str:
    """The todo table: one row per request to send, with `send_model`, `retry` (its latest answer
    failed, was blocked for a `retry_on` reason, or is missing) and `shard_row` (1.. per model)."""
    decide = send_model_sql(stage, macro)
    retry = f"(a.request_hash IS NOT NULL AND NOT ({answer_is_good('a')} AND NOT ({_blocked_for_retry(stage, macro)})))"
    return (
        "SELECT request_hash, request, send_model, retry, "
        "ROW_NUMBER() OVER (PARTITION BY send_model ORDER BY request_hash) AS shard_row FROM ("
        f"SELECT c.request_hash, c.request, {decide} AS send_model, {retry} AS retry "
        f"FROM ({_candidates_sql(stage, in_flight, valid_sql, distinct, True)}) c "
        f"LEFT JOIN {stage.responses.render()} a ON a.request_hash = c.request_hash) WHERE send_model IS NOT NULL"
    )


def _blocked_for_retry(stage: Diff, macro: MacroFn) -> str:
    if not stage.retry_on:
        return "FALSE"
    reasons = ", ".join(string_literal(r) for r in stage.retry_on)
    return (f"COALESCE({macro('finish_reason', 'a.response')} IN ({reasons}) "
            f"OR {macro('block_reason', 'a.response')} IN ({reasons}), FALSE)")


def plan_counts_sql(todo: Relation) -> str:
    """Requests per send model in the todo table, and how many of them are retries."""
    return (f"SELECT send_model, COUNT(*) AS n, COUNTIF(retry) AS retried FROM {todo.render()} "
            "GROUP BY send_model ORDER BY send_model")


def estimate_sql(todo: Relation, output_tokens: int) -> str:
    """Per send model: requests, request characters and the output tokens asked for."""
    max_out = ("COALESCE(SAFE_CAST(JSON_VALUE(request, '$.generationConfig.maxOutputTokens') AS INT64), "
               "SAFE_CAST(JSON_VALUE(request, '$.generation_config.max_output_tokens') AS INT64), "
               f"{int(output_tokens)})")
    return (f"SELECT send_model, COUNT(*) AS n, SUM(LENGTH(TO_JSON_STRING(request))) AS chars, "
            f"SUM({max_out}) AS out_tokens FROM {todo.render()} GROUP BY send_model")


def shard_where(model: str, start: int, stop: int) -> str:
    """The todo rows of one shard."""
    return f"send_model = {string_literal(model)} AND shard_row >= {int(start)} AND shard_row < {int(stop)}"


def shard_input_sql(todo: Relation, model: str, start: int, stop: int,
                    embedding_fields: tuple[str, ...] | None = None) -> str:
    """A shard's job input: only `request_hash` and `request` (Vertex copies input columns to the output).
    An embedding job's input holds `request_hash` and the instance fields (`embedding_fields`, e.g.
    content, task_type, title) as columns instead of `request` (contract §3)."""
    if embedding_fields is not None:
        fields = ", ".join(f"JSON_VALUE(request, '$.{f}') AS {f}" for f in embedding_fields)
        return f"SELECT request_hash, {fields} FROM {todo.render()} WHERE {shard_where(model, start, stop)}"
    return f"SELECT request_hash, request FROM {todo.render()} WHERE {shard_where(model, start, stop)}"


def embedding_shape_sql(requests: Relation, problem_sql: str) -> str:
    """Over an embedding model's valid rows: how many distinct `parameters` they ask for (`kinds`; a
    job takes one set), one of them as JSON text (`parameters`), and how many rows set `task_type` and
    `title` (which then become input columns)."""
    params = "TO_JSON_STRING(JSON_QUERY(request, '$.parameters'))"
    return (f"SELECT COUNT(DISTINCT {params}) AS kinds, MIN({params}) AS parameters, MAX({params}) AS other, "
            "COUNTIF(JSON_VALUE(request, '$.task_type') IS NOT NULL) AS task_types, "
            "COUNTIF(JSON_VALUE(request, '$.title') IS NOT NULL) AS titles "
            f"FROM {requests.render()} WHERE {problem_sql} IS NULL")


def _stored_request(alias: str, embedding_requests: Relation | None) -> tuple[str, str]:
    """The `request` an answer row stores, and the join that brings it: an embedding job's input and
    output hold no `request` column, so it comes from the model's request relation (NULL for a row
    no current request has)."""
    if embedding_requests is None:
        return f"{alias}.request", ""
    return ("q.request", f" LEFT JOIN (SELECT request_hash, ANY_VALUE(request) AS request FROM "
                         f"{embedding_requests.render()} GROUP BY request_hash) q ON q.request_hash = {alias}.request_hash")


def shard_retried_sql(todo: Relation, model: str, start: int, stop: int) -> str:
    """A shard's requests (`n`) and how many of them are retries (`r`)."""
    return (f"SELECT COUNT(*) AS n, COUNTIF(retry) AS r FROM {todo.render()} "
            f"WHERE {shard_where(model, start, stop)}")


def fingerprint_sql(shard_input: Relation) -> str:
    """A digest of the hashes a shard holds (the ledger keeps it to recognise the same shard)."""
    return (f"SELECT TO_HEX(SHA256(STRING_AGG(request_hash, ',' ORDER BY request_hash))) AS f "
            f"FROM {shard_input.render()}")


def _merge_guard(incoming_good: str, replace_online: bool = False) -> str:
    # An incoming answer replaces the stored one unless it is a failure or a missing row and the
    # stored one is a real answer: a late, worse copy never overwrites a paid, good answer. A batch
    # run ignoring online answers replaces them whatever it brings.
    stored_good = f"({answer_is_good('p')} AND NOT {is_online('p')})" if replace_online else answer_is_good('p')
    return f"NOT (NOT {incoming_good} AND p.request_hash IS NOT NULL AND {stored_good})"


def _attempt_sql(job: str, mode: str) -> str:
    # A job landed twice counts once; an answer in another mode than the stored one starts the count again.
    return (f"CASE WHEN p.job_name = {job} THEN p.attempt WHEN COALESCE(p.mode, 'batch') != {string_literal(mode)} "
            "THEN 1 ELSE COALESCE(p.attempt, 0) + 1 END")


def land_sql(output: Relation, responses: Relation, job_name: str, model: str, request_is_json: bool,
             response_is_json: bool, embedding_requests: Relation | None = None, *, mode: str = "batch",
             replace_online: bool = False) -> str:
    """A job's output rows as answer rows to merge on `request_hash`. Landing the same job twice (a
    crash between the merge and the ledger update) changes nothing: its attempt is not counted again.
    `mode`: how the job answered (`batch` | `online`); `replace_online`: its rows replace stored online
    answers even when they failed (a batch run ignoring online answers).

    An embedding job (`embedding_requests`: the model's request relation) writes `predictions` and no
    `processed_time`: the store keeps the predictions as its `response` and the request from
    `embedding_requests`."""
    answer = "o.predictions" if embedding_requests is not None else "o.response"
    response = answer if response_is_json else f"SAFE.PARSE_JSON({answer})"
    request, join = _stored_request("o", embedding_requests)
    if not request_is_json:  # of the output's `request`, or of `embedding_requests`' for an embedding job
        request = f"SAFE.PARSE_JSON({request})"
    processed = "CAST(NULL AS TIMESTAMP)" if embedding_requests is not None else "o.processed_time"
    job = string_literal(job_name)
    good = f"(COALESCE(o.status, '') = '' AND {answer} IS NOT NULL)"
    return (
        f"SELECT o.request_hash, {request} AS request, {response} AS response, o.status, {processed} AS processed_time, "
        f"{job} AS job_name, {string_literal(model)} AS model_name, "
        f"{_attempt_sql(job, mode)} AS attempt, CURRENT_TIMESTAMP() AS landed_at, {string_literal(mode)} AS mode "
        f"FROM {output.render()} o LEFT JOIN {responses.render()} p ON p.request_hash = o.request_hash{join} "
        f"WHERE o.request_hash IS NOT NULL AND {_merge_guard(good, replace_online)}"
    )


def missing_sql(shard_input: Relation, output: Relation | None, responses: Relation, job_name: str,
                model: str, embedding_requests: Relation | None = None, *, mode: str = "batch",
                replace_online: bool = False) -> str:
    """Answer rows for the requests a job was sent and did not answer (no output row): response and
    status NULL, so `row_outcome` says `missing` and the next round resends them (counting an attempt).
    `mode` and `replace_online` as for `land_sql`."""
    job = string_literal(job_name)
    absent = (f"WHERE i.request_hash NOT IN (SELECT request_hash FROM {output.render()} "
              "WHERE request_hash IS NOT NULL)") if output is not None else ""
    stored_good = f"({answer_is_good('p')} AND NOT {is_online('p')})" if replace_online else answer_is_good('p')
    guard = f"{'AND' if absent else 'WHERE'} NOT (p.request_hash IS NOT NULL AND ({stored_good} OR p.job_name = {job}))"
    request, join = _stored_request("i", embedding_requests)  # an embedding job's input has no `request`
    return (
        f"SELECT i.request_hash, {request} AS request, CAST(NULL AS JSON) AS response, CAST(NULL AS STRING) AS status, "
        f"CAST(NULL AS TIMESTAMP) AS processed_time, {job} AS job_name, {string_literal(model)} AS model_name, "
        f"{_attempt_sql(job, mode)} AS attempt, CURRENT_TIMESTAMP() AS landed_at, {string_literal(mode)} AS mode "
        f"FROM {shard_input.render()} i LEFT JOIN {responses.render()} p ON p.request_hash = i.request_hash{join} "
        f"{absent} {guard}"
    )


def answered_count_sql(shard_input: Relation, output: Relation) -> str:
    """How many of a job's requests have a row in its output (`n`)."""
    return (f"SELECT COUNT(*) AS n FROM {shard_input.render()} WHERE request_hash IN "
            f"(SELECT request_hash FROM {output.render()})")


def count_sql(relation: Relation) -> str:
    """Rows of a relation (`n`)."""
    return f"SELECT COUNT(*) AS n FROM {relation.render()}"


#: the answer store's columns (BigQuery column definitions)
RESPONSES_COLUMNS = ("request_hash STRING, request JSON, response JSON, status STRING, processed_time TIMESTAMP, "
                     "job_name STRING, model_name STRING, attempt INT64, landed_at TIMESTAMP, mode STRING")
#: its layout where the warehouse has one (BigQuery): clustered by request_hash, so the diff's join on the
#: hash reads sorted blocks; partitioned by the month batchflow landed the row (never NULL, unlike Vertex's
#: processed_time; months keep partitions large enough for clustering to pay, far below 10,000 partitions)
RESPONSES_OPTIONS = TableOptions(partition_by=Partitioning("landed_at", "timestamp", "month"),
                                 cluster_by=("request_hash",))


def responses_ddl(responses: Relation) -> str:
    """The model's store of every answer ever landed, keyed by request hash."""
    return f"CREATE TABLE IF NOT EXISTS {responses.render()} ({RESPONSES_COLUMNS})"


#: columns the answer store gained after its first release: an older store gets them when a run opens it
RESPONSES_ADDED_COLUMNS = (("mode", "STRING"),)


def add_column_sql(relation: Relation, name: str, kind: str) -> str:
    """Add a column to an existing table."""
    return f"ALTER TABLE {relation.render()} ADD COLUMN {name} {kind}"


def results_sql(requests: Relation, responses: Relation, embedding: bool = False, ignore_online: bool = False) -> str:
    """The model's relation: request rows with their answer and batchflow's bookkeeping columns. An
    embedding model's answer columns are Vertex's: `predictions` and `status`. `ignore_online`: online
    answers are left out (those rows have none)."""
    answers = (f"(SELECT * FROM {responses.render()} o WHERE NOT {is_online('o')})" if ignore_online
               else responses.render())
    if embedding:
        return (f"SELECT q.* EXCEPT (request_hash), a.response AS predictions, a.status, q.request_hash, "
                f"a.job_name, a.model_name, a.attempt FROM {requests.render()} q "
                f"LEFT JOIN {answers} a ON a.request_hash = q.request_hash")
    return (f"SELECT q.* EXCEPT (request_hash), a.response, a.status, a.processed_time, q.request_hash, "
            f"a.job_name, a.model_name, a.attempt FROM {requests.render()} q "
            f"LEFT JOIN {answers} a ON a.request_hash = q.request_hash")


def outcomes_sql(relation: Relation, macro: MacroFn, embedding: bool = False) -> str:
    """Rows per outcome (`missing` for rows with no answer, sent or not)."""
    outcome = macro("row_outcome", "predictions", "status") if embedding else macro("row_outcome", "response", "status", "request")
    return (f"SELECT CASE WHEN job_name IS NULL THEN 'missing' ELSE {outcome} END AS outcome, COUNT(*) AS n "
            f"FROM {relation.render()} GROUP BY 1 ORDER BY 1")


def usage_sql(responses: Relation, jobs: list[str], macro: MacroFn, embedding: bool = False) -> str:
    """Tokens per model of the answers the given jobs landed (an embedding's: the tokens it read)."""
    names = ", ".join(string_literal(j) for j in jobs)
    if embedding:
        tokens = f"SUM({macro('embedding_token_count', 'response')})"
        return (f"SELECT model_name, {tokens} AS prompt, 0 AS candidates, {tokens} AS total "
                f"FROM {responses.render()} WHERE job_name IN ({names}) GROUP BY model_name")
    # usage_tokens' fields, read out of each answer's usageMetadata extracted once: four paths into the
    # whole answer would parse it four times (1.7 s vs 1.1 s per 1M answers on DuckDB).
    def tokens(field: str) -> str:
        return f"SAFE_CAST(JSON_VALUE(usage, '$.{field}') AS INT64)"

    return (
        f"SELECT model_name, SUM({tokens('promptTokenCount')}) AS prompt, "
        f"SUM({tokens('candidatesTokenCount')}) + COALESCE(SUM({tokens('thoughtsTokenCount')}), 0) AS candidates, "
        f"SUM({tokens('totalTokenCount')}) AS total FROM (SELECT model_name, JSON_QUERY(response, '$.usageMetadata') "
        f"AS usage FROM {responses.render()} WHERE job_name IN ({names})) GROUP BY model_name"
    )
