"""The local batch backend against a real DuckDB warehouse, answered by the mock provider."""

from __future__ import annotations

import json
import threading
import time
from datetime import timezone

import pytest

from batchflow.batch.base import BatchBackend, JobSpec, JobState
from batchflow.batch.local import NAME_PREFIX, LocalBackend
from batchflow.batch.providers.mock import MockProvider
from batchflow.errors import ExecutionError
from batchflow.requests import request_hash
from batchflow.warehouse.duckdb import DuckDBWarehouse

MODEL = "gemini-2.5-flash"


@pytest.fixture
def wh(tmp_path):
    w = DuckDBWarehouse(tmp_path / "wh.duckdb")
    yield w
    w.close()


def make_input(wh, name: str, n: int, prompt_sql: str = "concat('Review number ', cast(i as string))") -> None:
    """`id`, `note` (passthrough), `request_hash`, `request` (JSON) for rows 1..n, in BigQuery SQL."""
    wh.execute(
        f"""create or replace table `main`.`{name}` as
        select i as id,
               concat('note ', cast(i as string)) as note,
               to_hex(sha256(cast(i as string))) as request_hash,
               to_json(struct([struct('user' as role, [struct({prompt_sql} as text)] as parts)] as contents)) as request
        from unnest(generate_array(1, {n})) as i"""
    )


