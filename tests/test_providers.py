"""Providers of the local executor: the deterministic mock and the OpenAI-compatible HTTP provider."""

from __future__ import annotations

import json
import pickle
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from batchflow.batch.providers import Provider, ProviderResult, make_provider
from batchflow.batch.providers import mock as mock_module
from batchflow.batch.providers.base import error_status, generate_json, parse_request, row_error
from batchflow.batch.providers.mock import MockProvider, model_version
from batchflow.batch.providers.openai import OpenAIProvider, to_chat_request, to_json_schema
from batchflow.errors import ConfigError
from batchflow.requests import request_hash

MODEL = "gemini-2.5-flash"
STATUS_RE = r'^[A-Z][A-Za-z ]+: \{"error": \{"code": \d+, "message": ".*", "status": "[A-Z_]+"\}\}$'


def req(text: str, **extra) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def rpc(status: str) -> dict:
    """The google.rpc error JSON of a status text."""
    reason, _, body = status.partition(": ")
    return {"reason": reason, **json.loads(body)["error"]}


# -- mock ----------------------------------------------------------------------------------------


def test_mock_text_answer_shape():
    [result] = MockProvider({}).generate(MODEL, [req("Classify the sentiment of: I love this blender")])
    assert isinstance(result, ProviderResult) and result.status == "" and result.ok
    r = result.response
    cand = r["candidates"][0]
    assert cand["content"]["role"] == "model"
    text = cand["content"]["parts"][0]["text"]
    assert "I love this blender" in text
    assert cand["finishReason"] == "STOP"
    assert isinstance(cand["avgLogprobs"], float) and cand["avgLogprobs"] < 0
    assert len(cand["safetyRatings"]) == 4
    for rating in cand["safetyRatings"]:
        assert set(rating) == {"category", "probability", "probabilityScore", "severity", "severityScore"}
        assert rating["probability"] == "NEGLIGIBLE" and rating["category"].startswith("HARM_CATEGORY_")
    usage = r["usageMetadata"]
    assert usage["promptTokenCount"] == len("Classify the sentiment of: I love this blender") // 4 + 1
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert usage["trafficType"] == "ON_DEMAND"
    assert r["modelVersion"] == "gemini-2.5-flash-001"
    assert r["responseId"] and r["createTime"].endswith("Z")
    assert json.loads(result.response_text()) == r


def test_mock_is_deterministic_and_position_independent():
    requests = [req(f"prompt {i}") for i in range(30)]
    a = MockProvider({}).generate(MODEL, requests)
    b = MockProvider({}).generate(MODEL, list(reversed(requests)))
    assert [x.response_text() for x in a] == [x.response_text() for x in reversed(b)]
    # key order of the request does not matter; the model does
    reordered = {"contents": [{"parts": [{"text": "prompt 0"}], "role": "user"}]}
    assert MockProvider({}).generate(MODEL, [reordered])[0].response_text() == a[0].response_text()
    other = MockProvider({}).generate("gemini-2.5-pro", [requests[0]])[0].response
    assert other["modelVersion"] == "gemini-2.5-pro-001" and other != a[0].response
    assert len({x.response_text() for x in a}) == 30


def test_model_version():
    assert model_version("gemini-2.5-flash") == "gemini-2.5-flash-001"
    assert model_version("gemini-1.5-flash-002") == "gemini-1.5-flash-002"
    assert model_version("publishers/google/models/gemini-2.0-flash") == "gemini-2.0-flash-001"


def test_mock_json_mode_without_schema():
    gc = {"responseMimeType": "application/json"}
    [r] = MockProvider({}).generate(MODEL, [req("Rate this", generationConfig=gc)])
    value = json.loads(r.response["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(value, dict) and value


SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "sentiment": {"type": "STRING", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "NUMBER", "minimum": 0, "maximum": 1},
        "stars": {"type": "INTEGER", "minimum": 1, "maximum": 5},
        "spam": {"type": "BOOLEAN"},
        "topics": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 1},
        "detail": {"type": "OBJECT", "properties": {"reason": {"type": "STRING"}}, "required": ["reason"]},
    },
    "required": ["sentiment", "score"],
    "propertyOrdering": ["sentiment", "score", "stars", "spam", "topics", "detail"],
}


