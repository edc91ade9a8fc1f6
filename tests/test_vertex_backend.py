"""The Vertex backend: the real google-genai client against the Vertex batch emulator on 127.0.0.1."""

from __future__ import annotations

import json

import google.oauth2.credentials
import pydantic
import pytest

from batchflow.batch.base import JobSpec, JobState
from batchflow.batch.vertex import JobNotFoundError, VertexBackend, output_relation, status_from_rest
from batchflow.errors import ConfigError, ExecutionError
from batchflow.relation import Relation
from tests.emulators.vertex import LOCATION, PROJECT, ManualClock, VertexEmulator, vertex_emulator  # noqa: F401

pytestmark = pytest.mark.emulator

MODEL = "gemini-2.5-flash"
KEY = "batchflow_job_key"


def backend(emu: VertexEmulator, **kwargs) -> VertexBackend:
    kwargs.setdefault("project", PROJECT)
    kwargs.setdefault("location", LOCATION)
    return VertexBackend(
        credentials=google.oauth2.credentials.Credentials(token="test"),
        base_url=emu.url,
        poll_interval=0.02,
        retry_delay=0.01,
        **kwargs,
    )


def make_input(emu: VertexEmulator, name: str = "inp", n: int = 6) -> Relation:
    """`ds.<name>`: `id`, `note` (passthrough), `request_hash`, `request` (JSON) for rows 1..n."""
    emu.tables.sql(
        f"""create or replace table ds.{name} as
        select i as id,
               'note ' || i as note,
               sha256(cast(i as varchar)) as request_hash,
               json_object('contents', json_array(json_object('role', 'user',
                   'parts', json_array(json_object('text', 'Review number ' || i))))) as request
        from range(1, {n} + 1) as t(i)"""
    )
    return Relation(PROJECT, "ds", name)


def uri(table: str) -> str:
    return f"bq://{PROJECT}.ds.{table}"


def spec(inp: Relation, out: str = "out", key: str = "run1-model-0", **labels: str) -> JobSpec:
    return JobSpec(MODEL, inp, Relation(PROJECT, "ds", out), f"batchflow-{key}", {KEY: key, **labels})


def rows(emu: VertexEmulator, table: str) -> list[dict]:
    return sorted(emu.tables.read(uri(table)).to_pylist(), key=lambda r: r["id"])


def wait(b: VertexBackend, name: str, clock: ManualClock, step: float = 0.1, limit: int = 10_000):
    """Poll the job, moving the emulator's manual clock `step` seconds between polls (no sleeping),
    until it is terminal or paused; returns its status and the states seen on the way."""
    seen = []
    for _ in range(limit):
        status = b.get(name)
        if not seen or seen[-1] is not status.state:
            seen.append(status.state)
        if status.state.terminal or status.state is JobState.PAUSED:
            return status, seen
        clock.advance(step)
    raise AssertionError(f"job still {status.state} after {limit * step:.0f} emulated seconds")


# -- create -----------------------------------------------------------------------------------------
def test_create_sends_the_documented_body(vertex_emulator):
    emu = vertex_emulator
    inp = make_input(emu)
    status = backend(emu).submit(spec(inp, batchflow_run="run1"))

    assert emu.count("create") == 1
    call = next(c for c in emu.calls if c.op == "create")
    assert call.path == f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    assert call.headers["authorization"] == "Bearer test"
    assert call.body == {
        "model": f"publishers/google/models/{MODEL}",
        "inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": f"bq://{PROJECT}.ds.inp"}},
        "displayName": "batchflow-run1-model-0",
        "outputConfig": {"predictionsFormat": "bigquery", "bigqueryDestination": {"outputUri": f"bq://{PROJECT}.ds.out"}},
        "labels": {KEY: "run1-model-0", "batchflow_run": "run1"},
    }
    assert status.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert status.name.rsplit("/", 1)[1].isdigit()
    assert status.state is JobState.PENDING and not status.state.terminal
    assert status.labels == {KEY: "run1-model-0", "batchflow_run": "run1"}
    assert status.output == Relation(PROJECT, "ds", "out")
    assert status.model == f"publishers/google/models/{MODEL}" and status.create_time


