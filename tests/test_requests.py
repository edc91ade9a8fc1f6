"""Request rules and hashing (batchflow.requests)."""

from __future__ import annotations

import hashlib
import json

import pytest

from batchflow.requests import (
    FORBIDDEN_TYPE_PREFIXES,
    RESERVED_COLUMNS,
    canonical_json,
    check_columns,
    request_hash,
    valid_request_hash,
    request_problem,
)
from batchflow.warehouse.base import Column

GOOD = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}


# -- check_columns -------------------------------------------------------------------------------


def test_check_columns_accepts_a_normal_relation():
    cols = [Column("review_id", "INT64"), Column("request", "JSON"), Column("ts", "TIMESTAMP"),
            Column("d", "DATE"), Column("meta", "JSON"), Column("body", "STRING")]
    assert check_columns(cols) == []
    assert check_columns([Column("request", "STRING")]) == []


def test_check_columns_missing_request():
    problems = check_columns([Column("id", "INT64")])
    assert len(problems) == 1 and "no `request` column" in problems[0]


@pytest.mark.parametrize("name", ["response", "status", "processed_time", "Status"])
def test_check_columns_reserved_names(name):
    problems = check_columns([Column("request", "JSON"), Column(name, "STRING")])
    assert len(problems) == 1
    assert f"`{name}`" in problems[0] and "reserved" in problems[0]
    assert set(RESERVED_COLUMNS) == {"response", "status", "processed_time"}


@pytest.mark.parametrize(
    "ctype", ["ARRAY<STRING>", "STRUCT<a INT64>", "RANGE<DATE>", "DATETIME", "GEOGRAPHY", "STRUCT", "array<int64>"]
)
def test_check_columns_forbidden_passthrough_types(ctype):
    problems = check_columns([Column("request", "JSON"), Column("x", ctype)])
    assert len(problems) == 1 and "`x`" in problems[0] and ctype in problems[0]


def test_check_columns_date_is_not_datetime():
    assert check_columns([Column("request", "JSON"), Column("d", "DATE"), Column("t", "TIME")]) == []
    assert "DATETIME" in FORBIDDEN_TYPE_PREFIXES


@pytest.mark.parametrize("rtype", ["INT64", "ARRAY<STRING>", "BYTES", "STRUCT<a STRING>"])
def test_check_columns_request_type(rtype):
    problems = check_columns([Column("request", rtype)])
    assert len(problems) == 1 and "JSON or STRING" in problems[0]


def test_check_columns_reports_every_problem():
    problems = check_columns([Column("status", "STRING"), Column("a", "ARRAY<INT64>")])
    assert len(problems) == 3  # no request, reserved name, forbidden type


# -- request_problem -----------------------------------------------------------------------------


def test_request_problem_accepts_valid_requests():
    assert request_problem(GOOD) is None
    assert request_problem(json.dumps(GOOD)) is None
    # legacy single-object parts (real Google data), model turns, extra keys
    legacy = {
        "contents": [
            {"role": "user", "parts": {"text": "Give me a recipe for banana bread."}},
            {"role": "model", "parts": [{"text": "Sure"}]},
            {"role": "user", "parts": [{"fileData": {"fileUri": "gs://b/x.png", "mimeType": "image/png"}}]},
        ],
        "generation_config": {"top_k": 5},
        "system_instruction": {"parts": [{"text": "You are a chef."}]},
    }
    assert request_problem(legacy) is None
    assert request_problem(json.dumps(legacy).encode()) is None


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (None, "NULL"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object (got array)"),
        ('"text"', "not a JSON object (got string)"),
        ({}, "no `contents` array"),
        ({"contents": {"role": "user"}}, "`contents` is not an array (got object)"),
        ({"contents": []}, "`contents` is empty"),
        ({"contents": ["hi"]}, "contents[0] is not an object"),
        ({"contents": [{"parts": [{"text": "x"}]}]}, "contents[0] has no `role`"),
        ({"contents": [{"role": "user", "parts": [{"text": "x"}]}, {"role": "system", "parts": [{"text": "y"}]}]},
         'contents[1] has role "system"'),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "only user or model"),
        ({"contents": [{"role": "user"}]}, "contents[0] has no `parts`"),
        ({"contents": [{"role": "user", "parts": []}]}, "contents[0] has no `parts`"),
        ({"contents": [{"role": "user", "parts": "hello"}]}, "contents[0] has no `parts`"),
    ],
)
def test_request_problem_explains(request_, fragment):
    problem = request_problem(request_)
    assert problem is not None and fragment in problem, problem


# -- hashing -------------------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_and_keeps_unicode():
    obj = {"b": [1, 2.5, None, True], "a": {"z": "é\"\n", "y": 0}}
    assert canonical_json(obj) == '{"a":{"y":0,"z":"é\\"\\n"},"b":[1,2.5,null,true]}'
    assert canonical_json(obj) == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json("x") == '"x"'
    assert canonical_json(None) == "null"
    with pytest.raises(TypeError):
        canonical_json({"x": object()})
    # orjson's spelling of exponents; a request with an integer beyond 64 bits (which orjson refuses)
    # is written whole by Python's json module
    assert canonical_json({"x": 1e-07}) == '{"x":1e-7}'
    assert canonical_json({"x": 1e-07, "y": 2**70}) == '{"x":1e-07,"y":1180591620717411303424}'


def test_request_hash_definition():
    expected = hashlib.sha256((canonical_json(GOOD) + "\n" + "gemini-2.5-flash").encode()).hexdigest()
    assert request_hash(GOOD, "gemini-2.5-flash") == expected
    assert len(expected) == 64


def test_request_hash_ignores_text_formatting_and_key_order():
    text = '{ "contents" : [ {"parts": [{"text": "Hello"}], "role": "user"} ] }'
    assert request_hash(text, "m") == request_hash(GOOD, "m")
    assert request_hash(text.encode(), "m") == request_hash(GOOD, "m")


def test_request_hash_depends_on_model_and_content():
    assert request_hash(GOOD, "gemini-2.5-flash") != request_hash(GOOD, "gemini-2.5-pro")
    other = {"contents": [{"role": "user", "parts": [{"text": "Hello!"}]}]}
    assert request_hash(GOOD, "m") != request_hash(other, "m")
    # numbers keep their JSON spelling: 1 and 1.0 are different requests
    assert request_hash({"contents": [], "x": 1}, "m") != request_hash({"contents": [], "x": 1.0}, "m")


def test_request_hash_rejects_bad_json():
    with pytest.raises(ValueError):
        request_hash("{nope", "m")
    with pytest.raises(ValueError):  # Vertex refuses NaN as well
        request_hash('{"contents": [], "x": NaN}', "m")


@pytest.mark.parametrize("bad", [None, "{nope", '{"contents": []}', '{"contents": [{"role": "bot", "parts": [1]}]}',
                                 '{"contents": [{"role": "user", "parts": [1]}], "x": NaN}'])
def test_valid_request_hash_is_none_for_every_invalid_request(bad) -> None:
    assert valid_request_hash(bad, "m") is None


def test_valid_request_hash_equals_request_hash_for_valid_requests() -> None:
    text = json.dumps(GOOD, indent=2)
    assert valid_request_hash(text, "m") == request_hash(GOOD, "m")
    assert valid_request_hash(text.encode(), "m") == request_hash(text, "m")
