"""The batch lifecycle as data: the plan per mode, each stage's SQL (asserted as text and run on an
in-memory DuckDB), the job state machine, and the cases of issue 11 that need no emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchflow import batch_stages as S
from batchflow.batch.states import CLOSED_STATES, OPEN_STATES, RULES, JobState, Rerun, rule
from batchflow.relation import Relation, string_literal
from tests.conftest import CLI, write

REQ = Relation(None, "ds", "m__requests")
RESP = Relation(None, "ds", "m__responses")
TODO = Relation(None, "ds", "m__todo")
IN = Relation(None, "ds", "m__in_1")
OUT = Relation(None, "ds", "m__out_1")


def fake_macro(name: str, *args: str) -> str:
    """Stands in for the renderer: the SQL of the stages is asserted without a project."""
    if name == "finish_reason":
        return f"JSON_VALUE({args[0]}, '$.candidates[0].finishReason')"
    if name == "block_reason":
        return f"JSON_VALUE({args[0]}, '$.promptFeedback.blockReason')"
    return f"{name}({', '.join(args)})"


def diff(**kw) -> S.Diff:
    base = dict(requests=REQ, responses=RESP, todo=TODO, model="gemini-2.5-flash", fallback_model=None,
                retry_on=(), max_attempts=3)
    base.update(kw)
    return S.Diff(**base)


# -- the plan ----------------------------------------------------------------------------------------
def _plan(**flags):
    from batchflow.compiler import Node
    from batchflow.lifecycle import BatchSettings, RunFlags, plan_batch

    node = Node.__new__(Node)  # only the fields the plan reads
    node.name, node.compiled_sql, node.relation = "m", "select 1", Relation(None, "ds", "m")
    settings = BatchSettings.from_config({"model": "gemini-2.5-flash", "max_attempts": 3}, "m.sql")
    return plan_batch(node, settings, RunFlags(**flags))


def test_a_run_is_build_to_report_with_the_send_stages_repeated_per_attempt() -> None:
    plan = _plan()
    assert plan.describe() == ("m: build → validate → collect → [diff → estimate → shard → submit → wait → land] ×3"
                               " → results → report")
    assert all(type(s).__dataclass_params__.frozen for s in plan.stages)


def test_dry_run_stops_after_the_estimate_and_no_wait_after_submit() -> None:
    assert [type(s).__name__ for s in _plan(dry_run=True).stages] == ["Build", "Validate", "Collect", "Diff", "Estimate"]
    names = [type(s).__name__ for s in _plan(no_wait=True).stages]
    assert names == ["Build", "Validate", "Collect", "Diff", "Estimate", "Shard", "Submit", "Results", "Report"]
    assert "Wait" not in names and "Land" not in names
    assert "×" not in _plan(retry_failed=True).describe()  # one deliberate pass


# -- stage SQL as text ---------------------------------------------------------------------------------
def test_missing_rows_are_resent_only_under_the_attempt_cap() -> None:
    sql = S.send_model_sql(diff(), fake_macro)
    assert "a.status IS NULL AND a.response IS NULL) AND a.attempt < 3" in sql
    assert "a.attempt" not in S.send_model_sql(diff(resubmit_all=True), fake_macro)


def test_the_diff_reads_answers_json_only_for_retry_on_reasons() -> None:
    # Without retry_on no good answer is resent: the diff must not parse every stored answer for it.
    plain = S.send_model_sql(diff(), fake_macro) + S.diff_sql(diff(), fake_macro, [], "", False)
    assert "finishReason" not in plain and "blockReason" not in plain
    sql = S.send_model_sql(diff(retry_on=("SAFETY",), fallback_model="gemini-2.5-pro"), fake_macro)
    assert "JSON_VALUE(a.response, '$.candidates[0].finishReason') IN ('SAFETY')" in sql
    assert "THEN 'gemini-2.5-pro'" in sql


def test_shard_input_carries_only_hash_and_request() -> None:
    sql = S.shard_input_sql(TODO, "gemini-2.5-flash", 11, 21)
    assert sql.startswith("SELECT request_hash, request FROM `ds`.`m__todo`")
    assert "shard_row >= 11 AND shard_row < 21" in sql


# -- stage SQL run on DuckDB ---------------------------------------------------------------------------
@pytest.fixture
def wh():
    from batchflow.warehouse.duckdb import DuckDBWarehouse

    w = DuckDBWarehouse(":memory:", schema="ds")
    w.execute(S.responses_ddl(RESP))
    yield w
    w.close()


def _output(wh, rows: list[tuple[str, str | None, str]]) -> None:
    """A Vertex-shaped output table: (request_hash, response JSON text or None, status)."""
    values = ", ".join(
        f"('{h}', JSON '{{\"contents\": []}}', {('JSON ' + repr(r)) if r else 'CAST(NULL AS JSON)'}, '{s}', "
        "CURRENT_TIMESTAMP())" for h, r, s in rows)
    wh.execute("CREATE OR REPLACE TABLE ds.m__out_1 AS SELECT * FROM (SELECT 'x' AS request_hash, JSON '{}' AS request, "
               "JSON '{}' AS response, '' AS status, CURRENT_TIMESTAMP() AS processed_time) WHERE FALSE")
    if rows:
        wh.execute(f"INSERT INTO ds.m__out_1 VALUES {values}")


def _store(wh) -> dict[str, tuple]:
    rows = wh.query_arrow("SELECT request_hash, status, job_name, attempt, response IS NULL AS no_response "
                          "FROM ds.m__responses").to_pylist()
    return {r["request_hash"]: (r["status"], r["job_name"], r["attempt"], r["no_response"]) for r in rows}


GOOD = '{"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}'


def test_landing_the_same_job_twice_changes_nothing(wh) -> None:
    _output(wh, [("h1", GOOD, ""), ("h2", None, 'Too Many Requests: {"error": {"code": 429}}')])
    sql = S.land_sql(OUT, RESP, "job-1", "gemini-2.5-flash", True, True)
    wh.merge_into(RESP, sql, ["request_hash"])
    first = _store(wh)
    wh.merge_into(RESP, sql, ["request_hash"])  # a crash between the merge and the ledger's LANDED
    assert _store(wh) == first and first["h1"][2] == 1 and first["h2"][2] == 1


def test_a_failure_never_overwrites_a_good_answer_but_a_new_answer_replaces_a_failure(wh) -> None:
    _output(wh, [("h1", GOOD, ""), ("h2", None, "Internal Server Error: {}")])
    wh.merge_into(RESP, S.land_sql(OUT, RESP, "job-1", "m", True, True), ["request_hash"])
    _output(wh, [("h1", None, "Internal Server Error: {}"), ("h2", GOOD, "")])
    wh.merge_into(RESP, S.land_sql(OUT, RESP, "job-2", "m", True, True), ["request_hash"])
    store = _store(wh)
    assert store["h1"] == ("", "job-1", 1, False)  # the good answer stayed
    assert store["h2"] == ("", "job-2", 2, False)  # the failure was replaced, attempt 2


def test_rows_a_job_left_out_become_missing_rows_once(wh) -> None:
    wh.execute("CREATE TABLE ds.m__in_1 AS SELECT * FROM (VALUES ('h1', JSON '{}'), ('h2', JSON '{}'), "
               "('h3', JSON '{}')) t(request_hash, request)")
    _output(wh, [("h1", GOOD, "")])
    wh.merge_into(RESP, S.land_sql(OUT, RESP, "job-1", "m", True, True), ["request_hash"])
    sql = S.missing_sql(IN, OUT, RESP, "job-1", "m")
    wh.merge_into(RESP, sql, ["request_hash"])
    wh.merge_into(RESP, sql, ["request_hash"])  # landing again counts no second attempt
    store = _store(wh)
    assert store["h2"] == (None, "job-1", 1, True) and store["h3"] == (None, "job-1", 1, True)
    assert store["h1"] == ("", "job-1", 1, False)
    # a later job that also lost them: attempt 2; one more and the diff stops resending (max_attempts 3)
    wh.merge_into(RESP, S.missing_sql(IN, None, RESP, "job-2", "m"), ["request_hash"])
    assert _store(wh)["h2"][2] == 2 and _store(wh)["h1"][1] == "job-1"
    wh.execute("CREATE TABLE ds.m__requests AS SELECT request_hash, request FROM ds.m__in_1")
    left = lambda: wh.query_arrow(S.remaining_sql(diff(), fake_macro, [], "", False)).column("n")[0].as_py()  # noqa: E731
    assert left() == 2
    wh.merge_into(RESP, S.missing_sql(IN, None, RESP, "job-3", "m"), ["request_hash"])
    assert left() == 0


# -- the state machine ---------------------------------------------------------------------------------
def test_every_backend_state_has_one_rule_and_ended_jobs_are_landed_whatever_their_state() -> None:
    for state in JobState:
        assert state.value in RULES
    for state in ("SUCCEEDED", "PARTIALLY_SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "LOST"):
        r = rule(state)
        assert r.terminal and r.landable and r.open and r.rerun is Rerun.LAND, state
    assert CLOSED_STATES == {"LANDED", "CLOSED"}
    assert rule("PAUSED").rerun is Rerun.ATTENTION and rule("PAUSED").cancellable
    assert not rule("SUCCEEDED").cancellable and rule("RUNNING").cancellable
    assert rule("SOME_FUTURE_STATE").open  # never given up silently
    assert OPEN_STATES.isdisjoint(CLOSED_STATES)


def test_the_ledger_keeps_ended_jobs_open_until_a_run_closes_them(wh) -> None:
    from batchflow.ledger import Ledger, LedgerEntry

    ledger = Ledger(wh)
    for i, state in enumerate(("EXPIRED", "CANCELLED", "FAILED", "LANDED", "CLOSED", "RUNNING", "SUBMITTING")):
        ledger.record(LedgerEntry(f"k{i}", None, "m", "r", i, "g", "ds.i", "ds.o", "", state, 1))
    open_states = {e.state for e in ledger.entries(open_only=True)}
    assert open_states == {"EXPIRED", "CANCELLED", "FAILED", "RUNNING", "SUBMITTING"}


# -- cases of issue 11 on the local target -----------------------------------------------------------------
def _batch(cli: CLI) -> dict:
    return next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")["batch"]


def _ledger_rows(cli: CLI) -> int:
    try:
        return cli.query("select count(*) from reviews._batchflow_jobs")[0][0]
    except Exception:  # noqa: BLE001 - no ledger table: nothing was recorded
        return 0


@pytest.mark.e2e
@pytest.mark.parametrize("column", ["REQUEST_HASH", "Request_Hash", "ATTEMPT", "Job_Name", "model_name", "Status"])
def test_reserved_column_names_are_refused_in_any_case_before_anything_runs(cli: CLI, column: str) -> None:
    write(cli.project, "models/requests/review_requests.sql",
          "{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id') }}\n"
          f"select review_id, body as {column}, {{{{ gemini_request(prompt='body') }}}} as request\n"
          "from {{ ref('stg_reviews') }}\n")
    result = cli("build", "-s", "+review_requests")
    assert result.exit_code == 2  # found at compile time: nothing ran
    assert column in result.output and "reserved" in result.output
    assert not (cli.project / "target" / "batchflow.duckdb").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("column", ["ATTEMPT", "Processed_Time"])
def test_reserved_names_behind_a_star_are_refused_before_anything_is_sent(cli: CLI, column: str) -> None:
    write(cli.project, "models/requests/review_requests.sql",
          "{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id') }}\n"
          "select s.*, {{ gemini_request(prompt='body') }} as request\n"
          f"from (select review_id, body, body as {column} from {{{{ ref('stg_reviews') }}}}) s\n")
    result = cli("build", "-s", "+review_requests")
    assert result.exit_code == 1
    assert column in result.output and ("reserved" in result.output or "Vertex writes" in result.output)
    assert _ledger_rows(cli) == 0


@pytest.mark.e2e
def test_a_batch_model_without_a_request_column_gets_the_documented_message(cli: CLI) -> None:
    write(cli.project, "models/requests/review_requests.sql",
          "{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id') }}\n"
          "select review_id, body from {{ ref('stg_reviews') }}\n")
    result = cli("build", "-s", "+review_requests")
    assert result.exit_code == 2
    assert "must return a JSON `request` column" in result.output and "Binder" not in result.output


@pytest.mark.e2e
def test_reports_count_only_what_was_submitted(cli: CLI) -> None:
    assert cli("build", "--dry-run").exit_code == 0
    dry = _batch(cli)
    assert dry["rows_sent"] == 0 and dry["would_send"] == 52 and dry["dry_run"]
    assert cli("build", "-s", "+review_requests").exit_code == 0
    assert _batch(cli)["rows_sent"] == 52 and _batch(cli)["rows_retried"] == 0
    again = cli("run", "--full-refresh", "--resubmit-batches", "-s", "review_requests")
    assert again.exit_code == 0, again.output
    assert _batch(cli)["rows_sent"] == 52 and _batch(cli)["rows_retried"] == 0  # none of them had failed


@pytest.mark.e2e
def test_a_refused_run_reports_nothing_sent(cli: CLI) -> None:
    path = cli.project / "models/requests/review_requests.sql"
    path.write_text(path.read_text().replace("key='review_id'", "key='review_id', max_requests=10"))
    result = cli("build", "-s", "+review_requests")
    assert result.exit_code == 1 and "max_requests" in result.output
    assert _batch(cli)["rows_sent"] == 0 and _ledger_rows(cli) == 0


@pytest.mark.e2e
def test_each_job_of_a_run_has_its_own_key_labels_and_tables_across_retry_rounds(cli: CLI) -> None:
    from tests.test_batch_policy import set_failures

    set_failures(cli, [{"when_prompt_contains": "lyrics", "outcome": "transient_error", "limit": 2}])
    assert cli("build").exit_code == 0
    rows = cli.query("select job_key, job_name, input_table, output_table, state from reviews._batchflow_jobs "
                     "order by created_at")
    assert len(rows) == 3  # the first job, then one per retry round
    for column in range(4):
        assert len({r[column] for r in rows}) == 3, rows
    assert {r[4] for r in rows} == {"LANDED"}
    assert [k.rsplit("-", 2)[1] for k, *_ in rows] == ["r1", "r2", "r3"]


@pytest.mark.e2e
def test_cancelling_a_finished_job_is_refused_and_says_why(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    key = json.loads(cli("jobs", "list", "--all", "--output", "json").output.splitlines()[0])["job_key"]
    refused = cli("jobs", "cancel", key)
    assert refused.exit_code == 2 and "LANDED" in refused.output and "nothing to cancel" in refused.output
    assert "cancel requested" not in refused.output


@pytest.mark.e2e
def test_invalid_json_answers_are_their_own_outcome(cli: CLI, tmp_path: Path) -> None:
    """A JSON-mode request whose answer text does not parse is `invalid_json`, not `ok`."""
    from batchflow.compiler import Compiler
    from batchflow.project import load_profile, load_project

    project = load_project(cli.project)
    compiler = Compiler(project, load_profile(project, None, None))
    outcome = compiler.renderer.call_macro("row_outcome", "response", "status", "request")
    from batchflow.warehouse.duckdb import DuckDBWarehouse

    w = DuckDBWarehouse(":memory:", schema="ds")
    try:
        def run(text: str, mime: str) -> str:
            response = json.dumps({"candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}]})
            request = json.dumps({"contents": [], "generationConfig": {"responseMimeType": mime}})
            return w.query_arrow(f"SELECT {outcome} AS o FROM (SELECT PARSE_JSON({string_literal(response)}) AS "
                                 f"response, '' AS status, PARSE_JSON({string_literal(request)}) AS request)"
                                 ).column("o")[0].as_py()

        assert run("not json", "application/json") == "invalid_json"
        assert run('{"a": 1}', "application/json") == "ok"
        assert run("not json", "text/plain") == "ok"
        missing = w.query_arrow(f"SELECT {outcome} AS o FROM (SELECT CAST(NULL AS JSON) AS response, "
                                "CAST(NULL AS STRING) AS status, JSON '{}' AS request)").column("o")[0].as_py()
        assert missing == "missing"
    finally:
        w.close()


@pytest.mark.e2e
def test_no_google_credentials_is_one_clear_error_before_anything_runs(example_project: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with (example_project / "profiles.yml").open("a") as f:
        f.write("""
    novertex:
      type: duckdb
      schema: reviews
      batch:
        backend: vertex
        project: some-project
        location: us-central1
