"""The local batch backend against a real DuckDB warehouse, answered by the mock provider."""

from __future__ import annotations

import dataclasses
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


# -- worker processes (CPU-bound providers) ------------------------------------------------------


class ExplodingProvider:
    """A CPU-bound provider whose `generate` raises (in the worker process)."""

    name = "exploding"
    cpu_bound = True

    def generate(self, model, requests):
        raise RuntimeError("worker exploded")


class CrashingProvider:
    """Answers like the mock, but a request mentioning `crash` kills the worker process."""

    name = "crashing"
    cpu_bound = True

    def __init__(self):
        self.inner = MockProvider({})

    def generate(self, model, requests):
        if any("crash" in json.dumps(r) for r in requests):
            import os

            os._exit(3)
        return self.inner.generate(model, requests)


def output_text(wh, rel: str):
    """Every output column as text (JSON columns byte for byte), minus processed_time."""
    return wh.query_arrow(
        f"select id, note, request_hash, cast(request as string) as request, cast(response as string) as response, "
        f"status from `main`.`{rel}` order by id"
    ).to_pylist()


def test_process_pool_output_is_byte_identical_to_threads(wh):
    make_input(wh, "inp", 600, prompt_sql="concat('Review number ', cast(i as string), if(mod(i, 7) = 0, ' banana', ''))")
    wh.execute("""insert into `main`.`inp` (id, note, request)
                  select 601, 'null request', null union all
                  select 602, 'no contents', parse_json('{"nope": 1}')""")
    config = {"failures": [{"when_prompt_contains": "banana", "outcome": "recitation"},
                           {"every": 9, "outcome": "transient_error"}]}
    threads = LocalBackend(wh, MockProvider(config), concurrency=3, chunk_size=50, processes=0)
    processes = LocalBackend(wh, MockProvider(config), concurrency=3, chunk_size=50, processes=2, process_min_rows=0)
    mixed = LocalBackend(wh, MockProvider(config), concurrency=3, chunk_size=50, processes=2, process_min_rows=0)
    try:
        processes._warm_processes().result(timeout=120)  # every chunk in a worker process
        c = wait(mixed, mixed.submit(spec(wh, out="out_mixed")).name)  # threads until a worker is up
        a = wait(threads, threads.submit(spec(wh, out="out_threads")).name)
        b = wait(processes, processes.submit(spec(wh, out="out_processes")).name)
        assert processes._processes is not None and threads._processes is None  # each took its path
    finally:
        processes.close()
        mixed.close()
    assert a.state is b.state is c.state is JobState.SUCCEEDED
    assert (a.successful, a.failed) == (b.successful, b.failed) == (c.successful, c.failed) and 0 < a.failed < 602
    assert output_text(wh, "out_threads") == output_text(wh, "out_processes") == output_text(wh, "out_mixed")
    out = {r["id"]: r for r in output_text(wh, "out_processes")}
    assert out[601]["response"] is None and "NULL" in out[601]["status"]
    assert out[602]["response"] is None and out[602]["status"].startswith("Bad Request: ")
    assert json.loads(out[7]["response"])["candidates"][0]["finishReason"] == "RECITATION"
    # the mock through the process path answers as MockProvider.generate does, byte for byte
    inp = [r for r in rows(wh, "inp") if r["id"] <= 600]
    expected = MockProvider(config).generate(MODEL, [json.loads(r["request"]) for r in inp])
    assert [out[r["id"]]["response"] for r in inp] == [e.response_text() for e in expected]
    assert [out[r["id"]]["status"] for r in inp] == [e.status for e in expected]


def test_provider_exception_in_a_worker_process_fails_rows_with_500(wh):
    make_input(wh, "inp", 40)
    wh.execute("insert into `main`.`inp` (id, note, request) select 41, 'null request', null")
    backend = LocalBackend(wh, ExplodingProvider(), chunk_size=10, processes=1, process_min_rows=0)
    try:
        backend._warm_processes().result(timeout=120)
        status = wait(backend, backend.submit(spec(wh)).name)
        assert backend._processes is not None
    finally:
        backend.close()
    assert status.state is JobState.SUCCEEDED and (status.successful, status.failed) == (0, 41)
    out = rows(wh, "out")
    assert all(r["response"] is None for r in out)
    assert all(r["status"].startswith("Internal Server Error: ") and "worker exploded" in r["status"]
               for r in out if r["id"] <= 40)
    assert out[-1]["status"].startswith("Bad Request: ") and "NULL" in out[-1]["status"]