def wait(backend, name: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        status = backend.get(name)
        if status.state.terminal:
            return status
        assert time.monotonic() < deadline, f"job still {status.state} after {timeout}s"
        time.sleep(0.02)


def spec(wh, inp="inp", out="out", labels=None):
    return JobSpec(MODEL, wh.relation(inp), wh.relation(out), f"job {out}", labels or {})


def rows(wh, rel: str, order="id"):
    return wh.query_arrow(f"select * from `main`.`{rel}` order by {order}").to_pylist()


def test_job_writes_vertex_output_shape(wh):
    make_input(wh, "inp", 12)
    backend = LocalBackend(wh, MockProvider({}), concurrency=2, chunk_size=5)
    first = backend.submit(spec(wh, labels={"run": "r1", "model": "reviews"}))
    assert first.name.startswith(NAME_PREFIX) and first.name[len(NAME_PREFIX):].isdigit()
    assert first.state in (JobState.PENDING, JobState.RUNNING)
    assert first.create_time and first.labels == {"run": "r1", "model": "reviews"}

    status = wait(backend, first.name)
    assert status.state is JobState.SUCCEEDED, status.error
    assert (status.successful, status.failed, status.incomplete) == (12, 0, 0)
    assert status.output == wh.relation("out") and status.model == MODEL and status.update_time

    cols = [(c.name, c.type) for c in wh.columns(wh.relation("out"))]
    assert cols == [("id", "INT64"), ("note", "STRING"), ("request_hash", "STRING"), ("request", "JSON"),
                    ("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP")]
    out = rows(wh, "out")
    inp = rows(wh, "inp")
    assert len(out) == 12
    for o, i in zip(out, inp):
        assert (o["id"], o["note"], o["request_hash"]) == (i["id"], i["note"], i["request_hash"])
        assert json.loads(o["request"]) == json.loads(i["request"])
        assert o["status"] == ""
        response = json.loads(o["response"])
        assert response["candidates"][0]["finishReason"] == "STOP"
        assert f"Review number {o['id']}" in response["candidates"][0]["content"]["parts"][0]["text"]
        assert o["processed_time"].tzinfo is not None
        assert o["processed_time"].astimezone(timezone.utc).year >= 2025
    # responses are the provider's, byte for byte
    expected = MockProvider({}).generate(MODEL, [json.loads(i["request"]) for i in inp])
    assert [json.loads(o["response"]) for o in out] == [e.response for e in expected]


def test_failure_outcomes_land_in_the_output(wh):
    wh.execute(
        """create table `main`.`inp` as
        select i as id, to_json(struct([struct('user' as role, [struct(t as text)] as parts)] as contents)) as request
        from unnest([struct(1 as i, 'banana bread' as t), struct(2, 'poison'), struct(3, 'forbidden thing'),
                     struct(4, 'long essay please'), struct(5, 'broken row'), struct(6, 'busy now'),
                     struct(7, 'fine')])"""
    )
    wh.execute("""insert into `main`.`inp` (id, request) select 8, parse_json('{"contents": [{"role": "system",
                  "parts": [{"text": "x"}]}]}')""")
    wh.execute("""insert into `main`.`inp` (id, request) select 9, parse_json('{"no_contents": true}')""")
    config = {"failures": [
        {"when_prompt_contains": "banana", "outcome": "recitation"},
        {"when_prompt_contains": "poison", "outcome": "safety"},
        {"when_prompt_contains": "forbidden", "outcome": "prompt_blocked"},
        {"when_prompt_contains": "essay", "outcome": "max_tokens"},
        {"when_prompt_contains": "broken", "outcome": "row_error"},
        {"when_prompt_contains": "busy", "outcome": "transient_error"},
    ]}
    backend = LocalBackend(wh, MockProvider(config), chunk_size=4)
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.SUCCEEDED  # row errors still give SUCCEEDED, as on Vertex
    assert (status.successful, status.failed) == (5, 4)

    out = {r["id"]: r for r in rows(wh, "out")}
    resp = {k: json.loads(r["response"]) if r["response"] is not None else None for k, r in out.items()}
    assert resp[1]["candidates"][0]["finishReason"] == "RECITATION" and out[1]["status"] == ""
    assert resp[2]["candidates"][0]["finishReason"] == "SAFETY"
    assert resp[3]["promptFeedback"]["blockReason"] == "SAFETY" and "candidates" not in resp[3]
    assert resp[4]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert resp[5] is None and out[5]["status"].startswith('Bad Request: {"error": {"code": 400')
    assert resp[6] is None and out[6]["status"].startswith("Too Many Requests: ")
    assert "RESOURCE_EXHAUSTED" in out[6]["status"]
    assert resp[7]["candidates"][0]["finishReason"] == "STOP" and out[7]["status"] == ""
    assert resp[8] is None and "valid role" not in out[8]["status"] and "contents[0]" in out[8]["status"]
    assert resp[9] is None and "contents" in out[9]["status"]
    # the status text parses as Vertex's: reason, then the google.rpc JSON
    reason, _, body = out[5]["status"].partition(": ")
    assert reason == "Bad Request" and json.loads(body)["error"]["status"] == "INVALID_ARGUMENT"
    # flatten-style SQL works on the output (JSON columns)
    got = wh.query_arrow(
        "select id, json_value(response, '$.candidates[0].finishReason') as fr from `main`.`out` order by id"
    ).to_pylist()
    assert [g["fr"] for g in got] == ["RECITATION", "SAFETY", None, "MAX_TOKENS", None, None, "STOP", None, None]


def test_every_rule_fails_the_predicted_rows(wh):
    make_input(wh, "inp", 300)
    backend = LocalBackend(wh, MockProvider({"failures": [{"every": 10, "outcome": "row_error"}]}), chunk_size=64)
    status = wait(backend, backend.submit(spec(wh)).name)
    out = rows(wh, "out")
    predicted = {r["id"] for r in out if int(request_hash(r["request"], MODEL)[:16], 16) % 10 == 0}
    assert {r["id"] for r in out if r["status"]} == predicted
    assert status.failed == len(predicted) and status.successful == 300 - len(predicted)


def test_refuses_an_existing_output_table(wh):
    make_input(wh, "inp", 3)
    make_input(wh, "out", 1)
    backend = LocalBackend(wh, MockProvider({}))
    with pytest.raises(ExecutionError, match="already exists"):
        backend.submit(spec(wh))
    assert backend.list() == []


def test_refuses_a_missing_input(wh):
    with pytest.raises(ExecutionError, match="does not exist"):
        LocalBackend(wh, MockProvider({})).submit(spec(wh, inp="missing"))


def test_unknown_job_name(wh):
    backend = LocalBackend(wh, MockProvider({}))
    with pytest.raises(ExecutionError, match="unknown batch job"):
        backend.get(NAME_PREFIX + "123")
    with pytest.raises(ExecutionError):
        backend.cancel("projects/x/locations/y/batchPredictionJobs/1")


class GatedProvider:
    """Answers like the mock, but each chunk waits for the test to open the gate."""

    name = "gated"

    def __init__(self):
        self.inner = MockProvider({})
        self.gate = threading.Semaphore(0)
        self.calls = 0

    def generate(self, model, requests):
        self.calls += 1
        assert self.gate.acquire(timeout=60)
        return self.inner.generate(model, requests)


def test_live_counts_and_cancel_keep_answered_rows(wh):
    make_input(wh, "inp", 100)
    provider = GatedProvider()
    backend = LocalBackend(wh, provider, concurrency=1, chunk_size=10)
    name = backend.submit(spec(wh)).name
    provider.gate.release(2)  # two chunks answered
    deadline = time.monotonic() + 60
    while backend.get(name).successful < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running = backend.get(name)
    assert running.state is JobState.RUNNING and running.successful == 20 and running.incomplete == 80
    backend.cancel(name)
    assert backend.get(name).state is JobState.CANCELLING
    provider.gate.release(100)  # let the chunk in flight finish
    status = wait(backend, name)
    assert status.state is JobState.CANCELLED
    answered = status.successful + status.failed
    assert 20 <= answered <= 30 and status.incomplete == 100 - answered
    out = rows(wh, "out")
    assert len(out) == answered and [r["id"] for r in out] == list(range(1, answered + 1))
    assert all(r["status"] == "" and r["response"] for r in out)
    backend.cancel(name)  # cancelling a finished job is a no-op
    assert backend.get(name).state is JobState.CANCELLED


def test_list_filters_by_labels(wh):
    make_input(wh, "inp", 5)
    backend = LocalBackend(wh, MockProvider({}))
    a = backend.submit(spec(wh, out="out_a", labels={"run": "1", "model": "x"})).name
    b = backend.submit(spec(wh, out="out_b", labels={"run": "2", "model": "x"})).name
    for n in (a, b):
        wait(backend, n)
    assert {s.name for s in backend.list()} == {a, b}
    assert {s.name for s in backend.list({"model": "x"})} == {a, b}
    assert [s.name for s in backend.list({"run": "2", "model": "x"})] == [b]
    assert backend.list({"run": "3"}) == []
    assert a != b
    # a bare numeric id works like on Vertex
    assert backend.get(a.rsplit("/", 1)[-1]).name == a


def test_empty_input_gives_an_empty_output_table(wh):
    make_input(wh, "inp", 0)
    backend = LocalBackend(wh, MockProvider({}))
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.SUCCEEDED and (status.successful, status.failed) == (0, 0)
    assert [c.name for c in wh.columns(wh.relation("out"))][-3:] == ["response", "status", "processed_time"]


class BrokenProvider:
    name = "broken"

    def generate(self, model, requests):
        raise RuntimeError("endpoint exploded")


def test_provider_crash_fails_rows_not_the_job(wh):
    make_input(wh, "inp", 7)
    backend = LocalBackend(wh, BrokenProvider())
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.SUCCEEDED and status.failed == 7
    out = rows(wh, "out")
    assert all(r["response"] is None and r["status"].startswith("Internal Server Error: ") for r in out)
    assert "endpoint exploded" in out[0]["status"]


def test_job_failure_sets_failed_with_error(wh):
    wh.execute("create table `main`.`inp` as select 1 as id, 'x' as prompt")  # no request column
    backend = LocalBackend(wh, MockProvider({}))
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.FAILED and "request" in status.error
    assert wh.kind(wh.relation("out")) is None


def test_passthrough_json_column_stays_json(wh):
    make_input(wh, "inp", 3)
    wh.execute("create table `main`.`inp2` as select id, to_json(struct(note as n)) as meta, request from `main`.`inp`")
    backend = LocalBackend(wh, MockProvider({}))
    wait(backend, backend.submit(spec(wh, inp="inp2")).name)
    types = {c.name: c.type for c in wh.columns(wh.relation("out"))}
    assert types["meta"] == "JSON" and types["request"] == "JSON" and types["response"] == "JSON"


def test_backend_satisfies_the_protocol(wh):
    backend: BatchBackend = LocalBackend(wh, MockProvider({}))
    assert backend.name == "local"


def test_large_job_streams_with_bounded_memory(wh):
    """200k rows through 5k-row chunks: the count must be exact (memory is bounded by design)."""
    n = 200_000
    make_input(wh, "inp", n)
    backend = LocalBackend(wh, MockProvider({"failures": [{"every": 1000, "outcome": "transient_error"}]}),
                           concurrency=4, chunk_size=5_000)
    status = wait(backend, backend.submit(spec(wh)).name, timeout=900)
    assert status.state is JobState.SUCCEEDED
    assert status.successful + status.failed == n and status.incomplete == 0
    counts = wh.query_arrow(
        "select count(*) as n, countif(status = '') as ok, countif(response is null) as missing from `main`.`out`"
    ).to_pylist()[0]
    assert counts == {"n": n, "ok": status.successful, "missing": status.failed}
    assert 100 < status.failed < 400
