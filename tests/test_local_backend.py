"""The local batch backend against a real DuckDB warehouse, answered by the mock provider."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timezone

import pyarrow as pa
import pytest

from batchflow.batch.base import BatchBackend, JobSpec, JobState
from batchflow.batch.local import NAME_PREFIX, LocalBackend
from batchflow.batch.providers.base import BaseProvider, ProviderResult
from batchflow.batch.providers.mock import MockProvider
from batchflow.errors import ExecutionError
from batchflow.requests import request_hash
from batchflow.warehouse.duckdb import DuckDBWarehouse
from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401

MODEL = "gemini-2.5-flash"


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
    """The job's final status: joins its thread (an event, no polling); the timeout only guards a hang."""
    status = backend.join(name, timeout)
    assert status.state.terminal, f"job still {status.state} after {timeout}s"
    return status


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


class GatedProvider(BaseProvider):
    """Answers like the mock, but each chunk waits for the test to open the gate."""

    name = "gated"

    def __init__(self):
        self.inner = MockProvider({})
        self.gate = threading.Semaphore(0)
        self.calls = 0
        self.entered = threading.Condition()

    def generate(self, model, requests):
        with self.entered:
            self.calls += 1
            self.entered.notify_all()
        assert self.gate.acquire(timeout=60)
        return self.inner.generate(model, requests)

    def wait_calls(self, n: int) -> None:
        """Return once `n` chunks have reached the provider (the timeout only guards a hang)."""
        with self.entered:
            assert self.entered.wait_for(lambda: self.calls >= n, 60)


def watch_answers(backend):
    """Wait on the backend's own live-count updates (a condition notified by `_count`, no polling):
    returns ``until(name, n)``, which returns once the job has answered at least `n` rows."""
    cond = threading.Condition()
    real = backend._count

    def counted(job, failed, total):
        real(job, failed, total)
        with cond:
            cond.notify_all()

    backend._count = counted

    def until(name: str, n: int) -> None:
        with cond:  # the timeout only guards a hang
            assert cond.wait_for(lambda: (lambda s: s.successful + s.failed)(backend.get(name)) >= n, 60)

    return until


def test_live_counts_and_cancel_keep_answered_rows(wh):
    make_input(wh, "inp", 100)
    provider = GatedProvider()
    backend = LocalBackend(wh, provider, concurrency=1, chunk_size=10)
    answered = watch_answers(backend)
    name = backend.submit(spec(wh)).name
    provider.gate.release(2)  # two chunks answered
    answered(name, 20)
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


class BrokenProvider(BaseProvider):
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


class ExplodingProvider(BaseProvider):
    """A CPU-bound provider whose `generate` raises (in the worker process)."""

    name = "exploding"
    cpu_bound = True

    def generate(self, model, requests):
        raise RuntimeError("worker exploded")


class CrashingProvider(BaseProvider):
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


# -- answers persisted as they go: chunked commits, kill -9, cancel; declared capabilities ---------


OUTPUT_COLUMNS = [("id", "INT64"), ("note", "STRING"), ("request_hash", "STRING"), ("request", "JSON"),
                  ("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP")]


def test_output_table_exists_as_soon_as_submit_returns(wh):
    make_input(wh, "inp", 30)
    provider = GatedProvider()  # nothing is answered until the gate opens
    backend = LocalBackend(wh, provider, concurrency=1, chunk_size=10)
    name = backend.submit(spec(wh)).name
    assert wh.kind(wh.relation("out")) == "table"
    assert [(c.name, c.type) for c in wh.columns(wh.relation("out"))] == OUTPUT_COLUMNS
    assert rows(wh, "out") == []
    provider.gate.release(100)
    assert wait(backend, name).state is JobState.SUCCEEDED
    assert len(rows(wh, "out")) == 30


def test_each_answered_chunk_is_committed_before_the_job_ends(wh):
    """With a provider slower than the commit interval, a chunk is in the table while the next one
    is still being answered (the job's thread is alive, blocked on the gate)."""
    make_input(wh, "inp", 40)
    provider = GatedProvider()
    backend = LocalBackend(wh, provider, concurrency=1, chunk_size=10)
    committed = threading.Event()
    real_append = wh.append_arrow

    def append(*args, **kwargs):
        n = real_append(*args, **kwargs)
        committed.set()
        return n

    wh.append_arrow = append
    name = backend.submit(spec(wh)).name
    provider.gate.release(1)
    assert committed.wait(60), "the first chunk was never committed"
    assert len(rows(wh, "out")) == 10  # committed, read through another cursor
    assert backend.get(name).state is JobState.RUNNING and provider.calls <= 2
    assert [r["id"] for r in rows(wh, "out")] == list(range(1, 11))
    provider.gate.release(100)
    assert wait(backend, name).state is JobState.SUCCEEDED
    assert [r["id"] for r in rows(wh, "out")] == list(range(1, 41))