@pytest.mark.parametrize("snake", [False, True])
def test_mock_json_mode_follows_the_schema(snake):
    if snake:
        gc = {"response_mime_type": "application/json", "response_schema": SCHEMA}
        requests = [req(f"review {i}", generation_config=gc) for i in range(40)]
    else:
        gc = {"responseMimeType": "application/json", "responseSchema": SCHEMA}
        requests = [req(f"review {i}", generationConfig=gc) for i in range(40)]
    seen = set()
    for result in MockProvider({}).generate(MODEL, requests):
        value = json.loads(result.response["candidates"][0]["content"]["parts"][0]["text"])
        assert list(value) == SCHEMA["propertyOrdering"]
        assert value["sentiment"] in ("positive", "negative", "neutral")
        assert 0 <= value["score"] <= 1 and isinstance(value["score"], float)
        assert 1 <= value["stars"] <= 5 and isinstance(value["stars"], int)
        assert isinstance(value["spam"], bool)
        assert len(value["topics"]) >= 1 and all(isinstance(t, str) for t in value["topics"])
        assert isinstance(value["detail"]["reason"], str)
        seen.add(value["sentiment"])
    assert len(seen) > 1  # enum values are spread over rows


def test_mock_json_mode_lowercase_and_json_schema():
    schema = {"type": "array", "items": {"type": "object", "properties": {"label": {"type": ["string", "null"],
              "enum": ["a", "b"]}, "n": {"type": "integer"}}}, "maxItems": 2}
    gc = {"responseMimeType": "application/json", "responseJsonSchema": schema}
    [r] = MockProvider({}).generate(MODEL, [req("x", generationConfig=gc)])
    value = json.loads(r.response["candidates"][0]["content"]["parts"][0]["text"])
    assert isinstance(value, list) and 1 <= len(value) <= 2
    assert all(v["label"] in ("a", "b") and isinstance(v["n"], int) for v in value)


def test_mock_failures_by_prompt():
    config = {
        "failures": [
            {"when_prompt_contains": "banana", "outcome": "recitation"},
            {"when_prompt_contains": "poison", "outcome": "safety"},
            {"when_prompt_contains": "forbidden", "outcome": "prompt_blocked"},
            {"when_prompt_contains": "essay", "outcome": "max_tokens"},
            {"when_prompt_contains": "broken", "outcome": "row_error"},
            {"when_prompt_contains": "busy", "outcome": "transient_error"},
        ]
    }
    prompts = ["banana bread", "poison", "forbidden", "long essay please about many things", "broken", "busy", "ok"]
    rec, saf, blk, mx, err, busy, ok = MockProvider(config).generate(MODEL, [req(p) for p in prompts])

    cand = rec.response["candidates"][0]
    assert rec.status == "" and cand["finishReason"] == "RECITATION" and "content" not in cand
    assert cand["citationMetadata"]["citations"][0]["uri"].startswith("https://")

    cand = saf.response["candidates"][0]
    assert saf.status == "" and cand["finishReason"] == "SAFETY" and "content" not in cand
    assert [x.get("blocked") for x in cand["safetyRatings"]].count(True) == 1

    assert "candidates" not in blk.response
    assert blk.response["promptFeedback"]["blockReason"] == "SAFETY"
    assert list(blk.response["usageMetadata"]) == ["promptTokenCount"]

    cand = mx.response["candidates"][0]
    assert cand["finishReason"] == "MAX_TOKENS"
    full = MockProvider({}).generate(MODEL, [req(prompts[3])])[0].response["candidates"][0]["content"]["parts"][0]
    assert full["text"].startswith(cand["content"]["parts"][0]["text"])
    assert len(cand["content"]["parts"][0]["text"]) < len(full["text"])

    assert err.response is None and err.response_text() is None
    assert rpc(err.status) == {"reason": "Bad Request", "code": 400, "status": "INVALID_ARGUMENT",
                               "message": rpc(err.status)["message"]}
    assert busy.response is None
    assert busy.status.startswith("Too Many Requests: ")
    assert rpc(busy.status)["code"] == 429 and rpc(busy.status)["status"] == "RESOURCE_EXHAUSTED"
    assert ok.status == "" and ok.response["candidates"][0]["finishReason"] == "STOP"


