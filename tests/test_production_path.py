"""The production path end to end: the example project on a `bigquery` target with the `vertex`
backend, google-cloud-bigquery and google-genai unmocked, against the BigQuery emulator and the
Vertex batch emulator on 127.0.0.1 (the Vertex emulator reads and writes the BigQuery emulator)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchflow.warehouse.bigquery import BigQueryWarehouse
from tests.conftest import CLI, REPO, restore_embeddings
from tests.emulators.bigquery import BigQueryEmulator, bigquery_emulator, bq_dataset  # noqa: F401
from tests.emulators.gemini import response_text
from tests.emulators.vertex import Answer, VertexEmulator

pytestmark = [pytest.mark.emulator, pytest.mark.e2e]

STAGED_REVIEWS = 59
LABEL_COLUMNS = "review_id, sentiment, summary, outcome, finish_reason, total_tokens, model_version"


@dataclass
class Prod:
    cli: CLI
    wh: BigQueryWarehouse
    vertex: VertexEmulator
    dataset: str

    def query(self, sql: str) -> list[tuple]:
        return [tuple(r.values()) for r in self.wh.query_arrow(sql).to_pylist()]

    def table(self, name: str) -> str:
        return f"`{self.wh.project}`.`{self.dataset}`.`{name}`"


def add_target(project: Path, name: str, bq: BigQueryEmulator, dataset: str, vertex_url: str,
               location: str = "us-central1", batch_location: str | None = None) -> None:
    """Append a target to the project's profiles.yml (its last block is `outputs:`)."""
    with (project / "profiles.yml").open("a") as f:
        f.write(f"""
    {name}:
      type: bigquery
      method: none
      project: {bq.project}
      dataset: {dataset}
      location: {location}
      api_endpoint: {bq.endpoint}
      threads: 4
      batch:
        backend: vertex
        location: {batch_location or location}
        base_url: {vertex_url}
        access_token: test-token
        poll_interval: 0.2
""")


@pytest.fixture
def prod(example_project: Path, bigquery_emulator: BigQueryEmulator, bq_dataset: str) -> Iterator[Prod]:  # noqa: F811
    wh = BigQueryWarehouse(bigquery_emulator.project, bq_dataset, "us-central1",
                           api_endpoint=bigquery_emulator.endpoint)
    # The source table the example reads, loaded from its sample as the shop's export job would.
    wh.ensure_schema("shop_raw")
    wh.load_csv(wh.relation("reviews", "shop_raw"), example_project / "data" / "reviews.csv")
    # The Vertex emulator reads and writes the BigQuery emulator through its own client. Like the
    # local target's profile, it answers the review asking for lyrics with RECITATION.
    client = bigquery_emulator.client()
    vertex = VertexEmulator(client, row_rules=[{"when_prompt_contains": "lyrics", "outcome": "recitation"}],
                            pending_seconds=0.2, running_seconds=0.5).start()
    add_target(example_project, "emu", bigquery_emulator, bq_dataset, vertex.url)
    try:
        yield Prod(CLI(example_project), wh, vertex, bq_dataset)
    finally:
        vertex.stop()
        client.close()
        wh.close()


