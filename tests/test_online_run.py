"""`batchflow run --online` on the example project: the real google-genai client against the generate
emulator on 127.0.0.1 (tests/emulators/generate.py), DuckDB as the warehouse, the mock provider for the
batch runs that follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.emulators.gemini import RowRule
from tests.emulators.generate import generate_emulator  # noqa: F401

pytestmark = pytest.mark.emulator


def point_online_at(project: Path, url: str, extra: str = "") -> None:
    """The local target's `online:` block: the Gemini API (an API key) at the emulator."""
    path = project / "profiles.yml"
    text = path.read_text()
    block = (f"        online:\n          api_key: test-key\n          base_url: {url}\n"
             f"          backoff_initial: 0.0\n          backoff_max: 0.0\n{extra}")
    marker = "        concurrency: 4\n"
    assert text.count(marker) == 1
    path.write_text(text.replace(marker, marker + block))


def batch_result(cli, name: str = "review_requests") -> dict:
    return next(r for r in cli.run_results()["results"] if r["name"] == name)["batch"]


def store(cli) -> list[tuple]:
    return cli.query("select mode, count(*) from reviews.review_requests__responses group by 1 order by 1")


@pytest.fixture
def online_cli(cli, generate_emulator):
    point_online_at(cli.project, generate_emulator.url)
    return cli


def test_online_sample_then_a_batch_run_sends_the_whole_model(online_cli, generate_emulator):
    """The prompt-iteration loop, and the issue's "done when": `--online --sample 20` answers 20 requests
    through the emulator; the batch run after it reuses none of them (online_answers: ignore)."""
    cli = online_cli
    result = cli("run", "-s", "+review_requests+", "--online", "--sample", "20")
    assert result.exit_code == 0, result.output
    assert "answers from online calls to Gemini" in result.output
    b = batch_result(cli)
    assert b["mode"] == "online" and b["sample"]["requests"] == 20 and b["rows_sent"] == 20
    assert b["outcomes"].get("ok", 0) == cli.query("select count(*) from reviews.review_requests")[0][0]
    calls = generate_emulator.answered("generate")
    assert len(calls) == 20 and {c.api for c in calls} == {"gemini"}
    # the answers are the emulator's, in the batch shape the flatten models read
    label = cli.query("select sentiment from reviews.review_labels where sentiment is not null limit 1")
    assert label, "the flatten model read the online answers"
    assert store(cli) == [("online", 20)]
    assert cli.query("select distinct mode, sample from reviews._batchflow_jobs") == [("online", "20")]
    distinct = b["sample"]["of"]

    again = cli("run", "-s", "review_requests", "--online", "--sample", "20")  # same prompt: nothing to ask
    assert again.exit_code == 0 and batch_result(cli)["rows_sent"] == 0 and generate_emulator.count("generate") == 20

    batch = cli("run", "-s", "review_requests")  # a batch run (the mock): the whole model, nothing reused
    assert batch.exit_code == 0, batch.output
    b = batch_result(cli)
    assert b["mode"] == "batch" and b["sample"] == {}
    assert (b["rows_sent"], b["rows_reused"]) == (distinct, 0)
    assert store(cli) == [("batch", distinct)]  # every online answer replaced
    assert cli.query("select count(*) from reviews.review_requests where job_name is null")[0][0] == 0
    assert generate_emulator.count("generate") == 20  # the batch run called nothing online


def test_online_answers_reuse_lets_a_batch_run_keep_them(online_cli, generate_emulator):
    cli = online_cli
    project = cli.project / "batchflow_project.yml"
    project.write_text(project.read_text().replace("  max_concurrent_jobs: 2\n",
                                                   "  max_concurrent_jobs: 2\n  online_answers: reuse\n"))
    assert cli("run", "-s", "+review_requests", "--online", "--sample", "20").exit_code == 0
    distinct = batch_result(cli)["sample"]["of"]
    assert cli("run", "-s", "review_requests").exit_code == 0
    b = batch_result(cli)
    assert (b["rows_sent"], b["rows_reused"]) == (distinct - 20, 20)
    assert store(cli) == [("batch", distinct - 20), ("online", 20)]