def test_mock_every_rule_is_the_hash_modulo():
    requests = [req(f"row {i}") for i in range(500)]
    results = MockProvider({"failures": [{"every": 7, "outcome": "row_error"}]}).generate(MODEL, requests)
    expected = [int(request_hash(r, MODEL)[:16], 16) % 7 == 0 for r in requests]
    assert [bool(x.status) for x in results] == expected
    assert 30 < sum(expected) < 120


def test_mock_rule_selectors_and_limit():
    config = {"failures": [{"when_prompt_contains": "a", "when_model": "gemini-2.5-pro", "outcome": "row_error"},
                           {"when_prompt_contains": "b", "limit": 2, "outcome": "transient_error"}]}
    p = MockProvider(config)
    assert p.generate(MODEL, [req("a")])[0].ok
    assert not p.generate("gemini-2.5-pro", [req("a")])[0].ok
    outcomes = [r.ok for r in p.generate(MODEL, [req("b")] * 4)]
    assert outcomes == [False, False, True, True]


def test_mock_natural_max_tokens():
    gc = {"maxOutputTokens": 2}
    [r] = MockProvider({}).generate(MODEL, [req("tell me everything about the sea", generationConfig=gc)])
    cand = r.response["candidates"][0]
    assert cand["finishReason"] == "MAX_TOKENS" and len(cand["content"]["parts"][0]["text"]) <= 8
    assert r.response["usageMetadata"]["candidatesTokenCount"] == 2