def test_example_pipeline_matches_the_local_target(prod: Prod) -> None:
    result = prod.cli("build", "--target", "emu")
    assert result.exit_code == 0, result.output
    results = prod.cli.run_results()["results"]
    assert {(r["resource_type"] == "test", r["status"]) for r in results} == {(False, "success"), (True, "pass")}
    assert len(prod.vertex.jobs) == 1
    job = next(iter(prod.vertex.jobs.values()))
    assert job.state == "JOB_STATE_SUCCEEDED"
    on_bigquery = sorted(prod.query(f"SELECT {LABEL_COLUMNS} FROM {prod.table('review_labels')}"))
    assert len(on_bigquery) == STAGED_REVIEWS
    assert prod.query(f"SELECT state FROM {prod.table('_batchflow_jobs')}") == [("LANDED",)]

    # The flattened rows are what the emulator answered (its own record, flattened here in Python).
    answered = expected_answers(prod)
    assert sorted(answered) == [r[0] for r in on_bigquery]
    assert on_bigquery == sorted(expected_label(rid, a) for rid, a in answered.items())
    assert any(a.outcome == "recitation" for a in answered.values())  # the lyrics review
    # The report's tokens are the usage the emulator wrote into its answers (each distinct request once).
    tokens = next(r for r in results if r["name"] == "review_requests")["batch"]["tokens"]
    usage = [(a.response or {}).get("usageMetadata", {}) for a in prod.vertex.answers]
    assert tokens["prompt"] == sum(u.get("promptTokenCount", 0) for u in usage) > 0
    assert tokens["total"] == sum(u.get("totalTokenCount", 0) for u in usage)
    topics = sorted(prod.query(f"SELECT review_id, topic FROM {prod.table('review_topics')}"))
    assert topics == sorted((rid, t) for rid, a in answered.items() for t in (answer_json(a) or {}).get("topics", []))
    ratings = sorted(prod.query(
        f"SELECT review_id, category, probability, probability_score, severity, blocked "
        f"FROM {prod.table('review_safety_ratings')}"))
    assert ratings == sorted(
        (rid, r["category"], r["probability"], r["probabilityScore"], r["severity"], r.get("blocked", False))
        for rid, a in answered.items() for c in (a.response or {}).get("candidates", [])[:1]
        for r in c.get("safetyRatings", []))

    # The same project on the local target (DuckDB + local executor, another answerer) has the same
    # rows, outcomes and per-day counts.
    assert prod.cli("build").exit_code == 0
    on_duckdb = sorted(prod.cli.query(f"SELECT {LABEL_COLUMNS} FROM reviews.review_labels"))
    assert [(r[0], r[3], r[4]) for r in on_bigquery] == [(r[0], r[3], r[4]) for r in on_duckdb]
    daily = "SELECT review_date, reviews, unlabeled FROM {} ORDER BY review_date"
    assert prod.query(daily.format(prod.table("daily_sentiment"))) == prod.cli.query(daily.format("reviews.daily_sentiment"))

    # An unchanged rerun creates no job.
    assert prod.cli("run", "--target", "emu").exit_code == 0
    assert len(prod.vertex.jobs) == 1


OUTCOME_LABELS = {"ok": "ok", "recitation": "candidate_blocked", "safety": "candidate_blocked",
                  "prompt_blocked": "prompt_blocked", "max_tokens": "truncated", "truncated": "truncated"}


def expected_answers(prod: Prod) -> dict[str, Answer]:
    """review_id → the emulator's answer to its request (duplicate requests share one answer)."""
    by_request = {canonical(a.row["request"]): a for a in prod.vertex.answers}
    requests = prod.query(f"SELECT review_id, TO_JSON_STRING(request) FROM {prod.table('review_requests')}")
    return {rid: by_request[canonical(req)] for rid, req in requests}


def canonical(request: str) -> str:
    return json.dumps(json.loads(request), sort_keys=True)


def answer_json(a: Answer) -> dict | None:
    """The JSON-mode answer object, or None when the row has no answer text."""
    text = response_text(a.response)
    return json.loads(text) if text else None


def expected_label(review_id: str, a: Answer) -> tuple:
    """A review_labels row (LABEL_COLUMNS) as a correct flattening of `a` gives it."""
    value = answer_json(a) or {}
    response = a.response or {}
    candidate = (response.get("candidates") or [{}])[0]
    return (review_id, value.get("sentiment"), value.get("summary"), OUTCOME_LABELS.get(a.outcome, "row_error"),
            candidate.get("finishReason"), (response.get("usageMetadata") or {}).get("totalTokenCount"),
            response.get("modelVersion"))


def test_example_embeddings_match_the_local_target(prod: Prod) -> None:
    """The example's embedding model (a text-embedding job through google-genai, BigQuery in and out)
    and its similarity mart on the emulators, against the local target's mock: the same vectors and the
    same nearest reviews (COSINE_DISTANCE on BigQuery, list_cosine_distance on DuckDB)."""
    restore_embeddings(prod.cli.project)
    select = ("-s", "+similar_reviews")
    result = prod.cli("build", "--target", "emu", *select)
    assert result.exit_code == 0, result.output
    (job,) = prod.vertex.jobs.values()
    assert job.model == "publishers/google/models/text-embedding-005" and job.state == "JOB_STATE_SUCCEEDED"
    assert job.parameters == {"outputDimensionality": 256}
    columns = [c.name for c in prod.wh.columns(prod.wh.relation("review_embeddings", prod.dataset))]
    assert columns[-6:] == ["predictions", "status", "request_hash", "job_name", "model_name", "attempt"]
    assert "response" not in columns and "processed_time" not in columns
    assert prod.cli("build", *select).exit_code == 0  # the local target: DuckDB and the mock provider
    vectors = "SELECT review_id, TO_JSON_STRING(predictions) FROM {} ORDER BY review_id"
    on_bigquery = prod.query(vectors.format(prod.table("review_embeddings")))
    on_duckdb = prod.cli.query("SELECT review_id, CAST(predictions AS VARCHAR) FROM reviews.review_embeddings ORDER BY 1")
    assert len(on_bigquery) == STAGED_REVIEWS
    assert [(r, json.loads(p)) for r, p in on_bigquery] == [(r, json.loads(p)) for r, p in on_duckdb]
    ranking = "SELECT review_id, rank, similar_review_id FROM {} ORDER BY review_id, rank"
    assert prod.query(ranking.format(prod.table("similar_reviews"))) == \
        prod.cli.query(ranking.format("reviews.similar_reviews"))
    assert prod.cli("run", "--target", "emu", "-s", "review_embeddings").exit_code == 0
    assert len(prod.vertex.jobs) == 1  # an unchanged rerun sends nothing


