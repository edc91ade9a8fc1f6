"""DuckDB stand-ins for BigQuery functions whose DuckDB namesakes behave differently.

`batchflow.sql.to_duckdb` rewrites those BigQuery calls into the `bf_*` functions defined here, and
the DuckDB adapter calls `install(conn)` on every connection. Everything is a SQL macro (inlined by
DuckDB's planner, so as fast as hand-written SQL) except FARM_FINGERPRINT, which needs real code.

BigQuery semantics emulated (JSON functions accept JSON *or* a JSON-formatted STRING):
- STRING input is not validated by BigQuery: malformed JSON text extracts as NULL, never an error.
- JSON_VALUE gives NULL for objects, arrays and JSON null; strings are unquoted and unescaped.
- JSON_QUERY on STRING input returns SQL NULL for a JSON null; on JSON input, a JSON null.
- JSON_QUERY_ARRAY / JSON_VALUE_ARRAY return NULL when the value is not an array (DuckDB's cast throws).
- JSON_TYPE names are lowercase ('object', 'array', 'string', 'number', 'boolean', 'null').
- SAFE_CAST(STRING AS INT64) refuses '1.5' and '1e3' (DuckDB rounds them); SAFE_CAST(STRING AS BOOL)
  only accepts 'true'/'false' in any case (DuckDB also takes 't', 'yes', '1', ...).
- TO_JSON_STRING(NULL) is the text 'null'.
- The session time zone is UTC, BigQuery's default for DATE(ts), TIMESTAMP_TRUNC, FORMAT_TIMESTAMP.
"""

from __future__ import annotations

import json
import struct

import duckdb

# --- SQL macros -------------------------------------------------------------------------------------
# What the response flatteners read of a candidate of a GenerateContentResponse, for json_transform:
# text leaves. One shape per flattener: json_transform builds every field of its shape, so parsing the
# safety ratings and citations when only the text is wanted costs ~3x (measured on 1M mock answers).
_TEXT = "VARCHAR"
_TEXT_SHAPE = {"finishReason": _TEXT, "content": {"parts": [{"text": _TEXT, "thought": _TEXT}]}}
_SAFETY_SHAPE = {"safetyRatings": [dict.fromkeys(("category", "probability", "probabilityScore", "severity",
                                                  "severityScore", "blocked"), _TEXT)]}
_CITATIONS_SHAPE = {"citationMetadata": {key: [dict.fromkeys(("startIndex", "endIndex", "uri", "title", "license"), _TEXT)]
                                         for key in ("citations", "citationSources")}}


def _candidate_macro(name: str, shape: dict) -> str:
    """`name(r)`: candidate 0 of response `r` (or of `r[0]`) as a typed record of `shape`'s fields."""
    candidate, response = json.dumps(shape), json.dumps({"candidates": [shape]})
    return (f"{name}(r) AS coalesce(json_transform(bf_safe_parse_json(r), '{response}').candidates[1],"
            f" json_transform(json_extract(bf_safe_parse_json(r), '$[0]'), '{candidate}'))")