def test_kill_9_leaves_only_whole_committed_chunks(tmp_path):
    """A real SIGKILL of a process running a local job: the output table holds the chunks committed
    before it, every row a complete answer, and nothing else."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "killed.duckdb"
    total, chunk = 20_000, 500
    setup = DuckDBWarehouse(path)
    make_input(setup, "inp", total)
    input_hashes = {r["request_hash"] for r in setup.query_arrow("select request_hash from `main`.`inp`").to_pylist()}
    setup.close()

    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-m", "tests.local_kill_child", str(path), str(chunk), "12"],
                             cwd=repo, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, child.kill)  # only against a hang: the test never waits on a clock
    watchdog.start()
    try:
        lines = []
        while sum(line.startswith("committed ") for line in lines) < 2:
            line = child.stdout.readline()
            assert line, f"the child ended before two commits: {lines}"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        watchdog.cancel()
        child.stdout.close()
    assert lines[0].startswith("submitted ")

    after = DuckDBWarehouse(path)
    try:
        assert after.kind(after.relation("out")) == "table"
        assert [(c.name, c.type) for c in after.columns(after.relation("out"))] == OUTPUT_COLUMNS
        out = rows(after, "out")
    finally:
        after.close()
    committed = sum(int(line.split()[1]) for line in lines if line.startswith("committed "))
    assert len(out) >= committed >= 2 * chunk  # at least what the child said it had committed ...
    assert len(out) % chunk == 0 and len(out) <= 12 * chunk < total  # ... in whole chunks, never the hanging ones
    assert [r["id"] for r in out] == list(range(1, len(out) + 1))  # in input order
    for r in out:
        assert (r["response"] is None) != (r["status"] == "")  # exactly one of response / status
        assert r["status"] == "" and json.loads(r["response"])["candidates"]
        assert r["processed_time"] is not None
    assert {r["request_hash"] for r in out} <= input_hashes


class FailingGatedProvider(GatedProvider):
    """Gated, and every third request of a chunk is a row error."""

    def generate(self, model, requests):
        answers = super().generate(model, requests)
        from batchflow.batch.providers.base import row_error

        return [row_error(400, "nope") if i % 3 == 0 else a for i, a in enumerate(answers)]


def test_cancel_keeps_every_answered_row_and_counts_match_the_table(wh):
    make_input(wh, "inp", 200)
    provider = FailingGatedProvider()
    provider.cpu_bound = True  # one answering thread: the chunks in flight queue up behind the gate, in order
    backend = LocalBackend(wh, provider, concurrency=3, chunk_size=10)
    answered = watch_answers(backend)
    name = backend.submit(spec(wh)).name
    provider.gate.release(4)
    answered(name, 40)
    provider.wait_calls(5)  # under load the reader may lag: cancel only once chunk 5 is at the gate
    backend.cancel(name)  # chunk 5 waits at the gate, 6 and 7 queue behind it
    provider.gate.release(1)
    answered(name, 50)  # the job stops reading; what is in flight is still answered and kept
    provider.gate.release(1000)
    status = wait(backend, name)
    assert status.state is JobState.CANCELLED
    out = rows(wh, "out")
    answered = provider.calls * 10  # every chunk handed to the provider was answered and kept
    assert 50 <= len(out) == answered < 200
    assert [r["id"] for r in out] == list(range(1, answered + 1))
    assert status.successful == sum(r["status"] == "" for r in out)
    assert status.failed == sum(r["status"] != "" for r in out) > 0
    assert status.incomplete == 200 - len(out)


def test_duckdb_create_table_from_schema_and_append_arrow(wh):
    schema = pa.schema([("id", pa.int64()), ("request", pa.string()), ("status", pa.string()),
                        ("processed_time", pa.timestamp("us", tz="UTC"))])
    batch = pa.record_batch([pa.array([1, 2]), pa.array(['{"a": 1}', None]), pa.array(["", "x"]),
                             pa.array([0, 1], pa.timestamp("us", tz="UTC"))], schema=schema)
    wh.write_arrow(wh.relation("whole"), [batch], schema, json_columns=["request"])
    wh.create_table_from_schema(wh.relation("parts"), schema, json_columns=["request"])
    assert wh.columns(wh.relation("parts")) == wh.columns(wh.relation("whole"))  # the same types
    assert wh.append_arrow(wh.relation("parts"), batch, json_columns=["request"]) == 2
    assert wh.append_arrow(wh.relation("parts"), [batch, batch.slice(0, 1)], json_columns=["request"]) == 3
    assert wh.append_arrow(wh.relation("parts"), [], json_columns=["request"]) == 0
    got = wh.query_arrow("select id, json_value(request, '$.a') as a from `main`.`parts`").to_pylist()
    assert got == [{"id": 1, "a": "1"}, {"id": 2, "a": None}] * 2 + [{"id": 1, "a": "1"}]
    with pytest.raises(ExecutionError, match="already exists"):
        wh.create_table_from_schema(wh.relation("parts"), schema)


def test_duckdb_append_arrow_stores_checked_json_as_is_and_parses_the_rest(wh):
    """`checked_json` texts are stored as JSON values without parsing (an invalid one would land as
    it is: the caller vouches), the other JSON columns are parsed, so an invalid text fails the commit."""
    schema = pa.schema([("id", pa.int64()), ("request", pa.string()), ("response", pa.string())])
    wh.create_table_from_schema(wh.relation("out"), schema, json_columns=["request", "response"])
    batch = pa.record_batch([pa.array([1, 2]), pa.array(['{"a": 1}', None]), pa.array(['{"b": [2]}', "not json"])],
                            schema=schema)
    as_stream = pa.RecordBatchReader.from_batches(schema, [batch])
    assert wh.append_arrow(wh.relation("out"), as_stream, ["request", "response"], checked_json=["response"]) == 2
    got = wh.query_arrow("select id, json_value(request, '$.a') as a, cast(response as string) as raw "
                         "from `main`.`out` order by id").to_pylist()
    assert got == [{"id": 1, "a": "1", "raw": '{"b": [2]}'}, {"id": 2, "a": None, "raw": "not json"}]
    assert wh.query_arrow("select json_query(response, '$.b') as b from `main`.`out` where id = 1").to_pylist() == [
        {"b": "[2]"}]
    assert wh._run("select distinct typeof(response) from main.out") == [("JSON",)]
    with pytest.raises(ExecutionError, match="(?i)malformed json"):  # not vouched for: parsed, refused
        wh.append_arrow(wh.relation("out"), batch, ["request", "response"], checked_json=["request"])
    assert wh._run("select count(*) from main.out") == [(2,)]  # the refused commit left nothing


class RawTextProvider(BaseProvider):
    """Hands over raw response texts (`ProviderResult(text=...)`); does not declare `encodes_json`."""

    name = "raw"

    def generate(self, model, requests):
        return [ProviderResult(text="{'single': 'quoted'}") for _ in requests]


def test_a_provider_that_does_not_encode_its_answers_gets_them_parsed(wh):
    """A provider not declaring `encodes_json` has its answers parsed on commit: a text that is not
    JSON fails the job instead of landing in the JSON `response` column. The mock's are taken as
    they are (it encodes them) and still are JSON, row by row."""
    make_input(wh, "inp", 6)
    backend = LocalBackend(wh, RawTextProvider(), concurrency=1, chunk_size=3)
    status = wait(backend, backend.submit(spec(wh)).name)
    assert status.state is JobState.FAILED and "json" in (status.error or "").lower()
    assert wh._run("select count(*) from main.out") == [(0,)]
    mock = LocalBackend(wh, MockProvider({}), concurrency=1, chunk_size=3)
    assert MockProvider.encodes_json is True
    assert wait(mock, mock.submit(spec(wh, out="mock_out")).name).state is JobState.SUCCEEDED
    assert wh._run("select count(*), count_if(json_valid(response::varchar)), count_if(json_valid(request::varchar)) "
                   "from main.mock_out") == [(6, 6, 6)]


class SteppedProvider(BaseProvider):
    """CPU-bound like the mock; each chunk waits for the test's go-ahead and says when it is answered."""

    name = "stepped"
    cpu_bound = True

    def __init__(self):
        self.inner = MockProvider({})
        self.go = threading.Semaphore(0)
        self.answered = threading.Semaphore(0)

    def generate(self, model, requests):
        self.go.acquire()
        try:
            return self.inner.generate(model, requests)
        finally:
            self.answered.release()


