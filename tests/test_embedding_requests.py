"""Embedding batch models, the fast parts: the request macro, the input contract, the flatteners on
DuckDB (both the DuckDB macros and the BigQuery SQL transpiled), the mock's vectors, the OpenAI-
compatible provider's `/embeddings` against a loopback server, and the compile-time refusal of models
whose batch contract is not BigQuery."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
import sqlglot

import batchflow
from batchflow.batch.providers.mock import MockProvider, embedding_token_count, mock_embedding
from batchflow.batch.providers.openai import OpenAIProvider
from batchflow.requests import (
    batch_model_problem,
    embedding_request_problem,
    is_embedding_model,
    reserved_column_problems,
    valid_request_hash,
)
from batchflow.sql import to_duckdb
from tests.conftest import CLI, write
from tests.emulators import embeddings as emulator_embeddings

MACROS = "\n".join(p.read_text() for p in sorted((Path(batchflow.__file__).parent / "macros").glob("*.sql")))


class _Raise:
    @staticmethod
    def raise_compiler_error(message: str) -> None:
        raise ValueError(message)


def render(template: str, duckdb_target: bool = False) -> str:
    context = {"exceptions": _Raise()}
    if duckdb_target:
        context["target"] = {"type": "duckdb"}
    return jinja2.Environment().from_string(MACROS + "\n" + template).render(**context).strip()


# -- the request macro -------------------------------------------------------------------------------
def test_embedding_request_builds_the_documented_json(conn) -> None:
    sql = render("select {{ embedding_request('body', task_type='retrieval_document', title='name', "
                 "output_dimensionality=256, auto_truncate=false) }} as request from t")
    sqlglot.parse_one(sql, read="bigquery")  # one valid BigQuery statement
    conn.execute("create table t as select 'A good pan.' as body, 'Skillet' as name")
    (request,), = conn.execute(to_duckdb(sql)).fetchall()
    assert json.loads(request) == {"content": "A good pan.", "task_type": "RETRIEVAL_DOCUMENT", "title": "Skillet",
                                   "parameters": {"outputDimensionality": 256, "autoTruncate": False}}
    (plain,), = conn.execute(to_duckdb(render("select {{ embedding_request('body') }} from t"))).fetchall()
    assert json.loads(plain) == {"content": "A good pan."}


@pytest.mark.parametrize("call, message", [
    ("embedding_request('body', task_type='RETRIEVAL')", "task_type RETRIEVAL is not one of"),
    ("embedding_request('body', title='name')", "title is only accepted with task_type='RETRIEVAL_DOCUMENT'"),
    ("embedding_request('body', output_dimensionality=1024)", "from 1 to 768, got 1024"),
    ("embedding_request('body', output_dimensionality=0)", "from 1 to 768, got 0"),
    ("embedding_request('body', auto_truncate='no')", "auto_truncate must be true or false"),
])
def test_embedding_request_refuses_bad_constants_at_compile_time(call: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render("select {{ " + call + " }}")


# -- the input contract --------------------------------------------------------------------------------
CASES = [
    ('{"content": "A good pan."}', None),
    ('{"content": "x", "task_type": "RETRIEVAL_DOCUMENT", "title": "T", "parameters": {"outputDimensionality": 8}}', None),
    (None, "request is NULL"),
    ("{not json", "request is not valid JSON"),
    ('"text"', "request is not a JSON object (got string)"),
    ('{"content": ["a", "b"]}', "`content` is an array of 2 value(s): an embedding row embeds one text"),
    ('{"content": 7}', "`content` is not a string (got number)"),
    ('{"content": "   "}', "`content` is empty"),
    ('{"task_type": "CLUSTERING"}', "request has no `content`"),
    ('{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}', "request has `contents`, a Gemini request"),
    ('{"content": "x", "tasktype": "CLUSTERING"}', "unknown key \"tasktype\"; did you mean 'task_type'?"),
    ('{"content": "x", "task_type": "CLUSTER"}', "did you mean 'CLUSTERING'?"),
    ('{"content": "x", "title": "T"}', "`title` is only accepted with task_type RETRIEVAL_DOCUMENT"),
    ('{"content": "x", "parameters": {"outputDimensionality": 769}}', "from 1 to 768, got 769"),
    ('{"content": "x", "parameters": {"outputDimensionality": 2.5}}', "from 1 to 768, got 2.5"),
    ('{"content": "x", "parameters": {"autoTruncate": "no"}}', "`autoTruncate` must be true or false"),
    ('{"content": "x", "parameters": {"dimensions": 8}}', "`parameters` has unknown key \"dimensions\""),
]


@pytest.mark.parametrize("request_text, problem", CASES)
def test_embedding_request_problem_in_python_and_on_duckdb(conn, request_text, problem) -> None:
    found = embedding_request_problem(request_text)
    assert (found is None) if problem is None else (problem in found), found
    sql = render("select {{ embedding_request_problem('r') }} from (select cast(? as varchar) as r)", duckdb_target=True)
    assert conn.execute(to_duckdb(sql), [request_text]).fetchall() == [(found,)]


def test_the_bigquery_rules_are_one_valid_statement() -> None:
    sqlglot.parse_one(render("select {{ embedding_request_problem('request') }} as problem from t"), read="bigquery")


def test_hashing_validates_by_the_models_contract() -> None:
    embedding = '{"content": "A good pan."}'
    gemini = '{"contents": [{"role": "user", "parts": [{"text": "A good pan."}]}]}'
    assert valid_request_hash(embedding, "text-embedding-005") is not None
    assert valid_request_hash(embedding, "gemini-2.5-flash") is None  # not a GenerateContentRequest
    assert valid_request_hash(gemini, "text-embedding-005") is None
    assert valid_request_hash(gemini, "gemini-2.5-flash") is not None
    assert valid_request_hash(embedding, "text-embedding-005") != valid_request_hash(embedding, "text-embedding-004")


def test_embedding_models_and_the_refused_ones() -> None:
    for name in ("text-embedding-005", "text-embedding-004", "text-multilingual-embedding-002",
                 "publishers/google/models/text-embedding-005", "textembedding-gecko@003"):
        assert is_embedding_model(name) and batch_model_problem(name) is None
    assert not is_embedding_model("gemini-2.5-flash")
    key, message = batch_model_problem("gemini-embedding-001")
    assert key == "model" and "Cloud Storage JSONL only" in message and "text-embedding-005" in message
    assert batch_model_problem("gemini-2.5-flash", "gemini-embedding-2")[0] == "fallback_model"
    key, message = batch_model_problem("text-embedding-005", "gemini-2.5-flash")
    assert key == "fallback_model" and "same kind" in message
    assert "`predictions`" in reserved_column_problems(["request", "predictions"], embedding=True)[0]
    assert reserved_column_problems(["request", "predictions"]) == []


# -- flatteners -------------------------------------------------------------------------------------------
def prediction(values, tokens=8, truncated=False):
    return json.dumps([{"embeddings": {"statistics": {"token_count": tokens, "truncated": truncated}, "values": values}}])


FLAT = ("select {{ embedding_values('p') }} as v, {{ embedding_token_count('p') }} as n, "
        "{{ embedding_truncated('p') }} as t, {{ row_outcome('p', 's') }} as o from (select cast(? as {type}) as p, "
        "cast(? as varchar) as s)")
ROWS = [
    ((prediction([0.5, -0.25, 3e-7]), ""), ([0.5, -0.25, 3e-7], 8, False, "ok")),
    ((prediction([0.1], 2048, True), ""), ([0.1], 2048, True, "truncated")),
    ((prediction([]), ""), ([], 8, False, "row_error")),
    ((None, 'Bad Request: {"error": {"code": 400, "message": "x", "status": "INVALID_ARGUMENT"}}'),
     ([], None, None, "row_error")),
    ((None, None), ([], None, None, "missing")),
]


@pytest.mark.parametrize("duckdb_target", [True, False], ids=["duckdb-macros", "bigquery-transpiled"])
@pytest.mark.parametrize("column_type", ["VARCHAR", "JSON"])
@pytest.mark.parametrize("row, expected", ROWS)
def test_flatteners(conn, duckdb_target, column_type, row, expected) -> None:
    sql = to_duckdb(render(FLAT.replace("{type}", column_type), duckdb_target=duckdb_target))
    assert conn.execute(sql, list(row)).fetchall() == [expected]


def test_row_outcome_still_blocks_gemini_candidates_without_text(conn) -> None:
    blocked = json.dumps({"candidates": [{"finishReason": "OTHER"}]})
    for target in (True, False):
        sql = to_duckdb(render("select {{ row_outcome('p', 's') }} from (select cast(? as varchar) p, '' s)", target))
        assert conn.execute(sql, [blocked]).fetchall() == [("candidate_blocked",)]


# -- the mock's vectors, and the emulator's --------------------------------------------------------------
def test_mock_vectors_are_deterministic_unit_vectors_whose_prefix_is_the_shorter_one() -> None:
    full, short = mock_embedding("A good pan."), mock_embedding("A good pan.", 16)
    assert len(full) == 768 and len(short) == 16 and full == mock_embedding("A good pan.")
    assert math.isclose(math.fsum(v * v for v in full), 1.0, abs_tol=1e-12)
    norm = math.sqrt(math.fsum(v * v for v in full[:16]))
    assert all(math.isclose(s, f / norm, rel_tol=1e-12) for s, f in zip(short, full))
    assert mock_embedding("A good pan!") != full


def test_the_mock_and_the_emulator_derive_the_same_vectors_independently() -> None:
    texts = ["A good pan.", "Zwei Wörter — ünïcode ✓", "x" * 3, "line\nbreak\ttab"]
    for text in texts:
        for dims in (1, 7, 256, 768):
            assert mock_embedding(text, dims) == emulator_embeddings.vector(text, dims)
        assert embedding_token_count(text) == emulator_embeddings.tokens(text)


def test_mock_embed_json_rows() -> None:
    long_text = "word " * 2100
    predictions, statuses = MockProvider({"failures": [{"when_prompt_contains": "boom", "outcome": "transient_error"},
                                                       {"when_prompt_contains": "lyrics", "outcome": "recitation"}]}
                                         ).embed_json("text-embedding-005", [
        {"content": "Hi, there!"}, {"content": ""}, {"content": "boom"}, {"content": "lyrics"},
        {"content": long_text}], {"outputDimensionality": 4})
    first = json.loads(predictions[0])[0]["embeddings"]
    assert first == {"statistics": {"token_count": 4, "truncated": False}, "values": mock_embedding("Hi, there!", 4)}
    assert predictions[1] is None and '"code": 400' in statuses[1]
    assert predictions[2] is None and "RESOURCE_EXHAUSTED" in statuses[2]
    assert statuses[3] == "" and predictions[3] is not None  # a Gemini-only outcome does not apply
    assert json.loads(predictions[4])[0]["embeddings"]["statistics"] == {"token_count": 2048, "truncated": True}
    _, refused = MockProvider().embed_json("text-embedding-005", [{"content": long_text}], {"autoTruncate": False})
    assert "more than the 2048" in refused[0] and "INVALID_ARGUMENT" in refused[0]


# -- the OpenAI-compatible provider ------------------------------------------------------------------------
class _Embeddings(BaseHTTPRequestHandler):
    calls: list = []
    fail_next: list = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.path, body))
        if type(self).fail_next:
            code = type(self).fail_next.pop(0)
            self._send(code, {"error": {"message": f"injected {code}"}})
            return
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), float(i), 0.5][: body.get("dimensions", 3)]}
                for i, t in enumerate(body["input"])]
        data.reverse()  # servers may answer out of order: `index` says which is which
        self._send(200, {"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 10 * len(data), "total_tokens": 10 * len(data)}})

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def embeddings_server():
    _Embeddings.calls, _Embeddings.fail_next = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_provider_posts_v1_embeddings(embeddings_server) -> None:
    provider = OpenAIProvider({"base_url": embeddings_server, "embedding_model": "nomic-embed-text",
                               "embedding_batch_size": 2, "concurrency": 1, "backoff_initial": 0.001})
    rows = [{"content": "one"}, {"content": "three"}, {"content": ""}, {"content": "x"}]
    predictions, statuses = provider.embed_json("text-embedding-005", rows, {"outputDimensionality": 2})
    assert [path for path, _ in _Embeddings.calls] == ["/v1/embeddings", "/v1/embeddings"]
    assert _Embeddings.calls[0][1] == {"model": "nomic-embed-text", "dimensions": 2, "input": ["one", "three"]}
    assert _Embeddings.calls[1][1]["input"] == ["x"]  # the empty text is not sent
    first, second = (json.loads(p)[0]["embeddings"] for p in predictions[:2])
    assert first["values"] == [3.0, 0.0] and second["values"] == [5.0, 1.0]  # by `index`, not answer order
    assert first["statistics"]["token_count"] + second["statistics"]["token_count"] == 20  # the call's usage, shared
    assert second["statistics"] == {"token_count": 12, "truncated": False}
    assert json.loads(predictions[3])[0]["embeddings"]["statistics"]["token_count"] == 10
    assert predictions[2] is None and "INVALID_ARGUMENT" in statuses[2]
    assert statuses[:2] == ["", ""] and statuses[3] == ""
    provider.close()


def test_openai_provider_retries_a_429_and_fails_the_call_on_a_400(embeddings_server) -> None:
    provider = OpenAIProvider({"base_url": embeddings_server, "backoff_initial": 0.001, "max_attempts": 2})
    _Embeddings.fail_next = [429]
    predictions, statuses = provider.embed_json("text-embedding-005", [{"content": "one"}], {})
    assert statuses == [""] and len(_Embeddings.calls) == 2
    _Embeddings.fail_next = [400]
    predictions, statuses = provider.embed_json("text-embedding-005", [{"content": "a"}, {"content": "b"}], {})
    assert predictions == [None, None] and all("injected 400" in s for s in statuses)
    assert "dimensions" not in _Embeddings.calls[-1][1] and _Embeddings.calls[-1][1]["model"] == "text-embedding-005"
    provider.close()


# -- refused at compile time ---------------------------------------------------------------------------------
def test_a_gcs_only_embedding_model_is_refused_with_file_and_line(example_project: Path) -> None:
    write(example_project, "models/requests/gecko.sql",
          "-- embeddings\n{{ config(\n    materialized='batch',\n    model='gemini-embedding-001') }}\n"
          "select review_id, {{ embedding_request('body') }} as request from {{ ref('stg_reviews') }}\n")
    result = CLI(example_project)("compile")
    assert result.exit_code == 2, result.output
    assert "models/requests/gecko.sql:4" in result.output
    assert "Cloud Storage JSONL only" in result.output and "text-embedding-005" in result.output
    assert "Traceback" not in result.output