""")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    # NO_GCE_CHECK: google-auth must not probe the GCE metadata server (no network here)
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_GCE_CHECK="true")
    done = subprocess.run([sys.executable, "-m", "batchflow.cli", "run", "--project-dir", str(example_project),
                           "--target", "novertex"], capture_output=True, text=True, env=env, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "found no Google credentials" in out and "gcloud auth application-default login" in out
    assert "Traceback" not in out
    assert not (example_project / "target" / "batchflow.duckdb").exists() or "START" not in out


def test_the_readme_table_of_job_states_is_generated_from_the_rules() -> None:
    from batchflow.batch.states import reference_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = readme.index("<!-- states:begin -->\n"), readme.index("<!-- states:end -->")
    assert readme[start + len("<!-- states:begin -->\n"):end] == reference_markdown(), (
        "README's job-state table is stale: paste batchflow.batch.states.reference_markdown()")


def test_worker_threads_leave_signals_to_the_main_thread() -> None:
    """A signal delivered to a worker would wait for the main thread's next wake-up while the worker
    goes on submitting jobs; blocked in workers, the kernel hands it to the main thread at once."""
    import signal
    import threading

    from batchflow.interrupt import block_signals_in_this_thread

    seen: dict[str, set] = {}

    def worker() -> None:
        block_signals_in_this_thread()
        inner = threading.Thread(target=lambda: seen.update(inner=signal.pthread_sigmask(signal.SIG_BLOCK, set())))
        inner.start()
        inner.join()
        seen["worker"] = signal.pthread_sigmask(signal.SIG_BLOCK, set())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    for name in ("worker", "inner"):  # threads a worker starts (local jobs) inherit the mask
        assert {signal.SIGINT, signal.SIGTERM} <= seen[name], name
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the main thread is untouched