def test_global_location_is_refused():
    with pytest.raises(ConfigError, match="global"):
        VertexBackend(PROJECT, "global")


def test_invalid_labels_are_refused_before_any_call(vertex_emulator):
    inp = make_input(vertex_emulator)
    with pytest.raises(ConfigError, match="label"):
        backend(vertex_emulator).submit(spec(inp, key="Has Spaces"))
    assert vertex_emulator.count("create") == 0


def test_existing_output_table_is_refused(vertex_emulator):
    emu = vertex_emulator
    inp = make_input(emu)
    emu.tables.sql("create table ds.out as select 1 as x")
    with pytest.raises(ExecutionError, match="already exists"):
        backend(emu).submit(spec(inp))
    assert emu.count("create") == 1 and emu.jobs == {}


# -- the job's life ----------------------------------------------------------------------------------
def test_job_goes_pending_running_succeeded_and_writes_vertex_output(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    inp = make_input(emu, n=6)
    b = backend(emu)
    name = b.submit(spec(inp)).name

    assert b.get(name).state is JobState.PENDING
    clock.advance(0.2)
    running = b.get(name)
    assert running.state is JobState.RUNNING and not running.state.terminal
    clock.advance(0.1)  # half-way: half the rows are done
    half = b.get(name)
    assert (half.successful, half.failed, half.incomplete) == (3, 0, 3)
    clock.advance(0.1)
    done = b.get(name)
    assert done.state is JobState.SUCCEEDED and done.state.terminal and done.error is None
    assert (done.successful, done.failed, done.incomplete) == (6, 0, 0)
    assert done.output == Relation(PROJECT, "ds", "out")
    assert done.update_time and done.update_time > done.create_time
    assert emu.job(name).history == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]

    cols = [(c.name, c.type) for c in emu.tables.columns(uri("out"))]
    assert cols == [("id", "INT64"), ("note", "STRING"), ("request_hash", "STRING"), ("request", "JSON"),
                    ("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP")]
    out, src = rows(emu, "out"), rows(emu, "inp")
    assert len(out) == 6
    for o, i in zip(out, src):
        assert (o["id"], o["note"], o["request_hash"]) == (i["id"], i["note"], i["request_hash"])
        assert json.loads(o["request"]) == json.loads(i["request"])
        assert o["status"] == "" and o["processed_time"].tzinfo is not None
        answer = json.loads(o["response"])
        assert answer["candidates"][0]["finishReason"] == "STOP"
        assert answer["candidates"][0]["content"]["parts"][0]["text"].endswith(f"Review number {i['id']}")
        assert answer["modelVersion"] == MODEL
    # the table holds what the emulator says it answered, row by row
    answered = {a.row["id"]: a for a in emu.answers}
    assert {o["id"]: json.loads(o["response"]) for o in out} == {k: a.response for k, a in answered.items()}