def test_a_dead_worker_process_fails_its_chunk_not_the_job(wh):
    make_input(wh, "inp", 30, prompt_sql="if(i = 15, 'please crash', concat('Review number ', cast(i as string)))")
    backend = LocalBackend(wh, CrashingProvider(), concurrency=1, chunk_size=10, processes=1, process_min_rows=0)
    try:
        backend._warm_processes().result(timeout=120)  # the crash must happen in a worker, not in pytest
        status = wait(backend, backend.submit(spec(wh)).name)
        assert status.state is JobState.SUCCEEDED and (status.successful, status.failed) == (20, 10)
        out = rows(wh, "out")
        assert [r["id"] for r in out if r["status"]] == list(range(11, 21))
        assert all("worker process failed" in r["status"] and r["response"] is None for r in out if r["status"])
        # the backend starts new workers: the next job is answered
        make_input(wh, "inp2", 10)
        again = wait(backend, backend.submit(spec(wh, inp="inp2", out="out2")).name)
        assert again.state is JobState.SUCCEEDED and again.successful == 10
    finally:
        backend.close()


def test_processes_only_for_big_jobs_of_cpu_bound_providers(wh):
    make_input(wh, "inp", 12)
    default = LocalBackend(wh, MockProvider({}), processes=2)
    assert default.process_min_rows == LocalBackend.PROCESS_MIN_ROWS > 12
    wait(default, default.submit(spec(wh)).name)
    assert default._processes is None  # a small job stays on threads
    assert not MockProvider({"failures": [{"every": 2, "limit": 1, "outcome": "row_error"}]}).cpu_bound
    assert MockProvider({"failures": [{"every": 2, "outcome": "row_error"}]}).cpu_bound
    gated = LocalBackend(wh, GatedProvider(), processes=2, process_min_rows=0)
    gated.provider.gate.release(100)
    wait(gated, gated.submit(spec(wh, out="out2")).name)
    assert gated._processes is None  # not declared cpu_bound: threads
    with pytest.raises(ValueError):
        LocalBackend(wh, MockProvider({}), processes=-1)


def test_input_request_hash_is_reused_only_for_the_model_it_was_computed_with(wh):
    """make_input's request_hash is not the real digest: reusing it shows in the response ids."""
    make_input(wh, "inp", 30)

    def run(out, hash_model):
        backend = LocalBackend(wh, MockProvider({}), chunk_size=7)
        job = dataclasses.replace(spec(wh, out=out), hash_model=hash_model)
        assert wait(backend, backend.submit(job).name).state is JobState.SUCCEEDED
        return {r["id"]: (r["request_hash"], json.loads(r["response"])["responseId"]) for r in output_text(wh, out)}

    computed, other_model, reused = run("out_a", None), run("out_b", "gemini-2.0-flash"), run("out_c", MODEL)
    assert computed == other_model  # hashed for another model: the executor hashes itself
    assert all(response_id == digest[16:40] for digest, response_id in reused.values())
    assert all(response_id != digest[16:40] for digest, response_id in computed.values())


def test_profiles_batch_block_sets_the_executor(wh):
    """`processes` is opt-in from profiles.yml; chunking and concurrency come from the same block."""
    from batchflow.adapters import open_backend
    from batchflow.project import Target

    def backend(**batch):
        return open_backend(Target("local", "p", "duckdb", "main", batch={"backend": "local", **batch}), wh)

    default = backend()
    assert (default.processes, default.concurrency, default.chunk_size) == (0, 4, 5_000)
    assert isinstance(default.provider, MockProvider)
    tuned = backend(processes=2, concurrency=3, chunk_size=100)
    assert (tuned.processes, tuned.concurrency, tuned.chunk_size) == (2, 3, 100)


class UnpicklableProvider(MockProvider):
    """Declares cpu_bound but cannot be copied into a worker process."""

    def __init__(self):
        super().__init__({})
        self.lock = threading.Lock()

    def __getstate__(self):
        raise TypeError("cannot pickle this provider")


def test_workers_that_cannot_start_leave_the_job_on_threads(wh):
    make_input(wh, "inp", 20)
    backend = LocalBackend(wh, UnpicklableProvider(), chunk_size=5, processes=2, process_min_rows=0)
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.SUCCEEDED and status.successful == 20
    assert backend.processes == 0 and backend._processes is None