@pytest.mark.parametrize("cpu_bound", [True, False])
def test_commits_follow_what_redoing_the_answers_costs(wh, cpu_bound):
    """A CPU-bound provider's answers (free to redo) are committed a row group at a time, however
    slowly they come; a paid provider's as soon as COMMIT_SECONDS allows. Commits stream in the
    chunks as they arrive (a reader, not a list held in memory)."""
    make_input(wh, "inp", 100)
    provider = SteppedProvider()
    provider.cpu_bound = cpu_bound
    backend = LocalBackend(wh, provider, concurrency=1, chunk_size=10)
    backend.COMMIT_ROWS, backend.COMMIT_SECONDS, backend.COMMIT_SECONDS_CPU_BOUND = 30, 0.0, 3600.0
    commits: list[tuple[str, int]] = []
    committed = threading.Semaphore(0)
    real = wh.append_arrow

    def recording(relation, batches, json_columns=(), checked_json=()):
        commits.append((type(batches).__name__, real(relation, batches, json_columns, checked_json)))
        committed.release()
        return commits[-1][1]

    wh.append_arrow = recording
    name = backend.submit(spec(wh)).name
    for _ in range(10):  # one chunk at a time: the next is answered only once this one was ...
        provider.go.release()
        assert provider.answered.acquire(timeout=60)
        if not cpu_bound:  # ... and, for paid answers, committed (a CPU-bound chunk waits for its group)
            assert committed.acquire(timeout=30), f"a paid chunk was not committed on its own: {commits}"
    status = wait(backend, name)
    assert status.state is JobState.SUCCEEDED and len(rows(wh, "out")) == 100
    sizes = [n for _, n in commits]
    assert sum(sizes) == 100 and {kind for kind, _ in commits} == {"RecordBatchReader"}
    if cpu_bound:  # after the first (at once), whole groups of COMMIT_ROWS
        assert sizes[1:-1] == [30] * (len(sizes) - 2) and len(sizes) <= 5, sizes
    else:
        assert sizes == [10] * 10
    assert backend.commit_seconds() == (3600.0 if cpu_bound else 0.0)


