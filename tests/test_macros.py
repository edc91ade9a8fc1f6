"""The built-in macro library: rendered with plain Jinja, parsed as BigQuery, run on DuckDB.

Response cases are golden files under tests/fixtures/macros/responses/ (a row in, expected flattened
values out): a new case is a new file. Each runs with `response` typed JSON and typed VARCHAR.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jinja2
import pytest
import sqlglot

import batchflow
from batchflow.sql import to_duckdb

MACRO_DIR = Path(batchflow.__file__).parent / "macros"
FIXTURES = Path(__file__).parent / "fixtures"
RESPONSE_CASES = sorted((FIXTURES / "macros" / "responses").glob("*.json"))
SEED_ROWS = json.loads((FIXTURES / "seed_output_rows.json").read_text())["rows"]
MACRO_SOURCE = "\n".join(p.read_text() for p in sorted(MACRO_DIR.glob("*.sql")))


def render(template: str) -> str:
    """Render `template` with every built-in macro in scope, like the compiler's single namespace."""
    return jinja2.Environment().from_string(MACRO_SOURCE + "\n" + template).render().strip()


def bigquery(template: str) -> str:
    """Render and check the result is one valid BigQuery statement."""
    sql = render(template)
    sqlglot.parse_one(sql, read="bigquery")
    return sql


def load_rows(conn, rows: list[tuple[object, str | None]], response_type: str) -> None:
    """Table `cases(id, response <response_type>, status)` from (response, status) pairs."""
    conn.execute(f"CREATE OR REPLACE TABLE cases (id INTEGER, response {response_type}, status VARCHAR)")
    for i, (response, status) in enumerate(rows):
        text = None if response is None else json.dumps(response)
        conn.execute("INSERT INTO cases VALUES (?, ?, ?)", [i, text, status])


FLATTEN = """
select id,
  {{ response_text('response') }} as text,
  {{ finish_reason('response') }} as finish_reason,
  {{ block_reason('response') }} as block_reason,
  {{ model_version('response') }} as model_version,
  {{ row_outcome('response', 'status') }} as outcome,
  {{ usage_tokens('response') }} as total_tokens,
  {{ usage_tokens('response', 'promptTokenCount') }} as prompt_tokens,
  {{ usage_tokens('response', 'thoughtsTokenCount') }} as thoughts_tokens,
  {{ status_code('status') }} as status_code,
  {{ status_reason('status') }} as status_reason,
  {{ status_name('status') }} as status_name,
  {{ status_message('status') }} as status_message,
  {{ safety_ratings('response') }} as safety_ratings,
  {{ citations('response') }} as citations
from cases
order by id
"""


def flatten(conn, rows, response_type: str) -> list[dict]:
    load_rows(conn, rows, response_type)
    result = conn.sql(to_duckdb(bigquery(FLATTEN)))
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def same(actual: object, expected: object) -> bool:
    """Equality with float tolerance, recursing into lists and dicts."""
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        return math.isclose(actual, expected, rel_tol=1e-9)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    return actual == expected and type(actual) is type(expected)


# --- seed rows (real output, legacy array-shaped `response`) ----------------------------------------


@pytest.mark.parametrize("response_type", ["JSON", "VARCHAR"])
def test_seed_rows_legacy_array_shape(conn, response_type):
    out = flatten(conn, [(r["response"], r["status"]) for r in SEED_ROWS], response_type)
    stop, recitation = out

    assert stop["text"].startswith("## Grandma's Classic Banana Bread")
    assert stop["text"].endswith("**Enjoy!** \n")
    assert stop["finish_reason"] == "STOP"
    assert stop["outcome"] == "ok"
    assert len(stop["safety_ratings"]) == 4
    assert stop["safety_ratings"][0] == {
        "category": "HARM_CATEGORY_HATE_SPEECH",
        "probability": "NEGLIGIBLE",
        "probability_score": pytest.approx(0.13568956),
        "severity": "HARM_SEVERITY_NEGLIGIBLE",
        "severity_score": pytest.approx(0.14767806),
        "blocked": False,
    }
    assert stop["citations"] == []
    assert stop["model_version"] is None and stop["total_tokens"] is None
    assert stop["status_code"] is None and stop["status_message"] is None

    assert recitation["text"] is None
    assert recitation["finish_reason"] == "RECITATION"
    assert recitation["outcome"] == "candidate_blocked"
    assert len(recitation["safety_ratings"]) == 4
    assert len(recitation["citations"]) == 5
    assert [c["license"] for c in recitation["citations"]] == [None, "MIT", None, None, None]
    assert recitation["citations"][1] == {
        "start_index": 391, "end_index": 541, "uri": "", "title": None, "license": "MIT"
    }


