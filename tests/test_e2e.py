"""End to end on the local target: the example project through the CLI, and the error paths a
user meets first (syntax errors, bad refs, cycles, invalid request rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLI, write

pytestmark = pytest.mark.e2e

STAGED_REVIEWS = 59  # 60 sample rows, one blank review filtered out by stg_reviews


def test_example_pipeline_builds_every_node(cli: CLI) -> None:
    result = cli("build")
    assert result.exit_code == 0, result.output
    assert "START batch review_requests" in result.output
    results = cli.run_results()["results"]
    # models and seeds succeed, data tests pass (dbt's statuses)
    assert {(r["resource_type"] == "test", r["status"]) for r in results} == {(False, "success"), (True, "pass")}
    assert {r["name"] for r in results} >= {"products", "stg_reviews", "review_requests", "review_labels",
                                           "daily_sentiment", "review_safety_ratings", "review_topics"}

    assert cli.query("select count(*) from reviews.review_labels")[0][0] == STAGED_REVIEWS
    assert cli.query("select count(distinct review_id) from reviews.review_labels")[0][0] == STAGED_REVIEWS
    outcomes = dict(cli.query("select outcome, count(*) from reviews.review_labels group by 1"))
    # The profile's mock answers the review asking for song lyrics with RECITATION.
    assert outcomes == {"ok": STAGED_REVIEWS - 1, "candidate_blocked": 1}
    assert cli.query("select outcome, finish_reason from reviews.review_labels where review_id = 'R0017'") == [
        ("candidate_blocked", "RECITATION")
    ]
    sentiments = {row[0] for row in cli.query("select distinct sentiment from reviews.review_labels where outcome = 'ok'")}
    assert sentiments and sentiments <= {"positive", "negative", "mixed"}
    assert cli.query("select sum(reviews) from reviews.daily_sentiment")[0][0] == STAGED_REVIEWS
    # Four harm categories per review: a RECITATION candidate still carries its safety ratings.
    assert cli.query("select count(*) from reviews.review_safety_ratings")[0][0] == 4 * STAGED_REVIEWS
    # Blocked candidates are billed too: every row carries usage metadata.
    assert cli.query("select count(*) from reviews.review_labels where total_tokens > 0")[0][0] == STAGED_REVIEWS

    batch = next(r for r in results if r["name"] == "review_requests")["batch"]
    distinct = cli.query("select count(distinct request_hash) from reviews.review_requests")[0][0]
    # Identical requests (same product and text) are sent once and share the answer.
    assert 0 < distinct < STAGED_REVIEWS
    assert batch["rows_total"] == STAGED_REVIEWS and batch["rows_sent"] == distinct
    assert batch["rows_duplicate"] == STAGED_REVIEWS - distinct
    assert batch["outcomes"] == {"ok": STAGED_REVIEWS - 1, "candidate_blocked": 1}
    assert [j["state"] for j in batch["jobs"]] == ["SUCCEEDED"]
    ledger = cli.query("select state, row_count from reviews._batchflow_jobs")
    assert ledger == [("LANDED", distinct)]
    # Every answer is kept in the responses store; job input/output tables are cleaned up.
    assert cli.query("select count(*) from reviews.review_requests__responses")[0][0] == distinct
    leftovers = cli.query("select table_name from information_schema.tables where strpos(table_name, '__in_') > 0 or strpos(table_name, '__out_') > 0")
    assert leftovers == []


def test_rerun_sends_nothing_and_changed_rows_only(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    assert cli("run").exit_code == 0
    batch = next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")["batch"]
    distinct = cli.query("select count(distinct request_hash) from reviews.review_requests")[0][0]
    assert batch["rows_sent"] == 0 and batch["rows_reused"] == distinct and batch["jobs"] == []

    data = cli.project / "data" / "reviews.csv"
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace("Best purchase", "Truly the best purchase", 1)
    data.write_text("\n".join(lines) + "\n")
    assert cli("run").exit_code == 0
    batch = next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")["batch"]
    assert batch["rows_sent"] == 1
    assert cli.query("select count(*) from reviews.review_labels")[0][0] == STAGED_REVIEWS


def test_select_runs_only_the_chosen_nodes(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    assert cli("run", "-s", "review_labels+").exit_code == 0
    names = [r["name"] for r in cli.run_results()["results"]]
    assert names == ["review_labels", "daily_sentiment"]


def test_ls_and_compile(cli: CLI) -> None:
    result = cli("ls", "-s", "tag:llm")
    assert result.exit_code == 0 and result.output.split() == ["reviews_demo.requests.review_requests"]
    result = cli("compile")
    assert result.exit_code == 0, result.output
    compiled = cli.project / "target" / "compiled" / "reviews_demo" / "models" / "requests" / "review_requests.sql"
    assert "JSON_OBJECT" in compiled.read_text().upper()
    manifest = json.loads((cli.project / "target" / "manifest.json").read_text())
    assert manifest["nodes"]["model.reviews_demo.review_labels"]["depends_on"]["nodes"] == [
        "model.reviews_demo.review_requests"]
    assert not (cli.project / "target" / "batchflow.duckdb").exists()  # compile runs nothing


def test_syntax_error_names_file_and_line(cli: CLI) -> None:
    write(cli.project, "models/marts/broken.sql", "-- a comment\n{{ config(materialized='table') }}\nselect review_id,\n  (body from {{ ref('stg_reviews') }}\n")
    result = cli("compile")
    assert result.exit_code == 1
    assert "models/marts/broken.sql:4" in result.output
    assert not (cli.project / "target" / "batchflow.duckdb").exists()


def test_missing_ref_suggests_closest_name(cli: CLI) -> None:
    write(cli.project, "models/marts/typo.sql", "select * from {{ ref('stg_review') }}\n")
    result = cli("compile")
    assert result.exit_code == 1
    assert "stg_review" in result.output and "did you mean 'stg_reviews'" in result.output
    assert "models/marts/typo.sql:1" in result.output


def test_cycle_is_printed(cli: CLI) -> None:
    write(cli.project, "models/marts/a.sql", "select * from {{ ref('b') }}\n")
    write(cli.project, "models/marts/b.sql", "select * from {{ ref('a') }}\n")
    result = cli("compile")
    assert result.exit_code == 1
    assert "a -> b -> a" in result.output or "b -> a -> b" in result.output


def test_invalid_request_row_fails_before_anything_runs(cli: CLI) -> None:
    write(
        cli.project,
        "models/requests/review_requests.sql",
        "{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id') }}\n"
        "select review_id,\n"
        "  case when review_id = 'R0005'\n"
        "       then json_object('contents', json_array(json_object('parts', json_array(json_object('text', body)))))\n"
        "       else {{ gemini_request(prompt='body') }} end as request\n"
        "from {{ ref('stg_reviews') }}\n",
    )
    result = cli("build")
    assert result.exit_code == 1
    assert "R0005" in result.output and "role" in result.output
    failed = next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")
    assert failed["status"] == "error" and "nothing was submitted" in failed["message"]
    downstream = {r["name"]: r["status"] for r in cli.run_results()["results"]}
    assert downstream["review_labels"] == "skipped"
    assert cli.query("select count(*) from reviews._batchflow_jobs")[0][0] == 0


def test_console_script_exit_codes(example_project: Path) -> None:
    exe = Path(sys.executable).with_name("batchflow")
    ok = subprocess.run([str(exe), "ls", "--project-dir", str(example_project)], capture_output=True, text=True)
    assert ok.returncode == 0 and "review_requests" in ok.stdout
    bad = subprocess.run([str(exe), "run", "--project-dir", str(example_project), "--target", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in (bad.stdout + bad.stderr)
    usage = subprocess.run([str(exe), "run", "--no-such-flag"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_jobs_commands_read_the_ledger(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    assert "no jobs still open" in cli("jobs", "list").output
    listed = cli("jobs", "list", "--all", "--output", "json")
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert len(rows) == 1 and rows[0]["state"] == "LANDED" and rows[0]["node"] == "review_requests"
    shown = cli("jobs", "show", rows[0]["job_key"])
    assert shown.exit_code == 0 and json.loads(shown.output)["job_name"] == rows[0]["job_name"]
    refused = cli("jobs", "cancel", rows[0]["job_key"])
    assert refused.exit_code == 2 and "LANDED" in refused.output
    assert cli("jobs", "show", "no-such-job").exit_code == 2


def test_unparsable_string_request_is_an_invalid_row_not_a_crash(cli: CLI) -> None:
    write(
        cli.project,
        "models/requests/review_requests.sql",
        "{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id', invalid_rows='skip') }}\n"
        "select review_id,\n"
        "  case when review_id = 'R0005' then '{\"contents\": [' \n"
        "       else to_json_string({{ gemini_request(prompt='body') }}) end as request\n"
        "from {{ ref('stg_reviews') }}\n",
    )
    result = cli("build", "--select", "+review_requests")
    assert result.exit_code == 0, result.output
    batch = next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")["batch"]
    assert batch["rows_invalid"] == 1 and batch["rows_total"] == 59
    assert any("R0005" in w and "not valid JSON" in w for w in batch["warnings"]), batch["warnings"]
    # the skipped row has no answer and is not counted as a duplicate; the other 58 rows were answered
    distinct = cli.query("select count(distinct request_hash) from reviews.review_requests where response is not null")
    assert batch["rows_sent"] == distinct[0][0] and batch["rows_sent"] + batch["rows_duplicate"] == 58
    assert cli.query("select count(*) from reviews.review_requests where response is null") == [(1,)]


def test_run_on_a_fresh_clone_succeeds(cli: CLI) -> None:
    """README command 1: `batchflow run` loads the seed the models read (seeds are nodes)."""
    result = cli("run")
    assert result.exit_code == 0, result.output
    assert "OK seed products" in result.output
    assert "answers from the mock provider: not real model output" in result.output
    assert cli.query("select count(*) from reviews.review_labels")[0][0] == STAGED_REVIEWS
