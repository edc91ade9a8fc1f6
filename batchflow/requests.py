"""Rules a batch request relation must follow, and request hashing.

Pure Python on purpose (no warehouse, no SDK imports): the runner validates and diffs with it,
the local backend checks rows with it, and a DuckDB UDF can compute the same hash.

The request hash is the identity of one paid call: SHA-256 (hex) of
``canonical_json(request) + "\\n" + model``, where canonical JSON has sorted keys, compact separators
(``,`` and ``:``) and non-ASCII characters kept as UTF-8, spelled as orjson writes it (the same text as
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` except exponents: ``1e-7``, not
``1e-07``). A request given as JSON text is parsed first, so the text's whitespace and key order never
change the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # only for the annotation; keeps this module free of warehouse imports
    from batchflow.warehouse.base import Column

#: Column names Vertex writes into the output table; an input column may not use them.
RESERVED_COLUMNS = ("response", "status", "processed_time")

#: Columns batchflow adds to a batch model's relation; an input column may not use them either.
BOOKKEEPING_COLUMNS = ("request_hash", "job_name", "model_name", "attempt")


def reserved_column_problems(names: list[str]) -> list[str]:
    """Problems with a batch model's column names: no `request`, or a reserved name in any letter case
    (BigQuery compares column names case-insensitively)."""
    problems = []
    if "request" not in {n.lower() for n in names}:
        problems.append("the SELECT has no `request` column: a batch model's SELECT must return a JSON "
                        "`request` column (build it with {{ gemini_request(...) }} ... as request)")
    vertex = [f"`{n}`" for n in names if n.lower() in RESERVED_COLUMNS]
    if vertex:
        problems.append(f"column(s) {', '.join(vertex)} use names reserved for the columns Vertex writes "
                        f"({', '.join(RESERVED_COLUMNS)}, in any letter case); rename them")
    ours = [f"`{n}`" for n in names if n.lower() in BOOKKEEPING_COLUMNS]
    if ours:
        problems.append(f"column(s) {', '.join(ours)} use names reserved for batchflow's bookkeeping "
                        f"({', '.join(BOOKKEEPING_COLUMNS)}, in any letter case); rename them")
    return problems

#: BigQuery types Vertex refuses for passthrough (non-`request`) input columns.
FORBIDDEN_TYPE_PREFIXES = ("ARRAY", "STRUCT", "RANGE", "DATETIME", "GEOGRAPHY")

#: Types the `request` column may have.
REQUEST_TYPES = ("JSON", "STRING")

#: Roles Vertex accepts on `contents[]` items.
VALID_ROLES = ("user", "model")

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SORTED = orjson.OPT_SORT_KEYS
_orjson_dumps = orjson.dumps
_loads = orjson.loads
_sha256 = hashlib.sha256


def _canonical_bytes(obj: Any) -> bytes:
    """Canonical JSON as UTF-8. orjson is 3-5x faster than json here, which matters at a hash per row;
    the json module covers only what orjson refuses (integers beyond 64 bits)."""
    try:
        return _orjson_dumps(obj, option=_SORTED)
    except orjson.JSONEncodeError as exc:  # a TypeError
        if "64-bit" not in str(exc):
            raise
        return _ENCODER.encode(obj).encode()


def check_columns(columns: list[Column]) -> list[str]:
    """Problems with a request relation's columns (empty list when it is fine): the names
    (`reserved_column_problems`), then the types Vertex accepts.

    Names are compared case-insensitively, as BigQuery does.
    """
    problems = reserved_column_problems([c.name for c in columns])
    request = {c.name.lower(): c for c in columns}.get("request")
    if request is not None and request.type.strip().upper() not in REQUEST_TYPES:
        problems.append(f"column `request` has type {request.type}; it must be JSON or STRING")
    for col in columns:
        lname = col.name.lower()
        if lname == "request" or lname in RESERVED_COLUMNS or lname in BOOKKEEPING_COLUMNS:
            continue
        ctype = col.type.strip().upper()
        for prefix in FORBIDDEN_TYPE_PREFIXES:
            if ctype.startswith(prefix) and (len(ctype) == len(prefix) or not ctype[len(prefix)].isalnum()):
                problems.append(
                    f"column `{col.name}` has type {col.type}, which Vertex batch refuses in input tables "
                    f"({', '.join(FORBIDDEN_TYPE_PREFIXES)}); cast it (e.g. TO_JSON or CAST AS STRING)"
                )
                break
    return problems


def request_problem(request: str | dict | None) -> str | None:
    """Why one request is invalid for Vertex batch, or None when it looks fine.

    Checks: JSON text that parses, a JSON object, a non-empty `contents` array whose items are objects
    with role `user` or `model` and non-empty `parts` (a list, or a single object in the legacy form).
    """
    if request is None:
        return "request is NULL"
    if isinstance(request, (str, bytes, bytearray)):
        try:
            request = _loads(request)
        except ValueError as exc:
            return f"request is not valid JSON: {exc}"
    if not isinstance(request, dict):
        return f"request is not a JSON object (got {_json_kind(request)})"
    contents = request.get("contents")
    if contents is None:
        return "request has no `contents` array"
    if not isinstance(contents, list):
        return f"`contents` is not an array (got {_json_kind(contents)})"
    if not contents:
        return "`contents` is empty"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"contents[{i}] is not an object (got {_json_kind(content)})"
        role = content.get("role")
        if role not in VALID_ROLES:
            if role is None:
                return f"contents[{i}] has no `role`; Vertex requires user or model"
            return f"contents[{i}] has role {json.dumps(role)}; Vertex accepts only user or model"
        parts = content.get("parts")
        if not parts or not isinstance(parts, (list, dict)):
            return f"contents[{i}] has no `parts`"
    return None


def canonical_json(obj: Any) -> str:
    """JSON text with sorted keys, compact separators and non-ASCII kept.

    JSON text never holds NaN or Infinity (parsing refuses them); a float NaN in a Python object is
    written as ``null``, as orjson does."""
    return _canonical_bytes(obj).decode()


def request_hash(request: str | bytes | dict, model: str) -> str:
    """SHA-256 hex of ``canonical_json(request) + "\\n" + model``; JSON text is parsed first.

    Raises ValueError for text that is not JSON (NaN and Infinity included)."""
    if isinstance(request, (str, bytes, bytearray)):
        request = _loads(request)
    digest = _sha256(_canonical_bytes(request))
    digest.update(b"\n" + model.encode())
    return digest.hexdigest()


def valid_request_hash(request: str | bytes | None, model: str) -> str | None:
    """`request_hash` of a valid request, None when `request_problem` finds one (NULL and
    unparsable text included): hashing and validating a row with a single JSON parse."""
    if request is None:
        return None
    try:
        parsed = _loads(request)
    except ValueError:
        return None
    if request_problem(parsed) is not None:
        return None
    digest = _sha256(_canonical_bytes(parsed))
    digest.update(b"\n" + model.encode())
    return digest.hexdigest()


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