# Names starting with `bf__` are private helpers of other macros (macros cannot bind local variables,
# so a value used twice is passed to a helper instead of being written out twice).
_MACROS: tuple[str, ...] = (
    # JSON or JSON text -> JSON; NULL when the text is not valid JSON (SAFE.PARSE_JSON too).
    # JSON-typed input is valid by construction: skip re-validating it on every field access.
    "bf_safe_parse_json(x) AS CASE WHEN typeof(x) = 'JSON' THEN x::JSON WHEN json_valid(x) THEN json(x) END",
    "bf__json_type_name(t) AS CASE t"
    " WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array' WHEN 'VARCHAR' THEN 'string'"
    " WHEN 'BOOLEAN' THEN 'boolean' WHEN 'NULL' THEN 'null'"
    " WHEN 'BIGINT' THEN 'number' WHEN 'UBIGINT' THEN 'number' WHEN 'HUGEINT' THEN 'number'"
    " WHEN 'DOUBLE' THEN 'number' END",
    "bf_json_type(x) AS bf__json_type_name(json_type(x))",
    "bf_json_value(x, p) AS json_value(bf_safe_parse_json(x), p) ->> '$'",
    # keep_null: BigQuery keeps a JSON null only for JSON-typed input.
    "bf__json_query(r, keep_null) AS CASE WHEN keep_null OR json_type(r) <> 'NULL' THEN r END",
    "bf_json_query(x, p) AS bf__json_query(json_extract(bf_safe_parse_json(x), p), typeof(x) = 'JSON')",
    "bf__json_array(j) AS CASE WHEN json_type(j) = 'ARRAY' THEN CAST(j AS JSON[]) END",
    "bf_json_query_array(x, p) AS bf__json_array(json_extract(bf_safe_parse_json(x), p))",
    "bf__scalar_list(a) AS CASE WHEN NOT list_has_any(list_transform(a, lambda e: json_type(e)),"
    " ['OBJECT', 'ARRAY']) THEN list_transform(a, lambda e: e ->> '$') END",
    "bf_json_value_array(x, p) AS bf__scalar_list(bf_json_query_array(x, p))",
    "bf_safe_cast_int64(x) AS CASE WHEN typeof(x) = 'VARCHAR'"
    r" AND NOT regexp_full_match(CAST(x AS VARCHAR), '\s*[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)\s*')"
    " THEN NULL ELSE TRY_CAST(x AS BIGINT) END",
    "bf_safe_cast_bool(x) AS CASE WHEN typeof(x) = 'VARCHAR'"
    " THEN CASE lower(trim(CAST(x AS VARCHAR))) WHEN 'true' THEN true WHEN 'false' THEN false END"
    " ELSE TRY_CAST(x AS BOOLEAN) END",
    # The response flatteners on DuckDB parse a response once, into candidate 0 as a typed record of
    # the fields they read (`bf__candidate_text | _safety | _citations`, every leaf as text, cast as
    # BigQuery's SAFE_CAST(JSON_VALUE(...)) would),
    # instead of BigQuery's correlated UNNEST subqueries and one JSON path per field. Identical calls
    # in one SELECT list are computed once (DuckDB's common subexpressions), so `response_text` and
    # `row_outcome` side by side still parse once. A CASE does not share subexpressions: a value it
    # reads several times is bound once as a lambda parameter (`list_transform([v], lambda c: ...)`).
    _candidate_macro("bf__candidate_text", _TEXT_SHAPE),
    _candidate_macro("bf__candidate_safety", _SAFETY_SHAPE),
    _candidate_macro("bf__candidate_citations", _CITATIONS_SHAPE),
    "bf__parts_text(ps) AS nullif(array_to_string(list_transform(list_filter(ps,"
    " lambda p: coalesce(p.thought, 'false') <> 'true'), lambda p: p.text), ''), '')",
    "bf_response_text(r) AS bf__parts_text(bf__candidate_text(r).content.parts)",
    "bf_safety_ratings(r) AS coalesce(list_transform(bf__candidate_safety(r).safetyRatings, lambda x: {'category': x.category,"
    " 'probability': x.probability, 'probability_score': TRY_CAST(x.probabilityScore AS DOUBLE),"
    " 'severity': x.severity, 'severity_score': TRY_CAST(x.severityScore AS DOUBLE),"
    " 'blocked': coalesce(bf_safe_cast_bool(x.blocked), false)}), [])",
    "bf__outcome(r, s, c) AS CASE"
    " WHEN s IS NULL AND r IS NULL THEN 'missing'"
    " WHEN coalesce(s, '') <> '' OR r IS NULL THEN 'row_error'"
    " WHEN c IS NULL THEN CASE WHEN bf_json_value(r, '$.promptFeedback.blockReason') IS NOT NULL"
    " THEN 'prompt_blocked' ELSE 'row_error' END"
    " WHEN c.finishReason IN ('SAFETY', 'RECITATION', 'BLOCKLIST', 'PROHIBITED_CONTENT', 'SPII', 'IMAGE_SAFETY',"
    " 'IMAGE_PROHIBITED_CONTENT', 'IMAGE_RECITATION') THEN 'candidate_blocked'"
    " WHEN c.finishReason = 'MAX_TOKENS' THEN 'truncated'"
    " WHEN coalesce(c.finishReason, '') <> 'STOP' AND bf__parts_text(c.content.parts) IS NULL THEN bf__no_text_outcome(r)"
    " ELSE 'ok' END",
    # No text and no STOP: a blocked candidate, unless `r` is an embedding model's `predictions`
    # ([{"embeddings": {...}}]). Only rows without text get here, so Gemini answers pay nothing for it.
    "bf__no_text_outcome(r) AS list_transform([json_extract(bf_safe_parse_json(r), '$[0].embeddings')], lambda e:"
    " CASE WHEN e IS NULL THEN 'candidate_blocked'"
    " WHEN coalesce(json_array_length(e, '$.values'), 0) = 0 THEN 'row_error'"
    " WHEN coalesce(bf_safe_cast_bool(json_extract_string(e, '$.statistics.truncated')), false) THEN 'truncated'"
    " ELSE 'ok' END)[1]",
    "bf_row_outcome(r, s) AS list_transform([bf__candidate_text(r)], lambda c: bf__outcome(r, s, c))[1]",
    # JSON mode (the request asked for application/json) and a text that does not parse: invalid_json.
    # The check reuses the candidate bf_row_outcome parses once; the request's mime type is read outside
    # the lambda and passed in as a boolean (a lambda binding a whole request per row costs 3x).
    "bf__outcome_json(r, s, c, j) AS CASE WHEN j AND bf__outcome(r, s, c) = 'ok'"
    " AND NOT coalesce(json_valid(bf__parts_text(c.content.parts)), false) THEN 'invalid_json'"
    " ELSE bf__outcome(r, s, c) END",
    "bf_row_outcome_json(r, s, q) AS list_transform([bf__candidate_text(r)], lambda c: bf__outcome_json(r, s, c,"
    " coalesce(lower(coalesce(json_extract_string(q, '$.generationConfig.responseMimeType'),"
    " json_extract_string(q, '$.generation_config.response_mime_type'))) = 'application/json', false)))[1]",
    "bf__citations(cs) AS list_transform(cs, lambda x: {'start_index': coalesce(bf_safe_cast_int64(x.startIndex), 0),"
    " 'end_index': bf_safe_cast_int64(x.endIndex), 'uri': x.uri, 'title': x.title, 'license': x.license})",
    "bf_citations(r) AS coalesce(list_transform([bf__candidate_citations(r).citationMetadata],"
    " lambda m: bf__citations(coalesce(m.citations, m.citationSources)))[1], [])",
    "bf_to_json_string(x) AS coalesce(CAST(to_json(x) AS VARCHAR), 'null')",
    # embedding_values(predictions): the vector of an embedding answer as DOUBLE[] ([] when absent).
    "bf__double_list(j) AS CASE WHEN json_type(j) = 'ARRAY' THEN TRY_CAST(j AS DOUBLE[]) END",
    "bf_embedding_values(p) AS coalesce(bf__double_list(json_extract(bf_safe_parse_json(p), '$[0].embeddings.values')),"
    " CAST([] AS DOUBLE[]))",
)