def test_answers_waiting_for_the_warehouse_stay_under_wait_rows(wh):
    """However large a commit may grow, the answered rows the warehouse has not taken yet stay under
    WAIT_ROWS (plus the chunk being handed over): the job's thread waits instead of piling them up."""
    from batchflow.batch.base import JobStatus
    from batchflow.batch.local import _Commits, _Job

    backend = LocalBackend(wh, MockProvider({}))
    backend.WAIT_ROWS, backend.COMMIT_ROWS = 30, 10_000
    taken: list[int] = []

    class SlowWarehouse:  # takes the next batch only once WAIT_ROWS rows wait (or the job is done)
        def append_arrow(self, relation, reader, json_columns=(), checked_json=()):
            n = 0
            while True:
                with commits.cond:
                    commits.cond.wait_for(lambda: commits.queued >= backend.WAIT_ROWS or commits.closed, timeout=30)
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return n
                n += batch.num_rows
                taken.extend(batch.column(0).to_pylist())

    backend.warehouse = SlowWarehouse()
    # The committer calls append_arrow only once a batch was added, so `commits` is bound by then.
    commits = _Commits(backend, _Job(spec=spec(wh), status=JobStatus(name=NAME_PREFIX + "1", state=JobState.RUNNING)))
    most = 0
    for start in range(0, 1_000, 10):
        commits.add(pa.record_batch({"i": list(range(start, start + 10))}), 0)
        with commits.cond:
            most = max(most, commits.queued)
    commits.close()
    assert taken == list(range(1_000))  # every row, in order
    assert 30 <= most <= 30 + 10, most