def test_wait_sees_each_state_with_row_failures(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.row_rules = [{"when_prompt_contains": "number 2", "outcome": "bad_request"}]
    inp = make_input(emu, n=4)
    b = backend(emu)
    status, seen = wait(b, b.submit(spec(inp)).name, clock)
    order = [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED]
    assert seen == [s for s in order if s in seen] and seen[-1] is JobState.SUCCEEDED  # never backwards
    assert (status.successful, status.failed, status.incomplete) == (3, 1, 0)  # a job with failed rows SUCCEEDS
    failed = [r for r in rows(emu, "out") if r["status"]]
    assert [r["id"] for r in failed] == [2] and failed[0]["response"] is None
    assert failed[0]["status"].startswith('Bad Request: {"error": {"code": 400')


@pytest.mark.parametrize(
    "outcome, output_rows",
    [("PARTIALLY_SUCCEEDED", 3), ("FAILED", None), ("EXPIRED", None), ("CANCELLED", 2)],
)
def test_terminal_outcomes(vertex_emulator, outcome, output_rows):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    inp = make_input(emu, n=4)
    emu.next_job_outcome = outcome
    b = backend(emu)
    status, _ = wait(b, b.submit(spec(inp)).name, clock)
    assert status.state is JobState(outcome) and status.state.terminal
    if output_rows is None:
        assert not emu.tables.exists(uri("out"))
    else:
        assert len(rows(emu, "out")) == output_rows
    if outcome == "FAILED":
        assert "Batch prediction job failed" in status.error
    if outcome == "EXPIRED":
        assert (status.successful, status.failed, status.incomplete) == (0, 0, None)  # never ran: no stats


def test_paused_is_reported_and_not_terminal(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.next_job_outcome = "PAUSED"
    b = backend(emu)
    name = b.submit(spec(make_input(emu))).name
    clock.advance(5)
    status = b.get(name)
    assert status.state is JobState.PAUSED and not status.state.terminal
    clock.advance(5)
    assert b.get(name).state is JobState.PAUSED


def test_a_failed_job_with_rpc_error_details_falls_back_to_raw_rest(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.next_job_outcome = "FAILED"
    emu.next_job_error = {
        "code": 3,
        "message": "Failed to import data. Not found: Dataset tenant:llm_bp_tenant_dataset was not found in location US",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "NOT_FOUND",
                     "domain": "aiplatform.googleapis.com", "metadata": {"resource": "dataset"}}],
    }
    b = backend(emu)
    name = b.submit(spec(make_input(emu))).name
    status, _ = wait(b, name, clock)
    assert status.state is JobState.FAILED
    assert status.error.startswith("Failed to import data. Not found: Dataset")
    assert status.labels == {KEY: "run1-model-0"}
    # the SDK alone cannot read this job (contract §4.4): the fallback is what made the above work
    sdk = emu.client()  # keep a reference: a collected Client closes its transport
    with pytest.raises(pydantic.ValidationError):
        sdk.batches.get(name=name)


# -- faults and retries ----------------------------------------------------------------------------
def test_429_on_create_is_retried_and_creates_one_job(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create = [429]
    status = backend(emu).submit(spec(make_input(emu)))
    assert emu.count("create") == 2 and emu.count("list") == 0
    assert list(emu.jobs) == [status.name.rsplit("/", 1)[1]]


def test_503_on_create_looks_for_the_job_then_retries(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create = [429, 503]
    status = backend(emu).submit(spec(make_input(emu)))
    assert emu.count("create") == 3 and emu.count("list") == 1  # the 503 was checked before retrying
    assert len(emu.jobs) == 1 and status.state is JobState.PENDING


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_ambiguous_create_adopts_the_job_it_created(vertex_emulator, fault):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    if fault == "drop":
        emu.faults.create_timeout_after_commit = True
    else:
        emu.faults.create_after_commit = [500]
    b = backend(emu)
    status = b.submit(spec(make_input(emu), key="run7-reviews-3"))
    assert emu.count("create") == 1 and emu.count("list") == 1
    assert len(emu.jobs) == 1
    job = next(iter(emu.jobs.values()))
    assert status.name == job.name and status.labels[KEY] == "run7-reviews-3"
    listing = next(c for c in emu.calls if c.op == "list")
    assert listing.query["filter"] == ['labels.batchflow_job_key="run7-reviews-3"']
    assert wait(b, status.name, clock)[0].state is JobState.SUCCEEDED


def test_ambiguous_create_without_labels_is_not_retried(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create = [503]
    inp = make_input(emu)
    with pytest.raises(ExecutionError, match="not retrying"):
        backend(emu).submit(JobSpec(MODEL, inp, Relation(PROJECT, "ds", "out"), "no-labels", {}))
    assert emu.count("create") == 1


def test_create_gives_up_after_bounded_attempts(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create = [429] * 10
    with pytest.raises(ExecutionError, match="429"):
        backend(emu, retry_attempts=3).submit(spec(make_input(emu)))
    assert emu.count("create") == 3 and emu.jobs == {}


def test_bad_request_on_create_is_not_retried(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create = [400]
    with pytest.raises(ExecutionError, match="400 INVALID_ARGUMENT"):
        backend(emu).submit(spec(make_input(emu)))
    assert emu.count("create") == 1 and emu.count("list") == 0


def test_transient_errors_on_get_are_retried(vertex_emulator):
    emu = vertex_emulator
    b = backend(emu)
    name = b.submit(spec(make_input(emu))).name
    before = emu.count("get")
    emu.faults.get = [503, 429, "drop"]
    assert b.get(name).state in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED)
    assert emu.count("get") - before == 4


def test_unknown_job_is_an_execution_error(vertex_emulator):
    b = backend(vertex_emulator)
    with pytest.raises(JobNotFoundError, match="404"):
        b.get(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/42")
    with pytest.raises(ExecutionError, match="not a Vertex batch job name"):
        b.get("batches/abc")


# -- list, cancel, routing -----------------------------------------------------------------------------
def test_list_filters_by_labels_across_pages(vertex_emulator):
    emu = vertex_emulator
    inp = make_input(emu)
    b = backend(emu)
    a = b.submit(spec(inp, "out_a", "r1-m-0", batchflow_run="r1"))
    c = b.submit(spec(inp, "out_b", "r1-m-1", batchflow_run="r1"))
    other = b.submit(spec(inp, "out_c", "r2-m-0", batchflow_run="r2"))
    emu.max_page_size = 1

    found = b.list({"batchflow_run": "r1"})
    assert sorted(s.name for s in found) == sorted([a.name, c.name])
    assert all(s.labels["batchflow_run"] == "r1" for s in found)
    filters = [call.query.get("filter") for call in emu.calls if call.op == "list"]
    assert filters == [['labels.batchflow_run="r1"']] * 2  # two pages
    assert [s.name for s in b.list({KEY: "r2-m-0", "batchflow_run": "r2"})] == [other.name]
    assert b.list({"batchflow_run": "r9"}) == []
    assert len(b.list()) == 3


def test_get_reads_labels_of_a_job_it_did_not_create(vertex_emulator):
    emu = vertex_emulator
    name = backend(emu).submit(spec(make_input(emu), batchflow_run="r1")).name
    fresh = backend(emu)  # e.g. the next run, in a new process
    assert fresh.get(name).labels == {KEY: "run1-model-0", "batchflow_run": "r1"}


def test_cancel_keeps_the_rows_already_done(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    b = backend(emu)
    name = b.submit(spec(make_input(emu, n=4))).name
    clock.advance(0.2 + 0.1)  # running, half-way
    b.cancel(name)
    assert b.get(name).state is JobState.CANCELLING
    clock.advance(1)
    status = b.get(name)
    assert status.state is JobState.CANCELLED and status.state.terminal
    assert (status.successful, status.incomplete) == (2, 2)
    assert [r["id"] for r in rows(emu, "out")] == [1, 2]
    b.cancel(name)  # a finished job: nothing to do, no error
    assert emu.count("cancel") == 2


def test_cancel_unknown_job_raises(vertex_emulator):
    with pytest.raises(JobNotFoundError):
        backend(vertex_emulator).cancel("123")


def test_get_and_cancel_route_by_the_job_names_own_project_and_location(vertex_emulator):
    emu = vertex_emulator
    make_input(emu)
    elsewhere = emu.client("other-project", "europe-west4")
    job = elsewhere.batches.create(
        model=MODEL, src=f"bq://{PROJECT}.ds.inp", config={"dest": f"bq://{PROJECT}.ds.out", "display_name": "x"}
    )
    assert job.name.startswith("projects/other-project/locations/europe-west4/")
    b = backend(emu)  # home: test-project / us-central1
    assert b.get(job.name).name == job.name
    b.cancel(job.name)
    paths = [c.path for c in emu.calls if c.op in ("get", "cancel")]
    assert paths and all("/projects/other-project/locations/europe-west4/" in p for p in paths)
    # the SDK alone would have looked in its own project/location (contract §4.3)
    home = emu.client()
    with pytest.raises(Exception, match="404"):
        home.batches.get(name=job.name)


def test_bare_output_table_name_resolves_against_the_requested_dataset(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.output_table_format = "name"
    b = backend(emu)
    status, _ = wait(b, b.submit(spec(make_input(emu))).name, clock)
    assert status.output == Relation(PROJECT, "ds", "out")
    raw = emu._to_json(emu.job(status.name))
    assert raw["outputInfo"]["bigqueryOutputTable"] == "out"


# -- pure mapping ----------------------------------------------------------------------------------------
def test_output_relation_forms():
    assert output_relation("bq://p.d.t", "bq://p.d.t") == Relation("p", "d", "t")
    assert output_relation("predictions_2025", "bq://p.d") == Relation("p", "d", "predictions_2025")
    assert output_relation("predictions_2025", "bq://p.d.t") == Relation("p", "d", "predictions_2025")
    assert output_relation("p2.d2.t2", "bq://p.d.t") == Relation("p2", "d2", "t2")
    assert output_relation(None, "bq://p.d.t") == Relation("p", "d", "t")
    assert output_relation(None, "bq://p.d") is None


def test_status_from_rest_maps_unknown_counts():
    status = status_from_rest({
        "name": "projects/p/locations/l/batchPredictionJobs/1",
        "state": "JOB_STATE_RUNNING",
        "completionStats": {"successfulCount": "5", "incompleteCount": "-1"},
        "labels": {"a": "b"},
    })
    assert (status.state, status.successful, status.failed, status.incomplete) == (JobState.RUNNING, 5, 0, None)
    assert status.labels == {"a": "b"} and status.output is None


def test_ambiguous_create_whose_lookup_fails_is_not_retried(vertex_emulator):
    emu = vertex_emulator
    emu.faults.create_after_commit = [502]
    emu.faults.list = [503] * 10
    with pytest.raises(ExecutionError, match="looking it up"):
        backend(emu, retry_attempts=2).submit(spec(make_input(emu)))
    assert emu.count("create") == 1 and len(emu.jobs) == 1


def test_injected_client_and_v1_api(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    b = VertexBackend(PROJECT, LOCATION, client=emu.client(api_version="v1"), poll_interval=0.02, retry_delay=0.01)
    status, _ = wait(b, b.submit(spec(make_input(emu))).name, clock)
    assert status.state is JobState.SUCCEEDED
    assert all(c.path.startswith(f"/v1/projects/{PROJECT}/locations/{LOCATION}/") for c in emu.calls)


def test_queued_state_and_dataset_only_destination(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.queued_seconds = 0.1
    emu.output_table_format = "name"
    make_input(emu)
    sdk = emu.client()
    job = sdk.batches.create(
        model=MODEL, src=f"bq://{PROJECT}.ds.inp", config={"dest": f"bq://{PROJECT}.ds", "display_name": "d"}
    )
    b = backend(emu)
    assert b.get(job.name).state is JobState.QUEUED
    clock.advance(0.1)
    assert b.get(job.name).state is JobState.PENDING
    clock.advance(1)
    status = b.get(job.name)
    assert status.state is JobState.SUCCEEDED
    assert status.output.database == PROJECT and status.output.schema == "ds"
    assert status.output.identifier.startswith("predictions_")
    assert emu.tables.exists(uri(status.output.identifier))