def _embedding_request_problem_udf(requests):
    """Vectorised `bf_embedding_request_problem(request_text)`: the rules of
    `batchflow.requests.embedding_request_problem`, in one place for every target."""
    import pyarrow as pa

    from batchflow.requests import embedding_request_problem

    return pa.array([embedding_request_problem(r) for r in requests.to_pylist()], type=pa.string())

# --- FarmHash Fingerprint64 (farmhashna::Hash64), what BigQuery's FARM_FINGERPRINT computes ---------
_M64 = (1 << 64) - 1
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F


def _f64(s: bytes, i: int) -> int:
    return struct.unpack_from("<Q", s, i)[0]


def _f32(s: bytes, i: int) -> int:
    return struct.unpack_from("<I", s, i)[0]


def _ror(v: int, n: int) -> int:
    return v if n == 0 else ((v >> n) | (v << (64 - n))) & _M64


def _smix(v: int) -> int:
    return v ^ (v >> 47)


def _len16(u: int, v: int, mul: int) -> int:
    a = ((u ^ v) * mul) & _M64
    a ^= a >> 47
    b = ((v ^ a) * mul) & _M64
    b ^= b >> 47
    return (b * mul) & _M64


def _len0to16(s: bytes) -> int:
    n = len(s)
    if n >= 8:
        mul = _K2 + n * 2
        a = (_f64(s, 0) + _K2) & _M64
        b = _f64(s, n - 8)
        c = (_ror(b, 37) * mul + a) & _M64
        d = ((_ror(a, 25) + b) * mul) & _M64
        return _len16(c, d, mul)
    if n >= 4:
        mul = _K2 + n * 2
        return _len16((n + (_f32(s, 0) << 3)) & _M64, _f32(s, n - 4), mul)
    if n > 0:
        y = s[0] + (s[n >> 1] << 8)
        z = n + (s[n - 1] << 2)
        return (_smix(((y * _K2) ^ (z * _K0)) & _M64) * _K2) & _M64
    return _K2


def _len17to32(s: bytes) -> int:
    n = len(s)
    mul = _K2 + n * 2
    a = (_f64(s, 0) * _K1) & _M64
    b = _f64(s, 8)
    c = (_f64(s, n - 8) * mul) & _M64
    d = (_f64(s, n - 16) * _K2) & _M64
    return _len16(
        (_ror((a + b) & _M64, 43) + _ror(c, 30) + d) & _M64,
        (a + _ror((b + _K2) & _M64, 18) + c) & _M64,
        mul,
    )


def _len33to64(s: bytes) -> int:
    n = len(s)
    mul = _K2 + n * 2
    a = (_f64(s, 0) * _K2) & _M64
    b = _f64(s, 8)
    c = (_f64(s, n - 8) * mul) & _M64
    d = (_f64(s, n - 16) * _K2) & _M64
    y = (_ror((a + b) & _M64, 43) + _ror(c, 30) + d) & _M64
    z = _len16(y, (a + _ror((b + _K2) & _M64, 18) + c) & _M64, mul)
    e = (_f64(s, 16) * mul) & _M64
    f = _f64(s, 24)
    g = ((y + _f64(s, n - 32)) * mul) & _M64
    h = ((z + _f64(s, n - 24)) * mul) & _M64
    return _len16(
        (_ror((e + f) & _M64, 43) + _ror(g, 30) + h) & _M64,
        (e + _ror((f + a) & _M64, 18) + g) & _M64,
        mul,
    )