def test_a_batch_failure_replaces_an_ignored_online_answer(online_cli, generate_emulator):
    """Under `ignore`, an online answer never stands in for a batch one: a batch row that fails
    replaces it, and the model's table shows the failure, not the online answer."""
    cli = online_cli
    assert cli("run", "-s", "+review_requests", "--online", "--sample", "3").exit_code == 0
    online = [r[0] for r in cli.query("select request_hash from reviews.review_requests__responses")]
    profiles = cli.project / "profiles.yml"
    profiles.write_text(profiles.read_text().replace(
        "          failures:\n", "          failures:\n            - {outcome: row_error}\n"))
    assert cli("run", "-s", "review_requests", "--sample", "3").exit_code == 0
    rows = cli.query("select mode, status from reviews.review_requests__responses")
    assert {m for m, _ in rows} == {"batch"} and all(s for _, s in rows)
    shown = cli.query("select count(*) from reviews.review_requests where status = '' or status is null")[0][0]
    assert shown == 0 and len(online) == 3


def test_rate_limits_and_server_errors_are_retried(online_cli, generate_emulator):
    generate_emulator.faults = [(429, {"Retry-After": "0"}), 503, 500, 429]
    generate_emulator.row_rules = [RowRule.parse({"when_prompt_contains": "lyrics", "outcome": "bad_request"})]
    cli = online_cli
    assert cli("run", "-s", "+review_requests", "--online").exit_code == 0
    b = batch_result(cli)
    assert b["rows_sent"] == b["sample"].get("of", b["rows_sent"])
    refused = sum(1 for c in generate_emulator.calls if c.status_code == 400)
    assert generate_emulator.count("generate") == b["rows_sent"] + 4  # four retried calls, no 400 retried
    assert b["outcomes"].get("row_error", 0) >= refused > 0
    status = cli.query("select status from reviews.review_requests where status != '' limit 1")[0][0]
    assert status.startswith('Bad Request: {"error": {"code": 400')


def test_online_estimates_use_online_prices_and_the_budget_guard_applies(online_cli, generate_emulator):
    cli = online_cli
    dry_batch = cli("run", "-s", "+review_requests", "--dry-run", "--sample", "20")
    dry_online = cli("run", "-s", "+review_requests", "--dry-run", "--sample", "20", "--online")
    assert dry_batch.exit_code == 0 and dry_online.exit_code == 0
    assert generate_emulator.count("generate") == 0
    online_cost = batch_result(cli)["estimate"]["cost"]
    cli("run", "-s", "+review_requests", "--dry-run", "--sample", "20")
    batch_cost = batch_result(cli)["estimate"]["cost"]
    assert online_cost == pytest.approx(2 * batch_cost, rel=1e-3)  # no online_* price given: twice the batch price
    project = cli.project / "batchflow_project.yml"
    text = project.read_text().replace(
        "gemini-2.5-flash: {input_per_million: 0.15, output_per_million: 1.25}",
        "gemini-2.5-flash: {input_per_million: 0.15, output_per_million: 1.25, online_input_per_million: 0.3, "
        "online_output_per_million: 2.5}")
    project.write_text(text.replace("  max_concurrent_jobs: 2\n", "  max_concurrent_jobs: 2\n  max_estimated_cost_per_run: "
                                    f"{(batch_cost + online_cost) / 2:.6f}\n"))
    refused = cli("run", "-s", "+review_requests", "--online", "--sample", "20")
    assert refused.exit_code == 1 and "max_estimated_cost_per_run" in refused.output
    assert generate_emulator.count("generate") == 0  # refused before any call
    assert cli("run", "-s", "+review_requests", "--sample", "20").exit_code == 0  # the batch price fits


def test_a_backend_online_target_answers_every_run_online(cli, generate_emulator):
    profiles = cli.project / "profiles.yml"
    profiles.write_text(profiles.read_text() + (
        "\n    iterate:\n      type: duckdb\n      path: target/batchflow.duckdb\n      schema: reviews\n"
        f"      batch:\n        backend: online\n        api_key: test-key\n        base_url: {generate_emulator.url}\n"
        "        concurrency: 2\n"))
    result = cli("run", "-s", "+review_requests", "--target", "iterate", "--sample", "5")
    assert result.exit_code == 0, result.output
    assert batch_result(cli)["mode"] == "online" and generate_emulator.count("generate") == 5


def test_online_without_anyone_to_answer_is_a_config_error(cli, monkeypatch):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    result = cli("run", "-s", "+review_requests", "--online")
    assert result.exit_code == 2
    assert "online mode needs who answers" in result.output and "Traceback" not in result.output
    bad = cli.project / "profiles.yml"
    bad.write_text(bad.read_text().replace("        concurrency: 4\n", "        concurrency: 4\n        online:\n"
                                                                         "          concurrancy: 3\n"))
    result = cli("run", "-s", "review_requests", "--online")
    assert result.exit_code == 2 and "profiles.yml" in result.output and "concurrency" in result.output
    assert cli("run", "-s", "review_requests", "--online", "--no-wait").exit_code == 2