def test_safety_ratings_and_citations_unnest_in_from(conn):
    """The documented use: one row per rating / citation via UNNEST in FROM."""
    load_rows(conn, [(r["response"], r["status"]) for r in SEED_ROWS], "JSON")
    sql = bigquery(
        "select c.id, r.category, r.blocked from cases c, UNNEST({{ safety_ratings('c.response') }}) as r"
        " order by c.id, r.category"
    )
    rows = conn.sql(to_duckdb(sql)).fetchall()
    assert len(rows) == 8
    assert rows[0] == (0, "HARM_CATEGORY_DANGEROUS_CONTENT", False)
    sql = bigquery(
        "select c.id, x.start_index, x.license from cases c"
        " cross join UNNEST({{ citations('c.response') }}) as x where x.license is not null"
    )
    assert conn.sql(to_duckdb(sql)).fetchall() == [(1, 391, "MIT")]


# --- golden response cases ------------------------------------------------------------------------


@pytest.mark.parametrize("response_type", ["JSON", "VARCHAR"])
@pytest.mark.parametrize("case_path", RESPONSE_CASES, ids=[p.stem for p in RESPONSE_CASES])
def test_response_case(conn, case_path, response_type):
    case = json.loads(case_path.read_text())
    (row,) = flatten(conn, [(case["response"], case["status"])], response_type)
    for column, expected in case["expected"].items():
        assert same(row[column], expected), f"{column}: {row[column]!r} != {expected!r}"

    for i, (path, type_, expected) in enumerate(case.get("json_fields", [])):
        sql = bigquery(f"select {{{{ json_field('response', '{path}', '{type_}') }}}} from cases")
        (value,) = conn.execute(to_duckdb(sql)).fetchall()[0]
        if type_ == "JSON" and value is not None:
            value = json.loads(value)
        assert same(value, expected), f"json_field {path} {type_}: {value!r} != {expected!r}"

    for path, expected in case.get("json_string_arrays", []):
        sql = bigquery(f"select {{{{ json_string_array('response', '{path}') }}}} from cases")
        (value,) = conn.execute(to_duckdb(sql)).fetchall()[0]
        assert value == expected, f"json_string_array {path}: {value!r} != {expected!r}"


def test_golden_cases_exist():
    assert len(RESPONSE_CASES) >= 8


def test_json_field_rejects_unknown_type_at_compile_time():
    with pytest.raises(jinja2.UndefinedError, match="json_field_type_must_be"):
        render("{{ json_field('response', 'label', 'DATE') }}")


def test_flatteners_emit_bigquery_without_json_type():
    """JSON_TYPE only accepts JSON in BigQuery: flatteners must also work on STRING columns."""
    sql = bigquery(FLATTEN)
    assert "JSON_TYPE" not in sql.upper()


# --- gemini_request ---------------------------------------------------------------------------------


def run_request(conn, template: str) -> list[dict]:
    conn.execute(
        "CREATE OR REPLACE TABLE docs AS SELECT * FROM (VALUES"
        " (1, 'Great food', 'gs://bucket/a.png'),"
        " (2, 'It''s \"fine\"\\n', 'gs://bucket/b.png')) AS t(id, body, uri)"
    )
    sql = bigquery(f"select id, {template} as request from docs order by id")
    duck = to_duckdb(sql)
    types = {t for (t,) in conn.sql(f"select typeof(request) from ({duck})").fetchall()}
    assert types == {"JSON"}
    return [json.loads(r) for (_, r) in conn.sql(duck).fetchall()]


def test_gemini_request_minimal(conn):
    requests = run_request(conn, "{{ gemini_request(prompt=\"concat('Classify: ', body)\") }}")
    assert requests == [
        {"contents": [{"role": "user", "parts": [{"text": "Classify: Great food"}]}]},
        {"contents": [{"role": "user", "parts": [{"text": "Classify: It's \"fine\"\\n"}]}]},
    ]


TRICKY = 'He said "hi",\nthen left\\; it\'s\ttabbed'