def _weak32(s: bytes, i: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = _f64(s, i), _f64(s, i + 8), _f64(s, i + 16), _f64(s, i + 24)
    a = (a + w) & _M64
    b = _ror((b + a + z) & _M64, 21)
    c = a
    a = (a + x + y) & _M64
    b = (b + _ror(a, 44)) & _M64
    return (a + z) & _M64, (b + c) & _M64


def farm_fingerprint64(data: bytes) -> int:
    """FarmHash Fingerprint64 of `data` as a signed 64-bit integer (BigQuery FARM_FINGERPRINT)."""
    n = len(data)
    if n <= 16:
        h = _len0to16(data)
    elif n <= 32:
        h = _len17to32(data)
    elif n <= 64:
        h = _len33to64(data)
    else:
        h = _hash_long(data)
    return h - (1 << 64) if h >> 63 else h


def _hash_long(s: bytes) -> int:
    n = len(s)
    seed = 81
    x = seed
    y = (seed * _K1 + 113) & _M64
    z = (_smix((y * _K2 + 113) & _M64) * _K2) & _M64
    v0 = v1 = w0 = w1 = 0
    x = (x * _K2 + _f64(s, 0)) & _M64
    end = ((n - 1) // 64) * 64
    last64 = n - 64
    i = 0
    while True:
        x = (_ror((x + y + v0 + _f64(s, i + 8)) & _M64, 37) * _K1) & _M64
        y = (_ror((y + v1 + _f64(s, i + 48)) & _M64, 42) * _K1) & _M64
        x ^= w1
        y = (y + v0 + _f64(s, i + 40)) & _M64
        z = (_ror((z + w0) & _M64, 33) * _K1) & _M64
        v0, v1 = _weak32(s, i, (v1 * _K1) & _M64, (x + w0) & _M64)
        w0, w1 = _weak32(s, i + 32, (z + w1) & _M64, (y + _f64(s, i + 16)) & _M64)
        z, x = x, z
        i += 64
        if i == end:
            break
    mul = _K1 + ((z & 0xFF) << 1)
    i = last64
    w0 = (w0 + ((n - 1) & 63)) & _M64
    v0 = (v0 + w0) & _M64
    w0 = (w0 + v0) & _M64
    x = (_ror((x + y + v0 + _f64(s, i + 8)) & _M64, 37) * mul) & _M64
    y = (_ror((y + v1 + _f64(s, i + 48)) & _M64, 42) * mul) & _M64
    x ^= (w1 * 9) & _M64
    y = (y + v0 * 9 + _f64(s, i + 40)) & _M64
    z = (_ror((z + w0) & _M64, 33) * mul) & _M64
    v0, v1 = _weak32(s, i, (v1 * mul) & _M64, (x + w0) & _M64)
    w0, w1 = _weak32(s, i + 32, (z + w1) & _M64, (y + _f64(s, i + 16)) & _M64)
    z, x = x, z
    return _len16(
        (_len16(v0, w0, mul) + _smix(y) * _K0 + z) & _M64,
        (_len16(v1, w1, mul) + x) & _M64,
        mul,
    )


def _farm_fingerprint_udf(value: str | bytes) -> int:
    return farm_fingerprint64(value.encode("utf-8") if isinstance(value, str) else bytes(value))


def install(conn: duckdb.DuckDBPyConnection) -> None:
    """Register the `bf_*` functions on `conn` and set BigQuery's session defaults. Idempotent."""
    # BigQuery evaluates DATE(ts), TIMESTAMP_TRUNC and FORMAT_TIMESTAMP in UTC unless told otherwise.
    conn.execute("SET TimeZone = 'UTC'")
    for macro in _MACROS:
        conn.execute(f"CREATE OR REPLACE MACRO {macro}")
    # Python UDFs cannot be replaced in place: register once per connection.
    exists = conn.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = 'bf_farm_fingerprint'"
    ).fetchall()[0][0]
    problem = conn.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = 'bf_embedding_request_problem'"
    ).fetchall()[0][0]
    if not problem:
        conn.create_function("bf_embedding_request_problem", _embedding_request_problem_udf, ["VARCHAR"], "VARCHAR",
                             type="arrow", null_handling="special", side_effects=False)
    if not exists:
        conn.create_function(
            "bf_farm_fingerprint",
            _farm_fingerprint_udf,
            ["VARCHAR"],
            "BIGINT",
            side_effects=False,
        )
