"""Never pay twice, on the local target: retries, fallback models, sharding, cost limits, dry runs
and full refreshes, driven through the CLI with the mock provider's injected failures."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import CLI

pytestmark = pytest.mark.e2e

DISTINCT_REQUESTS = 52  # 59 staged reviews, 7 of them repeat another review's product and text
MODEL_CONFIG = "config(materialized='batch', model='gemini-2.5-flash', key='review_id')"


def set_failures(cli: CLI, failures: list[dict]) -> None:
    # Edited as text: profiles.yml holds Jinja that a YAML round trip would re-quote.
    path = cli.project / "profiles.yml"
    text = path.read_text()
    block = re.search(r"^( +)failures:\n(?:\1 .*\n)+", text, re.M)
    assert block is not None
    path.write_text(text.replace(block.group(0), f"{block.group(1)}failures: {json.dumps(failures)}\n", 1))


def set_model_config(cli: CLI, extra: str) -> None:
    path = cli.project / "models" / "requests" / "review_requests.sql"
    path.write_text(path.read_text().replace(MODEL_CONFIG, MODEL_CONFIG[:-1] + ", " + extra + ")"))


def set_project_batch(cli: CLI, **values: object) -> None:
    path = cli.project / "batchflow_project.yml"
    project = yaml.safe_load(path.read_text())
    project["batch"].update(values)
    path.write_text(yaml.safe_dump(project))


def batch_report(cli: CLI) -> dict:
    return next(r for r in cli.run_results()["results"] if r["name"] == "review_requests")["batch"]


def row(cli: CLI, review_id: str) -> tuple:
    return cli.query(
        "select outcome, finish_reason, model_name, attempt from reviews.review_labels "
        f"where review_id = '{review_id}'"
    )[0]


def test_transient_row_error_is_resent_in_the_same_run(cli: CLI) -> None:
    set_failures(cli, [{"when_prompt_contains": "lyrics", "outcome": "transient_error", "limit": 1}])
    result = cli("build")
    assert result.exit_code == 0, result.output
    report = batch_report(cli)
    assert report["rows_sent"] == DISTINCT_REQUESTS + 1 and report["rows_retried"] == 1
    assert [j["rows"] for j in report["jobs"]] == [DISTINCT_REQUESTS, 1]
    assert row(cli, "R0017") == ("ok", "STOP", "gemini-2.5-flash", 2)
    # Good answers were never resent: every other row is on its first attempt.
    assert cli.query("select count(*) from reviews.review_labels where attempt = 1") == [(58,)]


def test_persistent_transient_error_stops_at_max_attempts(cli: CLI) -> None:
    set_failures(cli, [{"when_prompt_contains": "lyrics", "outcome": "transient_error"}])
    set_model_config(cli, "max_attempts=2")
    assert cli("build").exit_code == 0
    assert batch_report(cli)["rows_sent"] == DISTINCT_REQUESTS + 1
    assert row(cli, "R0017")[0] == "row_error" and row(cli, "R0017")[3] == 2
    assert cli("run").exit_code == 0
    assert batch_report(cli)["rows_sent"] == 0  # attempts used up: not paid for again
    assert cli("retry").exit_code == 0
    report = batch_report(cli)
    assert report["rows_sent"] == 1 and report["rows_retried"] == 1


def test_client_errors_are_not_resent_unless_asked(cli: CLI) -> None:
    set_failures(cli, [{"when_prompt_contains": "lyrics", "outcome": "row_error"}])
    assert cli("build").exit_code == 0
    assert batch_report(cli)["rows_sent"] == DISTINCT_REQUESTS
    assert cli.query("select outcome from reviews.review_labels where review_id = 'R0017'") == [("row_error",)]
    assert cli("run").exit_code == 0
    assert batch_report(cli)["rows_sent"] == 0
    assert cli("run", "--retry-failed").exit_code == 0
    assert batch_report(cli)["rows_sent"] == 1


def test_recitation_goes_to_the_fallback_model_when_configured(cli: CLI) -> None:
    set_failures(cli, [{"when_prompt_contains": "lyrics", "when_model": "gemini-2.5-flash", "outcome": "recitation"}])
    set_model_config(cli, "retry_on=['RECITATION'], fallback_model='gemini-2.5-pro'")
    assert cli("build").exit_code == 0
    report = batch_report(cli)
    assert [(j["model"], j["rows"]) for j in report["jobs"]] == [("gemini-2.5-flash", DISTINCT_REQUESTS),
                                                                  ("gemini-2.5-pro", 1)]
    assert row(cli, "R0017") == ("ok", "STOP", "gemini-2.5-pro", 2)
    assert report["outcomes"] == {"ok": 59}


def test_unique_requests_take_the_ungrouped_diff_and_retry_alike(cli: CLI) -> None:
    # The review id in every prompt: no two requests alike, so the diff skips grouping duplicates.
    path = cli.project / "models" / "requests" / "review_requests.sql"
    text = path.read_text()
    assert "prompt=review_prompt('product_name', 'body')" in text
    path.write_text(text.replace("prompt=review_prompt('product_name', 'body')", "prompt=\"concat(review_id, ': ', body)\""))
    set_failures(cli, [{"when_prompt_contains": "lyrics", "outcome": "transient_error", "limit": 1}])
    assert cli("build").exit_code == 0, cli.run_results()
    report = batch_report(cli)
    assert (report["rows_total"], report["rows_duplicate"]) == (59, 0)
    assert report["rows_sent"] == 59 + 1 and report["rows_retried"] == 1
    assert [j["rows"] for j in report["jobs"]] == [59, 1]
    assert cli.query("select count(*), count(distinct request_hash) from reviews.review_requests__responses") == [(59, 59)]
    assert cli("run").exit_code == 0 and batch_report(cli)["rows_sent"] == 0


def test_recitation_is_kept_without_a_retry_policy(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    assert row(cli, "R0017") == ("candidate_blocked", "RECITATION", "gemini-2.5-flash", 1)
    assert cli("run").exit_code == 0
    assert batch_report(cli)["rows_sent"] == 0


def test_shards_are_submitted_tracked_and_landed_independently(cli: CLI) -> None:
    set_project_batch(cli, max_rows_per_job=10, max_concurrent_jobs=2)
    assert cli("build").exit_code == 0, cli.run_results()
    report = batch_report(cli)
    assert sorted(j["rows"] for j in report["jobs"]) == [2, 10, 10, 10, 10, 10]
    ledger = cli.query("select state, row_count, shard from reviews._batchflow_jobs order by shard")
    assert [r[0] for r in ledger] == ["LANDED"] * 6 and sum(r[1] for r in ledger) == DISTINCT_REQUESTS
    assert cli.query("select count(*) from reviews.review_requests where job_name is null") == [(0,)]
    assert cli.query("select count(distinct job_name) from reviews.review_requests") == [(6,)]


def test_next_shard_is_cut_while_jobs_run_and_submitted_before_a_finished_one_lands(cli: CLI, monkeypatch) -> None:
    """With one job at a time, a freed slot is filled at once: the next shard's input is cut while the
    running job works (one shard ahead, not all of them up front), and a finished job's landing (a
    merge) does not hold up the next submit."""
    from batchflow.batch.local import LocalBackend
    from batchflow.lifecycle import BatchLifecycle

    events: list[tuple[str, str, int]] = []
    real_submit, real_land, real_cut, real_get = (LocalBackend.submit, BatchLifecycle._close, BatchLifecycle._cut,
                                                  LocalBackend.get)
    seen_ended: set[str] = set()

    def submit(self, spec):  # type: ignore[no-untyped-def]
        base = spec.input.identifier[:-4]  # <model>__in_<run>_r<round>_NNNN
        inputs = sum(self.warehouse.kind(spec.input.with_identifier(f"{base}{i:04d}")) is not None for i in range(8))
        events.append(("submit", spec.input.identifier[-4:], inputs))
        return real_submit(self, spec)

    def land(self, job, state):  # type: ignore[no-untyped-def]
        events.append(("land", job.input.identifier[-4:], 0))
        return real_land(self, job, state)

    def cut(self, model, start, stop, index):  # type: ignore[no-untyped-def]
        events.append(("cut", f"{index:04d}", 0))
        return real_cut(self, model, start, stop, index)

    def get(self, name):  # type: ignore[no-untyped-def]
        status = real_get(self, name)
        if status.state.terminal and name not in seen_ended:  # the first time the run sees the job ended
            seen_ended.add(name)
            events.append(("ended", self._job(name).spec.input.identifier[-4:], 0))
        return status

    monkeypatch.setattr(LocalBackend, "submit", submit)
    monkeypatch.setattr(LocalBackend, "get", get)
    monkeypatch.setattr(BatchLifecycle, "_close", land)
    monkeypatch.setattr(BatchLifecycle, "_cut", cut)
    set_project_batch(cli, max_rows_per_job=10, max_concurrent_jobs=1)
    assert cli("build").exit_code == 0, [r.get("message") for r in cli.run_results()["results"]]

    order = [(kind, shard) for kind, shard, _ in events]
    shards = [f"{i:04d}" for i in range(1, 7)]
    assert sorted(order) == sorted((k, s) for s in shards for k in ("cut", "submit", "ended", "land"))
    for i in range(1, 6):  # shard i+1 went out before shard i was landed
        assert order.index(("submit", shards[i])) < order.index(("land", shards[i - 1]))
    for i in range(2, 6):  # shard i+1 was cut while job i still ran (the first job may end before a poll)
        assert order.index(("cut", shards[i])) < order.index(("ended", shards[i - 1])), order
    # At each submit: at most the new shard's input and the one still landing exist (one cut ahead).
    assert max(inputs for kind, _, inputs in events if kind == "submit") <= 2
    outcomes = batch_report(cli)["outcomes"]
    assert sum(outcomes.values()) == 59 and "missing" not in outcomes


def test_a_failed_submit_still_lands_the_job_that_finished(cli: CLI, monkeypatch) -> None:
    from batchflow.batch.local import LocalBackend
    from batchflow.errors import ExecutionError

    real_submit, calls = LocalBackend.submit, []

    def submit(self, spec):  # type: ignore[no-untyped-def]
        calls.append(spec.input.identifier)
        # The local backend reads its shard inputs as views over the todo table (no copy of the requests).
        assert self.warehouse.kind(spec.input) == "view"
        if len(calls) == 2:
            raise ExecutionError("quota exceeded while creating the batch job")
        return real_submit(self, spec)

    monkeypatch.setattr(LocalBackend, "submit", submit)
    set_project_batch(cli, max_rows_per_job=10, max_concurrent_jobs=1)
    result = cli("build")
    assert result.exit_code == 1 and "quota exceeded" in result.output
    # The first job's 10 answers were paid for: they are in the store although the second create failed.
    assert cli.query("select count(*) from reviews.review_requests__responses") == [(10,)]
    # The job left open (SUBMITTING) keeps its 10 requests as a table of its own: the todo table is gone.
    (left,) = cli.query("select input_table from reviews._batchflow_jobs where state = 'SUBMITTING'")
    assert left[0].endswith(calls[1] + "_t")
    schema, table = left[0].split(".")[-2:]
    assert cli.query(f"select table_type from information_schema.tables where table_schema = '{schema}' "
                     f"and table_name in ('{table}', '{calls[1]}', 'review_requests__todo')") == [("BASE TABLE",)]
    assert cli.query(f"select count(*) from {schema}.{table}") == [(10,)]
    monkeypatch.setattr(LocalBackend, "submit", real_submit)
    assert cli("build").exit_code == 0
    assert batch_report(cli)["rows_sent"] == DISTINCT_REQUESTS - 10


def test_max_rows_per_job_cannot_exceed_vertex_limit(cli: CLI) -> None:
    set_model_config(cli, "max_rows_per_job=250000")
    result = cli("build")
    assert result.exit_code == 2  # a configuration error, found before anything runs
    assert "200,000" in result.output or "200000" in result.output
    assert not (cli.project / "target" / "batchflow.duckdb").exists() or not cli.query(
        "select * from information_schema.tables where table_name = 'stg_reviews'")


def test_cost_limit_refuses_before_submitting(cli: CLI) -> None:
    set_model_config(cli, "max_estimated_cost=0.001")
    result = cli("build")
    assert result.exit_code == 1
    assert "max_estimated_cost" in result.output and "nothing was submitted" in result.output
    assert cli.query("select count(*) from reviews._batchflow_jobs") == [(0,)]
    assert cli.query("select count(*) from reviews.review_requests__responses") == [(0,)]


def test_run_wide_request_limit(cli: CLI) -> None:
    set_project_batch(cli, max_requests_per_run=10)
    result = cli("build")
    assert result.exit_code == 1
    assert "max_requests_per_run=10" in result.output
    assert cli.query("select count(*) from reviews._batchflow_jobs") == [(0,)]


def test_dry_run_counts_and_estimates_and_submits_nothing(cli: CLI) -> None:
    result = cli("build", "--dry-run")
    assert result.exit_code == 0, result.output
    report = batch_report(cli)
    est = report["estimate"]
    assert est["requests"] == DISTINCT_REQUESTS and report["rows_total"] == 59
    assert est["output_tokens"] == DISTINCT_REQUESTS * 256  # maxOutputTokens of every request
    assert est["input_tokens"] > 0
    expected = (est["input_tokens"] * 0.15 + est["output_tokens"] * 1.25) / 1e6
    assert est["cost"] == pytest.approx(expected, abs=1e-6)
    assert re.search(r"estimate: 52 requests, ~[\d,]+ input \+ ~13,312 output tokens, \$0\.0\d+", result.output)
    assert cli.query("select count(*) from reviews._batchflow_jobs") == [(0,)]
    assert cli.query("select count(*) from reviews.review_requests__responses") == [(0,)]
    statuses = {r["name"]: (r["status"], r["message"]) for r in cli.run_results()["results"]}
    assert statuses["review_labels"][0] == "skipped" and "dry run" in statuses["review_labels"][1]
    # Upstream SQL models are validated and inlined, not built.
    assert statuses["stg_reviews"] == ("success", "dry run: valid, 7 columns")
    assert cli.query("select count(*) from information_schema.tables where table_name = 'stg_reviews'") == [(0,)]


def test_actual_cost_uses_the_answers_usage(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    report = batch_report(cli)
    prompt, candidates = report["tokens"]["prompt"], report["tokens"]["candidates"]
    assert prompt > 0 and candidates > 0
    # the tokens are the stored answers' usageMetadata, summed (read here with Python's json)
    usage = [json.loads(r).get("usageMetadata", {}) for (r,) in
             cli.query("select cast(response as varchar) from reviews.review_requests__responses where response is not null")]
    assert prompt == sum(u.get("promptTokenCount", 0) for u in usage)
    assert candidates == sum(u.get("candidatesTokenCount", 0) + u.get("thoughtsTokenCount", 0) for u in usage)
    assert report["tokens"]["total"] == sum(u.get("totalTokenCount", 0) for u in usage)
    assert report["actual_cost"] == pytest.approx((prompt * 0.15 + candidates * 1.25) / 1e6, abs=1e-6)


def test_full_refresh_keeps_answers_unless_resubmit_is_explicit(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    result = cli("build", "--full-refresh")
    assert result.exit_code == 0 and batch_report(cli)["rows_sent"] == 0
    assert "--resubmit-batches" in result.output
    assert cli("build", "--resubmit-batches").exit_code == 2
    assert cli("build", "--full-refresh", "--resubmit-batches").exit_code == 0
    assert batch_report(cli)["rows_sent"] == DISTINCT_REQUESTS
    assert cli.query("select max(attempt) from reviews.review_requests") == [(2,)]


def test_one_percent_changed_rows_sends_exactly_those(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    data = cli.project / "data" / "reviews.csv"
    lines = data.read_text().splitlines()
    for i in (3, 40):  # two reviews edited (their quoted body gets a prefix)
        assert '"' in lines[i]
        lines[i] = lines[i].replace('"', '"Edited: ', 1)
    data.write_text("\n".join(lines) + "\n")
    assert cli("run").exit_code == 0
    assert batch_report(cli)["rows_sent"] == 2


def test_compile_validate_checks_models_against_the_warehouse(cli: CLI) -> None:
    path = cli.project / "models" / "staging" / "stg_reviews.sql"
    path.write_text(path.read_text().replace("r.product_id,", "r.product_id, r.no_such_column,"))
    assert cli("build", "-s", "products").exit_code == 0
    result = cli("compile", "--validate")
    assert result.exit_code == 1
    assert "models/staging/stg_reviews.sql" in result.output and "no_such_column" in result.output
    assert cli.query("select count(*) from information_schema.tables where table_name = 'stg_reviews'") == [(0,)]


def test_compile_validate_passes_on_a_fresh_project(cli: CLI) -> None:
    assert cli("build", "-s", "products").exit_code == 0  # seeds are data, loaded by build
    result = cli("compile", "--validate")
    assert result.exit_code == 0, result.output
    assert "valid stg_reviews" in result.output
    assert "skipped review_labels: needs the answers of batch model 'review_requests'" in result.output