def test_capabilities_are_declared():
    from batchflow.batch import providers
    from batchflow.batch.providers.openai import OpenAIProvider
    from batchflow.batch.vertex import VertexBackend

    assert LocalBackend.jobs_outlive_process is False and VertexBackend.jobs_outlive_process is True
    assert LocalBackend.reads_views is True and VertexBackend.reads_views is False
    assert isinstance(LocalBackend.poll_interval, float) and isinstance(VertexBackend.poll_interval, float)
    assert BatchBackend.__annotations__.keys() >= {"jobs_outlive_process", "reads_views", "poll_interval"}
    for cls in (MockProvider, OpenAIProvider):  # every provider declares its capabilities and generate_json
        assert "cpu_bound" in vars(cls) and "encodes_json" in vars(cls) and callable(cls.generate_json)
    assert set(providers.PROVIDERS) == {"mock", "openai"}  # a new provider: add it above
    assert MockProvider({}).cpu_bound is True and OpenAIProvider.cpu_bound is False
    assert BaseProvider.cpu_bound is False and BaseProvider.encodes_json is False


def test_a_provider_without_the_declarations_is_refused(wh):
    class Bare:
        name = "bare"

        def generate(self, model, requests):
            return []

    with pytest.raises(TypeError, match="cpu_bound, encodes_json, generate_json"):
        LocalBackend(wh, Bare())


@pytest.mark.emulator
def test_local_job_commits_chunks_into_bigquery(bigquery_emulator, bq_dataset):  # noqa: F811
    """The BigQuery adapter's create_table_from_schema / append_arrow, through a local job."""
    from batchflow.warehouse.bigquery import BigQueryWarehouse

    bq = BigQueryWarehouse(bigquery_emulator.project, bq_dataset, "us-central1", client=bigquery_emulator.client())
    try:
        bq.ensure_schema(bq_dataset)
        inp, out = bq.relation("inp"), bq.relation("out")
        bq.create_table_as(inp, "SELECT i AS id, TO_HEX(SHA256(CAST(i AS STRING))) AS request_hash, "
                                "TO_JSON(STRUCT([STRUCT('user' AS role, [STRUCT(CONCAT('Review ', CAST(i AS STRING)) "
                                "AS text)] AS parts)] AS contents)) AS request FROM UNNEST(GENERATE_ARRAY(1, 25)) AS i")
        backend = LocalBackend(bq, MockProvider({"failures": [{"every": 4, "outcome": "row_error"}]}), chunk_size=10)
        backend.COMMIT_ROWS = 1  # a commit per chunk: three appends
        appended = []
        real = bq.append_arrow
        bq.append_arrow = lambda *a, **k: appended.append(real(*a, **k)) or appended[-1]
        name = backend.submit(JobSpec(MODEL, inp, out, "bq job")).name
        assert [c.name for c in bq.columns(out)][-3:] == ["response", "status", "processed_time"]
        status = wait(backend, name)
        assert status.state is JobState.SUCCEEDED and appended == [10, 10, 5]
        assert {c.name: c.type for c in bq.columns(out)} == {
            "id": "INT64", "request_hash": "STRING", "request": "JSON", "response": "JSON", "status": "STRING",
            "processed_time": "TIMESTAMP"}
        got = bq.query_arrow(f"SELECT id, status, JSON_VALUE(response, '$.candidates[0].finishReason') AS fr "
                             f"FROM {out.render()} ORDER BY id").to_pylist()
        assert [g["id"] for g in got] == list(range(1, 26))
        assert all((g["status"] == "") == (g["fr"] == "STOP") for g in got)
        assert status.failed == sum(g["status"] != "" for g in got) and status.successful + status.failed == 25
        assert sorted(t.table_id for t in bigquery_emulator.client().list_tables(bq_dataset)) == ["inp", "out"]
    finally:
        bq.close()


def test_commits_under_the_checkpoint_threshold_stay_in_the_wal(tmp_path) -> None:
    # DuckDB's default (16 MB) checkpoints on nearly every commit of a streaming job, and the next
    # small statement of the lifecycle pays for it; the warehouse raises the threshold (256 MB).
    w = DuckDBWarehouse(tmp_path / "c.duckdb", schema="s")
    try:
        w.execute("CREATE TABLE s.t (x STRING)")
        for _ in range(24):  # ~1 MB a commit, 24 MB in all: more than DuckDB's default threshold
            w.execute("INSERT INTO s.t SELECT REPEAT(TO_HEX(MD5(CAST(RAND() AS STRING))), 32768)")
        wal = tmp_path / "c.duckdb.wal"
        assert wal.stat().st_size > 20 * 2**20
        assert w.query_arrow("SELECT COUNT(*) AS n FROM s.t").column("n")[0].as_py() == 24
    finally:
        w.close()
    assert not wal.exists()  # closing checkpoints