def test_gemini_request_everything(conn):
    template = """{{ gemini_request(
        prompt='body',
        system_instruction=instruction,
        generation_config={'temperature': 0.0, 'maxOutputTokens': 256, 'stopSequences': stops, 'candidateCount': 1},
        response_schema={'type': 'OBJECT', 'properties': {'label': {'type': 'STRING', 'enum': ['pos', 'neg']}}, 'required': ['label']},
        files=[{'uri': 'uri', 'mime_type': 'image/png'}, {'uri': "'gs://fixed/doc.pdf'", 'mime_type': 'application/pdf'}],
        safety_settings=[{'category': 'HARM_CATEGORY_HATE_SPEECH', 'threshold': 'BLOCK_ONLY_HIGH'}]) }}"""
    stops = ["it's", 'a"b', "back\\slash", "new\nline"]
    env = jinja2.Environment()
    sql = env.from_string(MACRO_SOURCE + "\n" + "select id, " + template + " as request from docs order by id")
    sql = sql.render(instruction=TRICKY, stops=stops).strip()
    sqlglot.parse_one(sql, read="bigquery")
    conn.execute(
        "CREATE OR REPLACE TABLE docs AS SELECT * FROM (VALUES (1, 'Great food', 'gs://bucket/a.png')) AS t(id, body, uri)"
    )
    ((_, request),) = conn.sql(to_duckdb(sql)).fetchall()
    assert json.loads(request) == {
        "contents": [{"role": "user", "parts": [
            {"text": "Great food"},
            {"fileData": {"fileUri": "gs://bucket/a.png", "mimeType": "image/png"}},
            {"fileData": {"fileUri": "gs://fixed/doc.pdf", "mimeType": "application/pdf"}},
        ]}],
        "systemInstruction": {"parts": [{"text": TRICKY}]},
        "generationConfig": {
            "temperature": 0.0,
            "maxOutputTokens": 256,
            "stopSequences": stops,
            "candidateCount": 1,
            "responseSchema": {
                "type": "OBJECT",
                "properties": {"label": {"type": "STRING", "enum": ["pos", "neg"]}},
                "required": ["label"],
            },
            "responseMimeType": "application/json",
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}],
    }
    assert "type_" not in request


def test_gemini_request_keeps_given_mime_type(conn):
    requests = run_request(
        conn,
        "{{ gemini_request(prompt='body', generation_config={'responseMimeType': 'text/x.enum'},"
        " response_schema={'type': 'STRING', 'enum': ['a', 'b']}) }}",
    )
    assert requests[0]["generationConfig"] == {
        "responseMimeType": "text/x.enum",
        "responseSchema": {"type": "STRING", "enum": ["a", "b"]},
    }


def test_gemini_request_is_json_typed_on_bigquery():
    sql = bigquery("select {{ gemini_request(prompt='body', system_instruction='x') }} as r from docs")
    root = sqlglot.parse_one(sql, read="bigquery").selects[0].this
    assert isinstance(root, sqlglot.exp.JSONObject)


# --- literal helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["plain", "it's", 'q"uote', "back\\slash", "new\nline\r\n", "tab\t", "", "ünï 🎉"])
def test_sql_string_round_trips(conn, value):
    sql = jinja2.Environment().from_string(MACRO_SOURCE + "select {{ sql_string(v) }}").render(v=value).strip()
    sqlglot.parse_one(sql, read="bigquery")
    assert conn.execute(to_duckdb(sql)).fetchall()[0] == (value,)


def test_json_literal_round_trips(conn):
    value = {"a": [1, 2.5, True, False, None], "s": 'x"y\\z\n\'', "nested": {"k": []}, "e": {}}
    sql = jinja2.Environment().from_string(MACRO_SOURCE + "select {{ json_literal(v) }}").render(v=value).strip()
    sqlglot.parse_one(sql, read="bigquery")
    (text,) = conn.execute(to_duckdb(sql)).fetchall()[0]
    assert json.loads(text) == value


# --- DuckDB fast paths ----------------------------------------------------------------------------
# On the local target, response_text / safety_ratings / citations compile to list-lambda macros
# instead of BigQuery's correlated UNNEST subqueries. They must agree on every golden row.


def flatten_duckdb_flavour(conn, rows, response_type: str) -> list[dict]:
    load_rows(conn, rows, response_type)
    sql = jinja2.Environment().from_string(MACRO_SOURCE + "\n" + FLATTEN).render(target={"type": "duckdb"})
    assert "bf_response_text(" in sql and "bf_safety_ratings(" in sql and "bf_citations(" in sql
    result = conn.sql(to_duckdb(sqlglot.parse_one(sql, read="bigquery")))
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


@pytest.mark.parametrize("response_type", ["JSON", "VARCHAR"])
def test_duckdb_fast_paths_match_the_bigquery_forms(conn, response_type):
    cases = [json.loads(p.read_text()) for p in RESPONSE_CASES]
    rows = [(r["response"], r["status"]) for r in SEED_ROWS] + [(c["response"], c["status"]) for c in cases]
    generic = flatten(conn, rows, response_type)
    fast = flatten_duckdb_flavour(conn, rows, response_type)
    assert len(fast) == len(rows) == len(generic)
    for slow_row, fast_row in zip(generic, fast):
        assert same(fast_row, slow_row), (slow_row["id"], fast_row, slow_row)
    assert any(r["text"] for r in fast) and any(r["citations"] for r in fast) and any(r["safety_ratings"] for r in fast)