def test_mock_invalid_rows_are_row_errors_not_exceptions():
    bad = [{"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, {"nope": 1}, {"contents": []}]
    results = MockProvider({}).generate(MODEL, bad + [req("fine")])
    assert [r.ok for r in results] == [False, False, False, True]
    assert "contents[0]" in rpc(results[0].status)["message"]
    for r in results[:3]:
        assert rpc(r.status)["code"] == 400


def test_mock_config_errors():
    with pytest.raises(ConfigError, match="outcome"):
        MockProvider({"failures": [{"every": 3, "outcome": "explode"}]})
    with pytest.raises(ConfigError, match="every"):
        MockProvider({"failures": [{"every": 0, "outcome": "row_error"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        MockProvider({"failures": [{"evry": 3, "outcome": "row_error"}]})


def test_mock_traffic_type_and_legacy_parts():
    legacy = {"contents": [{"role": "user", "parts": {"text": "Give me a recipe for banana bread."}}],
              "system_instruction": {"parts": [{"text": "You are a chef."}]}}
    [r] = MockProvider({"traffic_type": "BATCH"}).generate(MODEL, [legacy])
    assert r.ok and r.response["usageMetadata"]["trafficType"] == "BATCH"
    assert "banana bread" in r.response["candidates"][0]["content"]["parts"][0]["text"]


def mixed_requests() -> list:
    """Requests exercising every branch of the mock: modes, schemas, failures, invalid rows."""
    schema_gc = {"responseMimeType": "application/json", "responseSchema": SCHEMA, "maxOutputTokens": 30}
    return [
        req("Classify the sentiment of: I love this blender"),
        req("Rate this", generationConfig={"responseMimeType": "application/json"}),
        *[req(f"review {i}", generationConfig=schema_gc) for i in range(20)],
        *[req(f"review {i}", generation_config={"response_mime_type": "application/json",
                                                "response_schema": SCHEMA}) for i in range(5)],
        req("x", generationConfig={"responseMimeType": "application/json", "responseJsonSchema":
                                   {"type": "array", "items": {"type": "string", "format": "date"}}}),
        req("tell me everything about the sea", generationConfig={"maxOutputTokens": 2}),
        req("banana bread"), req("poison"), req("forbidden"), req("long essay please"), req("broken"), req("busy"),
        req("ünïcödé \"quotes\" \\ and\nnewlines", systemInstruction={"parts": [{"text": "Be brief."}]}),
        {"contents": [{"role": "user", "parts": {"text": "legacy part"}}], "system_instruction": "a plain string"},
        {"contents": [{"role": "system", "parts": [{"text": "x"}]}]},
        {"nope": 1},
        {"contents": []},
        req("schema is odd", generationConfig={"responseMimeType": "application/json",
                                               "responseSchema": {"enum": "abc"}}),
    ]


FAILURES = {"failures": [
    {"when_prompt_contains": "banana", "outcome": "recitation"},
    {"when_prompt_contains": "poison", "outcome": "safety"},
    {"when_prompt_contains": "forbidden", "outcome": "prompt_blocked"},
    {"when_prompt_contains": "essay", "outcome": "max_tokens"},
    {"when_prompt_contains": "broken", "outcome": "row_error"},
    {"when_prompt_contains": "busy", "outcome": "transient_error"},
    {"every": 11, "outcome": "transient_error"},
]}


def test_mock_generate_json_answers_byte_for_byte_as_generate():
    requests = mixed_requests()
    expected = MockProvider(FAILURES).generate(MODEL, requests)
    texts = [json.dumps(r, ensure_ascii=False, indent=1) for r in requests]  # any spelling of the same JSON
    texts += [None, "{not json", "[1, 2]", '{"contents": [{"role": "user", "parts": [{"text": "nan"}]}], "x": NaN}']
    provider = MockProvider(FAILURES)
    for _ in range(2):  # a second pass answers from the cached per-generationConfig plans
        responses, statuses = provider.generate_json(MODEL, texts)
        assert responses[: len(requests)] == [e.response_text() for e in expected]
        assert statuses[: len(requests)] == [e.status for e in expected]
    assert sum(1 for s in statuses if s) >= 8 and all(r is None for r, s in zip(responses, statuses) if s)
    null, bad, array, nan = statuses[len(requests):]
    assert null == parse_request(None)[1] and "NULL" in rpc(null)["message"] and rpc(null)["code"] == 400
    assert rpc(bad)["message"].startswith("Invalid JSON payload received. Expecting property name")
    assert rpc(array)["message"] == "Invalid JSON payload received. Request is not a JSON object."
    # text json accepts and orjson refuses (NaN) is still read, as json.loads reads it
    assert nan == "" and responses[-1] == MockProvider(FAILURES).generate(MODEL, [json.loads(texts[-1])])[0].response_text()


def test_mock_generate_json_reuses_the_given_request_hashes():
    from batchflow.requests import request_hash

    requests = [req(f"review {i}") for i in range(5)] + [req("broken")]
    texts = [json.dumps(r) for r in requests]
    provider = MockProvider(FAILURES)
    plain = provider.generate_json(MODEL, texts)
    # the right hashes (what the lifecycle's request_hash column holds) change nothing
    assert provider.generate_json(MODEL, texts, [request_hash(r, MODEL) for r in requests]) == plain
    # a given hash is what the answer derives from; a missing one is computed
    fake = "ab" * 32
    responses, statuses = provider.generate_json(MODEL, texts, [fake, None, None, None, None, None])
    assert json.loads(responses[0])["responseId"] == fake[16:40] != json.loads(plain[0][0])["responseId"]
    assert responses[1:] == plain[0][1:] and statuses == plain[1]


def test_parse_request():
    assert parse_request('{"a": 1}') == ({"a": 1}, "")
    assert parse_request(b'{"a": [1.5, "\\u00e9"]}') == ({"a": [1.5, "é"]}, "")
    assert parse_request(None)[0] is None and re.match(STATUS_RE, parse_request(None)[1])
    request, status = parse_request("[1]")
    assert request is None and rpc(status)["code"] == 400
    request, status = parse_request("{")
    assert request is None and rpc(status)["status"] == "INVALID_ARGUMENT" and re.match(STATUS_RE, status)


def random_schema(r: random.Random, depth: int = 0):
    """Schemas of every shape `_value` handles, odd ones included (bad bounds, enums that are strings,
    duplicate orderings, NaN, non-dict items, deep nesting)."""
    kinds = ["OBJECT", "ARRAY", "STRING", "INTEGER", "NUMBER", "BOOLEAN", "NULL", "string", "object", None,
             "enum", "const", "anyOf", "date", "date-time", "typed-list", "not-a-dict"]
    kind = r.choice(kinds if depth < 5 else kinds[2:])
    if kind == "not-a-dict":
        return r.choice(["x", 3, ["a"], None, True])
    if kind == "enum":
        return {"enum": r.choice([["a", 'b"q', "ü"], [1, 2.5, None, True, {"x": [1]}], "abc", [float("nan")], []])}
    if kind == "const":
        return {"const": r.choice(["c", 1, {"a": [1, 2]}, None])}
    if kind == "anyOf":
        return {r.choice(["anyOf", "any_of", "oneOf"]): [r.choice([{"type": "NULL"}, random_schema(r, depth + 1)])
                                                           for _ in range(r.randint(1, 3))]}
    if kind in ("date", "date-time"):
        return {"type": "STRING", "format": kind}
    if kind == "typed-list":
        return {"type": r.choice([["null", "integer"], ["null"], "DATE", ""]), "minimum": r.choice([None, "3", 2.7, -5])}
    schema: dict = {"type": kind} if kind else {}
    if kind in ("OBJECT", "object", None) and r.random() < 0.8:
        props = {f'k{i}"\\é': random_schema(r, depth + 1) for i in range(r.randint(0, 4))}
        schema["properties"] = props
        if r.random() < 0.5:
            order = list(props)[::-1][:2] + r.choice([[], ["missing"], [3], list(props)[:1]])
            schema[r.choice(["propertyOrdering", "property_ordering"])] = order
    if kind == "ARRAY":
        if r.random() < 0.8:
            schema["items"] = random_schema(r, depth + 1)
        if r.random() < 0.5:
            schema[r.choice(["minItems", "min_items"])] = r.choice([0, 1, 2, -1, "2", None, 5])
        if r.random() < 0.5:
            schema[r.choice(["maxItems", "max_items"])] = r.choice([0, 1, 4, 10])
    if kind in ("INTEGER", "NUMBER"):
        if r.random() < 0.5:
            schema["minimum"] = r.choice([0, -10, 3.5, 1e308, "x", 1e200, float("inf")])
        if r.random() < 0.5:
            schema["maximum"] = r.choice([0, 10, 2.5, 1e308, -1e308])
    return schema


def test_mock_compiled_schema_writer_equals_the_reference_walk():
    """The compiled per-schema writer gives `_value` + `_dump_answer`'s text (or error) for every seed."""
    r = random.Random(20261122)
    schemas = [SCHEMA, {"type": "OBJECT", "properties": {"sentiment": {"type": "STRING", "enum": ["a", "b"]}}}]
    schemas += [random_schema(r) for _ in range(1500)]
    deep = {"type": "STRING"}
    for _ in range(12):
        deep = {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {"a": deep}}}
    schemas.append(deep)
    compiled_count = 0
    for schema in schemas:
        fast, reference = mock_module._compiled(schema), mock_module._walker(schema)
        compiled_count += getattr(fast, "__name__", "") == "write"
        for seed in (0, 1, 2**63 + 12345, 987654321987654321, 2**64 - 1):
            try:
                got = ("ok", fast(seed))
            except Exception as exc:  # noqa: BLE001
                got = ("error", type(exc).__name__, str(exc))
            try:
                want = ("ok", reference(seed))
            except Exception as exc:  # noqa: BLE001
                want = ("error", type(exc).__name__, str(exc))
            assert got == want, (schema, seed)
    assert compiled_count > len(schemas) * 0.8  # most shapes take the fast path


def test_mock_copies_answer_alike_and_cpu_bound():
    provider = MockProvider(FAILURES)
    requests = mixed_requests()
    provider.generate_json(MODEL, [json.dumps(r) for r in requests])  # fills the plan cache
    copy = pickle.loads(pickle.dumps(provider))  # what a worker process receives
    assert [x.response_text() for x in copy.generate(MODEL, requests)] == \
           [x.response_text() for x in provider.generate(MODEL, requests)]
    assert provider.cpu_bound
    limited = MockProvider({"failures": [{"when_prompt_contains": "b", "limit": 2, "outcome": "transient_error"}]})
    assert not limited.cpu_bound  # the limit is counted by one provider: no copies
    assert pickle.loads(pickle.dumps(limited)).rules[0].limit == 2


def test_generic_generate_json_for_providers_without_one():
    class Echo:
        name = "echo"

        def generate(self, model, requests):
            return [ProviderResult({"n": len(r["contents"])}) if r.get("contents") else row_error(400, "no contents")
                    for r in requests]

    responses, statuses = generate_json(Echo(), MODEL, ['{"contents": [1, 2]}', None, '{"x": 1}', "nope"])
    assert responses == ['{"n":2}', None, None, None]
    assert statuses[0] == "" and "NULL" in statuses[1] and "no contents" in statuses[2]
    assert statuses[3].startswith("Bad Request: ") and "Invalid JSON payload" in statuses[3]


def test_error_status_format():
    assert error_status(400, "bad", "INVALID_ARGUMENT") == (
        'Bad Request: {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}'
    )
    assert error_status(429, "slow down").startswith('Too Many Requests: {"error": {"code": 429')
    assert error_status(503, "x").endswith('"status": "UNAVAILABLE"}}')
    for code in (400, 404, 429, 500, 503, 504):
        assert re.match(STATUS_RE, error_status(code, "m")), code


# -- make_provider -------------------------------------------------------------------------------


def test_make_provider():
    p = make_provider({"provider": "mock", "mock": {"failures": [{"every": 2, "outcome": "row_error"}]}})
    assert p.name == "mock" and len(p.rules) == 1
    assert make_provider({}).name == "mock"
    p = make_provider({"provider": "openai", "base_url": "http://127.0.0.1:1/v1", "openai": {"timeout": 3}})
    assert p.name == "openai" and p.timeout == 3 and p.base_url == "http://127.0.0.1:1/v1"
    p.close()
    with pytest.raises(ConfigError, match="mock, openai"):
        make_provider({"provider": "anthropic"})
    with pytest.raises(ConfigError, match="base_url"):
        make_provider({"provider": "openai"})


def test_providers_satisfy_the_protocol():
    def use(p: Provider) -> str:
        return p.name

    assert use(MockProvider({})) == "mock"


# -- openai-compatible provider ------------------------------------------------------------------


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 that records requests and answers from a script."""

    def __init__(self):
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.script: list[tuple[int, dict | str]] = []  # consumed in order; then `default`
        self.default: tuple[int, dict | str] | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.received.append(body)
                    server.headers.append(dict(self.headers))
                    code, answer = server.script.pop(0) if server.script else (server.default or (200, None))
                if answer is None:
                    answer = server.echo(body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @staticmethod
    def echo(body: dict) -> dict:
        last = body["messages"][-1]["content"]
        return {
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "llama3.2:1b",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {last}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def fast(server: ChatServer, **extra) -> OpenAIProvider:
    return OpenAIProvider({"base_url": server.base_url, "backoff_initial": 0.01, "backoff_max": 0.02, **extra})


def test_openai_round_trip(server):
    p = fast(server, api_key="sk-test")
    request = {
        "systemInstruction": {"parts": [{"text": "You are a careful annotator."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": {"text": "Classify: great"}},
        ],
        "generationConfig": {"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 64,
                             "stopSequences": ["END"], "candidateCount": 1, "responseMimeType": "application/json"},
    }
    [result] = p.generate("gemini-2.5-flash", [request])
    assert result.ok, result.status
    [sent] = server.received
    assert sent["model"] == "gemini-2.5-flash"
    assert sent["messages"] == [
        {"role": "system", "content": "You are a careful annotator."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Classify: great"},
    ]
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.9 and sent["max_tokens"] == 64
    assert sent["stop"] == ["END"] and sent["n"] == 1
    assert sent["response_format"] == {"type": "json_object"}
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert result.response == {
        "candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "echo: Classify: great"}]},
                        "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17,
                          "trafficType": "ON_DEMAND"},
        "modelVersion": "llama3.2:1b",
        "responseId": "chatcmpl-123",
        "createTime": "2023-11-14T22:13:20.000000Z",
    }
    p.close()


def test_openai_json_schema_model_override_and_finish_reasons(server):
    server.script = [
        (200, {"model": "m", "choices": [{"index": 0, "message": {"content": "{\"a\": 1"}, "finish_reason": "length"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
        (200, {"model": "m", "choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "content_filter"}]}),
    ]
    p = fast(server, model="qwen2.5:0.5b", concurrency=1)
    gc = {"response_mime_type": "application/json",
          "response_schema": {"type": "OBJECT", "properties": {"label": {"type": "STRING", "nullable": True,
                              "enum": ["a", "b"]}}, "required": ["label"], "propertyOrdering": ["label"]}}
    length, blocked = p.generate("gemini-2.5-flash", [req("x", generation_config=gc), req("y")])
    sent = server.received[0]
    assert sent["model"] == "qwen2.5:0.5b"
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": {
        "type": "object", "properties": {"label": {"type": ["string", "null"], "enum": ["a", "b"]}},
        "required": ["label"]}}}
    assert length.response["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert length.response["candidates"][0]["content"]["parts"][0]["text"] == '{"a": 1'
    cand = blocked.response["candidates"][0]
    assert cand["finishReason"] == "SAFETY" and "content" not in cand
    assert "response_format" not in server.received[1]


def test_openai_retries_429_then_succeeds(server):
    server.script = [(429, {"error": {"message": "rate limited", "type": "rate_limit"}})]
    [result] = fast(server).generate(MODEL, [req("hello")])
    assert result.ok and len(server.received) == 2
    assert result.response["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello"


def test_openai_500_forever_is_a_row_error(server):
    server.default = (500, {"error": {"message": "model crashed"}})
    [result] = fast(server, max_attempts=3).generate(MODEL, [req("hello")])
    assert result.response is None
    assert rpc(result.status) == {"reason": "Internal Server Error", "code": 500, "message": "model crashed",
                                  "status": "INTERNAL"}
    assert len(server.received) == 3


def test_openai_429_forever_and_400_not_retried(server):
    server.default = (429, "slow down")
    [result] = fast(server, max_attempts=2).generate(MODEL, [req("hello")])
    assert result.status.startswith("Too Many Requests: ")
    assert rpc(result.status)["status"] == "RESOURCE_EXHAUSTED" and rpc(result.status)["message"] == "slow down"
    server.received.clear()
    server.default = (400, {"error": {"message": "bad input"}})
    [result] = fast(server).generate(MODEL, [req("hello")])
    assert rpc(result.status) == {"reason": "Bad Request", "code": 400, "message": "bad input",
                                  "status": "INVALID_ARGUMENT"}
    assert len(server.received) == 1


def test_openai_connection_refused_is_a_row_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider({"base_url": f"http://127.0.0.1:{port}/v1", "max_attempts": 2, "backoff_initial": 0.01})
    results = p.generate(MODEL, [req("a"), req("b")])
    for r in results:
        assert r.response is None
        assert r.status.startswith("Service Unavailable: ")
        assert rpc(r.status)["code"] == 503 and rpc(r.status)["status"] == "UNAVAILABLE"


def test_openai_unsupported_parts_are_row_errors(server):
    file_req = {"contents": [{"role": "user", "parts": [{"text": "describe"},
                {"fileData": {"fileUri": "gs://b/cat.png", "mimeType": "image/png"}}]}]}
    bad_role = {"contents": [{"role": "system", "parts": [{"text": "x"}]}]}
    tools = req("x", tools=[{"googleSearch": {}}])
    r1, r2, r3, ok = fast(server).generate(MODEL, [file_req, bad_role, tools, req("fine")])
    assert "fileData" in rpc(r1.status)["message"] and rpc(r1.status)["code"] == 400
    assert "valid role" in rpc(r2.status)["message"]
    assert "tools" in rpc(r3.status)["message"]
    assert ok.ok
    assert len(server.received) == 1  # only the valid row reached the endpoint


def test_openai_concurrency_keeps_order(server):
    results = fast(server, concurrency=4).generate(MODEL, [req(f"n{i}") for i in range(20)])
    assert [r.response["candidates"][0]["content"]["parts"][0]["text"] for r in results] == [
        f"echo: n{i}" for i in range(20)
    ]


def test_inline_images_become_data_urls():
    body = to_chat_request({"contents": [{"role": "user", "parts": [
        {"text": "what is this"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}, "m")
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


def test_to_json_schema_nesting():
    assert to_json_schema({"type": "ARRAY", "items": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}}}) == {
        "type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}
