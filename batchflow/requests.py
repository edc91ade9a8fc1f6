"""Rules a batch request relation must follow, and request hashing.

Pure Python on purpose (no warehouse, no SDK imports): the runner validates and diffs with it,
the local backend checks rows with it, and a DuckDB UDF can compute the same hash.

The request hash is the identity of one paid call: SHA-256 (hex) of
``canonical_json(request) + "\\n" + model``, where canonical JSON has sorted keys, compact separators
(``,`` and ``:``) and non-ASCII characters kept as UTF-8. A request given as JSON text is parsed first,
so the text's whitespace and key order never change the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for the annotation; keeps this module free of warehouse imports
    from batchflow.warehouse.base import Column

#: Column names Vertex writes into the output table; an input column may not use them.
RESERVED_COLUMNS = ("response", "status", "processed_time")

#: BigQuery types Vertex refuses for passthrough (non-`request`) input columns.
FORBIDDEN_TYPE_PREFIXES = ("ARRAY", "STRUCT", "RANGE", "DATETIME", "GEOGRAPHY")

#: Types the `request` column may have.
REQUEST_TYPES = ("JSON", "STRING")

#: Roles Vertex accepts on `contents[]` items.
VALID_ROLES = ("user", "model")

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _make_encoder():
    """The C encoder built once (json.JSONEncoder rebuilds it on every call: ~40% slower).

    No circular-reference check: requests come from JSON text or literals, never cycles.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C speedups
        return _ENCODER.encode
    c_encode = c_make_encoder(
        None, _unserializable, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    join = "".join

    def encode(obj: Any) -> str:
        if isinstance(obj, str):
            return json.encoder.encode_basestring(obj)
        return join(c_encode(obj, 0))

    return encode


_encode = _make_encoder()
_loads = json.loads
_sha256 = hashlib.sha256


def check_columns(columns: list[Column]) -> list[str]:
    """Problems with a request relation's columns (empty list when it is fine).

    Names are compared case-insensitively, as BigQuery does.
    """
    problems: list[str] = []
    by_name = {c.name.lower(): c for c in columns}
    request = by_name.get("request")
    if request is None:
        problems.append("the request relation has no `request` column")
    else:
        rtype = request.type.strip().upper()
        if rtype not in REQUEST_TYPES:
            problems.append(f"column `request` has type {request.type}; it must be JSON or STRING")
    for col in columns:
        lname = col.name.lower()
        if lname in RESERVED_COLUMNS:
            problems.append(
                f"column `{col.name}` uses a name reserved for the batch output "
                f"({', '.join(RESERVED_COLUMNS)}); rename it"
            )
            continue
        if lname == "request":
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
    """JSON text with sorted keys, compact separators and non-ASCII kept (NaN/Infinity refused)."""
    return _encode(obj)


def request_hash(request: str | dict, model: str) -> str:
    """SHA-256 hex of ``canonical_json(request) + "\\n" + model``; JSON text is parsed first."""
    if isinstance(request, (str, bytes, bytearray)):
        request = _loads(request)
    return _sha256((_encode(request) + "\n" + model).encode()).hexdigest()


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
