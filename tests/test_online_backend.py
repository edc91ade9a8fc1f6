"""The online backend: the real google-genai client against the generate emulator on 127.0.0.1,
writing a batch job's output table into DuckDB through the warehouse protocol."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from batchflow.batch.base import JobSpec, JobState
from batchflow.batch.online import (GenaiAnswerer, OnlineBackend, OnlineOptions, online_options, request_call,
                                    server_delay)
from batchflow.errors import ConfigError, ExecutionError
from tests.emulators.gemini import RowRule, answer
from tests.emulators.generate import GenerateEmulator, generate_emulator  # noqa: F401

MODEL = "gemini-2.5-flash"


def make_input(wh, n: int, prompt: str = "concat('Review number ', cast(i as string))", extra: str = "") -> None:
    wh.execute(
        f"""create or replace table `main`.`inp` as
        select i as id, to_hex(sha256(cast(i as string))) as request_hash,
               to_json(struct([struct('user' as role, [struct({prompt} as text)] as parts)] as contents{extra})) as request
        from unnest(generate_array(1, {n})) as i""")


def options(emu: GenerateEmulator, api: str = "vertex", **changes) -> OnlineOptions:
    base = dict(api=api, base_url=emu.url, concurrency=4, max_attempts=4, backoff_initial=0.0, backoff_max=0.0)
    if api == "vertex":
        base.update(project="p1", location="us-central1", access_token="test")
    else:
        base.update(api_key="test-key")
    base.update(changes)
    return OnlineOptions(**base)


def run_job(wh, answerer: GenaiAnswerer):
    backend = OnlineBackend(wh, answerer)
    try:
        status = backend.submit(JobSpec(MODEL, wh.relation("inp"), wh.relation("out"), "job"))
        assert status.name.startswith("online/jobs/")
        final = backend.join(status.name, 120)
    finally:
        backend.close()
    rows = wh.query_arrow("select * from `main`.`out` order by id").to_pylist()
    return final, rows


@pytest.mark.emulator
@pytest.mark.parametrize("api", ["vertex", "gemini"])
def test_answers_have_the_batch_output_shape(wh, generate_emulator, api):
    """Every input column, then response / status / processed_time; each response is exactly the REST
    JSON the batch emulator writes for the same request (gemini.py answers both)."""
    make_input(wh, 6)
    status, rows = run_job(wh, GenaiAnswerer(options(generate_emulator, api)))
    assert status.state is JobState.SUCCEEDED and (status.successful, status.failed) == (6, 0)
    assert [c.name for c in wh.columns(wh.relation("out"))] == ["id", "request_hash", "request", "response",
                                                                 "status", "processed_time"]
    assert {c.name: c.type for c in wh.columns(wh.relation("out"))}["response"] == "JSON"
    for row in rows:
        assert row["status"] == ""
        got = json.loads(row["response"])
        expected = answer(json.loads(row["request"]), MODEL, [], got["createTime"]).response
        assert got == expected  # camelCase keys, nothing added (no sdkHttpResponse), nothing dropped
        assert list(got) == list(expected)
    calls = generate_emulator.answered("generate")
    assert len(calls) == 6 and {c.api for c in calls} == {api}
    if api == "vertex":
        assert calls[0].path == f"/v1beta1/projects/p1/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
        assert calls[0].headers["authorization"] == "Bearer test"
    else:
        assert calls[0].path.endswith(f"/models/{MODEL}:generateContent")
        assert calls[0].headers["x-goog-api-key"] == "test-key"


@pytest.mark.emulator
def test_request_fields_reach_the_service_as_sent(wh, generate_emulator):
    """systemInstruction, generationConfig (camel or snake), safetySettings and tools go through
    GenerateContentConfig and come out as the same REST body."""
    extra = (", struct([struct('You are careful.' as text)] as parts) as systemInstruction, "
             "struct(0.0 as temperature, 'application/json' as responseMimeType, 64 as max_output_tokens) as generationConfig, "
             "[struct('HARM_CATEGORY_HARASSMENT' as category, 'BLOCK_ONLY_HIGH' as threshold)] as safetySettings")
    make_input(wh, 1, extra=extra)
    status, rows = run_job(wh, GenaiAnswerer(options(generate_emulator)))
    assert status.state is JobState.SUCCEEDED, rows
    body = generate_emulator.answered()[0].body
    assert body["systemInstruction"] == {"parts": [{"text": "You are careful."}]}
    assert body["generationConfig"] == {"temperature": 0.0, "responseMimeType": "application/json",
                                        "maxOutputTokens": 64}
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    assert json.loads(json.loads(rows[0]["response"])["candidates"][0]["content"]["parts"][0]["text"])


@pytest.mark.emulator
def test_unknown_request_field_is_a_400_row_without_a_call(wh, generate_emulator):
    make_input(wh, 2, extra=", 1 as bogus")
    status, rows = run_job(wh, GenaiAnswerer(options(generate_emulator)))
    assert status.failed == 2 and generate_emulator.count("generate") == 0
    assert rows[0]["response"] is None
    assert rows[0]["status"].startswith('Bad Request: {"error": {"code": 400, "message": "Invalid JSON payload received. '
                                        'Unknown name \\"bogus\\"')


@pytest.mark.emulator
def test_429_and_5xx_are_retried_4xx_are_not(wh, generate_emulator):
    """The first calls get 429, 503 and 500 and are retried; a row the service refuses with 400 fails at
    once with Vertex's status text (`<reason>: <google.rpc error JSON>`)."""
    generate_emulator.faults = [429, 503, 500]
    generate_emulator.row_rules = [RowRule.parse({"when_prompt_contains": "number 3", "outcome": "bad_request"})]
    make_input(wh, 4)
    answerer = GenaiAnswerer(options(generate_emulator, concurrency=1))
    status, rows = run_job(wh, answerer)
    assert (status.successful, status.failed) == (3, 1)
    assert answerer.retries == 3 and generate_emulator.count("generate") == 4 + 3
    bad = next(r for r in rows if r["id"] == 3)
    assert bad["response"] is None
    assert json.loads(bad["status"].split(": ", 1)[1]) == {
        "error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}
    assert bad["status"].startswith("Bad Request: ")


@pytest.mark.emulator
def test_a_call_still_failing_after_max_attempts_is_a_retryable_row(wh, generate_emulator):
    generate_emulator.faults = [429, 429]
    make_input(wh, 1)
    status, rows = run_job(wh, GenaiAnswerer(options(generate_emulator, max_attempts=2)))
    assert status.failed == 1
    assert rows[0]["status"].startswith('Too Many Requests: {"error": {"code": 429')
    assert "RESOURCE_EXHAUSTED" in rows[0]["status"]


@pytest.mark.emulator
def test_a_dropped_connection_is_retried(wh, generate_emulator):
    generate_emulator.faults = ["drop"]
    make_input(wh, 1)
    status, rows = run_job(wh, GenaiAnswerer(options(generate_emulator)))
    assert status.successful == 1 and generate_emulator.count("generate") == 2


@pytest.mark.emulator
def test_retry_after_is_honoured(wh, generate_emulator):
    """A Retry-After header (seconds) or a RetryInfo detail decides the wait; without either, backoff."""
    generate_emulator.faults = [(429, {"Retry-After": "7"}), 429, 503]
    generate_emulator.retry_info = "13s"
    waits: list[float] = []
    make_input(wh, 1)
    answerer = GenaiAnswerer(options(generate_emulator, concurrency=1, max_attempts=5, backoff_initial=0.5,
                                     backoff_max=2.0), sleep=waits.append)
    status, _ = run_job(wh, answerer)
    assert status.successful == 1
    assert waits[:2] == [7.0, 13.0]
    assert 0.0 <= waits[2] <= 2.0  # a 503 without a hint: exponential backoff, capped


def test_server_delay_reads_http_dates():
    from email.utils import format_datetime
    from datetime import datetime, timedelta, timezone

    class Error:
        pass

    from google.genai import errors

    class Response:
        headers = {"retry-after": format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)}

    err = errors.ClientError(429, {"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}}, Response())
    assert 25 <= server_delay(err) <= 30
    assert server_delay(ValueError("x")) is None


@pytest.mark.emulator
def test_concurrency_is_bounded(wh, generate_emulator):
    """With the gate closed, calls pile up at the emulator: exactly `concurrency` at once, never more."""
    generate_emulator.gate.clear()
    make_input(wh, 12)
    answerer = GenaiAnswerer(options(generate_emulator, concurrency=3))
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(out=run_job(wh, answerer)))
    worker.start()
    assert generate_emulator.wait_in_flight(3)
    generate_emulator.gate.set()
    worker.join(120)
    status, rows = result["out"]
    assert status.successful == 12
    assert generate_emulator.max_in_flight == 3


def test_request_call_maps_generation_config():
    contents, config = request_call({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                     "system_instruction": {"parts": [{"text": "s"}]},
                                     "generationConfig": {"topK": 3, "candidate_count": 1}})
    assert contents == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert (config.top_k, config.candidate_count, config.system_instruction.parts[0].text) == (3, 1, "s")
    with pytest.raises(ValueError, match="generationConfig"):
        request_call({"contents": [], "generationConfig": "x"})
    with pytest.raises(ValueError, match="Invalid JSON payload"):
        request_call({"contents": [], "generationConfig": {"temprature": 1}})


def test_options_from_settings_and_environment():
    vertex = online_options({"project": "p", "location": "europe-west4"}, where="t", environ={})
    assert (vertex.api, vertex.project, vertex.location) == ("vertex", "p", "europe-west4")
    gemini = online_options({"api_key_env": "MY_KEY"}, where="t", environ={"MY_KEY": "k"})
    assert (gemini.api, gemini.api_key) == ("gemini", "k")
    assert online_options({}, where="t", environ={"GEMINI_API_KEY": "g"}).api == "gemini"
    assert online_options({}, where="t", environ={"GOOGLE_CLOUD_PROJECT": "p", "GOOGLE_CLOUD_LOCATION": "l"}).api == "vertex"
    with pytest.raises(ConfigError, match="online mode needs who answers"):
        online_options({}, where="target local", environ={})
    with pytest.raises(ConfigError, match=r"\$MISSING, which is not set"):
        online_options({"api_key_env": "MISSING"}, where="t", environ={})


@pytest.mark.emulator
def test_check_makes_one_real_call(generate_emulator):
    answerer = GenaiAnswerer(options(generate_emulator))
    assert "answered" in answerer.check() and generate_emulator.count("list") == 1
    nothing = GenerateEmulator().start()
    url = nothing.url
    nothing.stop()  # a port nobody listens on any more
    with pytest.raises(ExecutionError, match="did not answer"):
        GenaiAnswerer(dataclasses.replace(options(generate_emulator), base_url=url, timeout=5.0)).check()


@pytest.mark.emulator
@pytest.mark.parametrize("api", ["vertex", "gemini"])
def test_embedding_jobs_get_the_batch_predictions_shape(wh, generate_emulator, api):
    """An embedding job (content in, `predictions` out) through `embed_content`: the vector of the batch
    emulator's embedding model for the same text, in Vertex's batch `predictions` JSON."""
    from tests.emulators import embeddings

    wh.execute("""create or replace table `main`.`inp` as
        select i as id, to_hex(sha256(cast(i as string))) as request_hash,
               concat('a review, number ', cast(i as string)) as content, 'RETRIEVAL_DOCUMENT' as task_type
        from unnest(generate_array(1, 3)) as i""")
    backend = OnlineBackend(wh, GenaiAnswerer(options(generate_emulator, api)))
    try:
        status = backend.submit(JobSpec("text-embedding-005", wh.relation("inp"), wh.relation("out"), "job",
                                        model_parameters={"outputDimensionality": 16}))
        status = backend.join(status.name, 120)
    finally:
        backend.close()
    assert (status.successful, status.failed) == (3, 0), status
    assert [c.name for c in wh.columns(wh.relation("out"))][-2:] == ["predictions", "status"]
    for row in wh.query_arrow("select * from `main`.`out` order by id").to_pylist():
        expected = embeddings.answer({"content": row["content"]}, "text-embedding-005", {"outputDimensionality": 16}, [])
        got = json.loads(row["predictions"])
        assert got[0]["embeddings"]["values"] == pytest.approx(expected.response[0]["embeddings"]["values"])
        if api == "vertex":
            assert got == expected.response  # statistics as Vertex counts them
    call = generate_emulator.answered("embed")[0]
    if api == "vertex":
        assert call.path.endswith("/publishers/google/models/text-embedding-005:predict")
        assert call.body["instances"][0]["task_type"] == "RETRIEVAL_DOCUMENT"
        assert call.body["parameters"] == {"outputDimensionality": 16}