def test_no_wait_submits_and_a_later_run_lands(prod: Prod) -> None:
    prod.vertex.running_seconds = 3.0
    result = prod.cli("build", "--target", "emu", "--no-wait")
    assert result.exit_code == 0, result.output
    statuses = {r["name"]: r["status"] for r in prod.cli.run_results()["results"]}
    assert statuses["review_requests"] == "pending"
    assert statuses["review_labels"] == "skipped" and statuses["stg_reviews"] == "success"
    assert len(prod.vertex.jobs) == 1
    assert prod.query(f"SELECT state FROM {prod.table('_batchflow_jobs')}")[0][0] in ("PENDING", "QUEUED", "RUNNING")
    listed = prod.cli("jobs", "list", "--target", "emu", "--output", "json")
    job = json.loads(listed.output.splitlines()[0])
    assert job["state"] in ("PENDING", "QUEUED", "RUNNING")
    assert job["job_name"].rsplit("/", 1)[-1] in prod.vertex.jobs
    gets_before = prod.vertex.count("get")
    prod.cli("jobs", "list", "--target", "emu")
    assert prod.vertex.count("get") > gets_before  # the state shown is the backend's, live

    assert prod.cli("build", "--target", "emu").exit_code == 0
    assert len(prod.vertex.jobs) == 1  # adopted from the ledger, not resubmitted
    assert prod.query(f"SELECT COUNT(*) FROM {prod.table('review_labels')} WHERE outcome IS NOT NULL")[0][0] == STAGED_REVIEWS


def test_kill_while_waiting_then_rerun_creates_one_job(prod: Prod) -> None:
    prod.vertex.running_seconds = 6.0
    poll = prod.vertex.hold(op="get")  # the runner's first poll of its job is held: kill it right there
    exe = Path(sys.executable).with_name("batchflow")
    proc = subprocess.Popen([str(exe), "build", "--target", "emu", "--project-dir", str(prod.cli.project)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        assert poll.reached.wait(180), "the runner never polled a job"
        assert proc.poll() is None and len(prod.vertex.jobs) == 1
        assert poll.calls[0].state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        poll.release()
        if proc.poll() is None:
            proc.kill()
    result = prod.cli("build", "--target", "emu")
    assert result.exit_code == 0, result.output
    assert prod.vertex.count("create") == 1 and len(prod.vertex.jobs) == 1
    rows = prod.query(f"SELECT COUNT(*), COUNTIF(job_name IS NULL) FROM {prod.table('review_requests')}")
    assert rows == [(STAGED_REVIEWS, 0)]
    assert prod.query(f"SELECT COUNT(*) FROM {prod.table('review_labels')}")[0][0] == STAGED_REVIEWS


def test_transient_api_errors_on_create_and_get(prod: Prod) -> None:
    prod.vertex.faults.create = [429, 503]
    prod.vertex.faults.get = [503, 429]
    result = prod.cli("build", "--target", "emu")
    assert result.exit_code == 0, result.output
    assert len(prod.vertex.jobs) == 1
    assert prod.query(f"SELECT COUNT(*) FROM {prod.table('review_labels')}")[0][0] == STAGED_REVIEWS


def test_a_failed_job_is_resent_in_the_same_run_and_leaves_nothing_behind(prod: Prod) -> None:
    prod.vertex.next_job_outcome = "FAILED"
    result = prod.cli("build", "--target", "emu")
    assert result.exit_code == 0, result.output
    report = next(r for r in prod.cli.run_results()["results"] if r["name"] == "review_requests")["batch"]
    assert any("ended FAILED" in w for w in report["warnings"]), report["warnings"]
    assert [j["state"] for j in report["jobs"]] == ["FAILED", "SUCCEEDED"]
    states = prod.query(f"SELECT state, job_state FROM {prod.table('_batchflow_jobs')} ORDER BY created_at")
    assert states == [("CLOSED", "FAILED"), ("LANDED", "SUCCEEDED")]
    assert len(prod.vertex.jobs) == 2
    left = [t.table_id for t in prod.wh.client.list_tables(f"{prod.wh.project}.{prod.dataset}")
            if "__in_" in t.table_id or "__out_" in t.table_id or t.table_id.endswith("__todo")]
    assert left == []
    # A rerun sends nothing.
    assert prod.cli("build", "--target", "emu").exit_code == 0
    assert len(prod.vertex.jobs) == 2


def test_a_job_that_fails_its_last_attempt_fails_the_model(prod: Prod) -> None:
    import yaml

    path = prod.cli.project / "batchflow_project.yml"
    project = yaml.safe_load(path.read_text())
    project["batch"]["max_attempts"] = 1
    path.write_text(yaml.safe_dump(project))
    prod.vertex.next_job_outcome = "FAILED"
    result = prod.cli("build", "--target", "emu")
    assert result.exit_code == 1
    assert "FAILED" in result.output and "have no answer" in result.output
    assert prod.query(f"SELECT state, job_state FROM {prod.table('_batchflow_jobs')}") == [("CLOSED", "FAILED")]
    # The rows are recorded as missing (one attempt used); --retry-failed or raising max_attempts resends them.
    assert prod.cli("retry", "--target", "emu").exit_code == 0
    assert len(prod.vertex.jobs) == 2


@pytest.mark.parametrize("location, batch_location, expected", [
    ("US", None, "multi-region"),
    ("EU", None, "multi-region"),
    ("us-central1", "global", "global"),
])
def test_bad_locations_fail_before_anything_runs(prod: Prod, bigquery_emulator: BigQueryEmulator,  # noqa: F811
                                                 location: str, batch_location: str | None, expected: str) -> None:
    add_target(prod.cli.project, "bad", bigquery_emulator, prod.dataset + "_bad", prod.vertex.url,
               location=location, batch_location=batch_location)
    result = prod.cli("build", "--target", "bad")
    assert result.exit_code == 2
    assert expected in result.output
    assert prod.vertex.jobs == {}
    assert not (prod.cli.project / "target" / "run_results.json").exists()


def test_crash_between_create_and_ledger_update_adopts_the_job_by_label(prod: Prod,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from batchflow.ledger import Ledger

    class Killed(BaseException):
        """Stands for SIGKILL: nothing in batchflow catches it."""

    record_job_name = Ledger.update

    def die_after_create(self: Ledger, job_key: str, **fields: object) -> None:
        if "job_name" in fields:  # the job exists at Vertex; the ledger row still says SUBMITTING
            raise Killed("killed right after create")
        record_job_name(self, job_key, **fields)

    monkeypatch.setattr(Ledger, "update", die_after_create)
    with pytest.raises(Killed):
        prod.cli("build", "--target", "emu")
    monkeypatch.setattr(Ledger, "update", record_job_name)
    assert len(prod.vertex.jobs) == 1
    assert prod.query(f"SELECT state, job_name FROM {prod.table('_batchflow_jobs')}") == [("SUBMITTING", None)]

    assert prod.cli("build", "--target", "emu").exit_code == 0
    assert prod.vertex.count("create") == 1 and len(prod.vertex.jobs) == 1
    assert prod.query(f"SELECT state FROM {prod.table('_batchflow_jobs')}") == [("LANDED",)]
    assert prod.query(f"SELECT COUNT(*) FROM {prod.table('review_labels')}")[0][0] == STAGED_REVIEWS


def test_dry_run_and_validate_on_bigquery_submit_nothing(prod: Prod) -> None:
    result = prod.cli("build", "--target", "emu", "--dry-run")
    assert result.exit_code == 0, result.output
    results = {r["name"]: r for r in prod.cli.run_results()["results"]}
    assert isinstance(results["stg_reviews"]["bytes_processed"], int)  # BigQuery's dry-run figure
    assert results["review_requests"]["batch"]["estimate"]["requests"] == 52
    assert prod.vertex.jobs == {}
    assert prod.wh.kind(prod.wh.relation("stg_reviews")) is None  # validated, not built

    result = prod.cli("compile", "--validate", "--target", "emu")
    assert result.exit_code == 0, result.output
    assert "valid stg_reviews" in result.output and "bytes" in result.output
