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

import difflib
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Callable

import orjson

if TYPE_CHECKING:  # only for the annotation; keeps this module free of warehouse imports
    from batchflow.warehouse.base import Column

#: Column names Vertex writes into the output table; an input column may not use them.
RESERVED_COLUMNS = ("response", "status", "processed_time")

#: Columns batchflow adds to a batch model's relation; an input column may not use them either.
BOOKKEEPING_COLUMNS = ("request_hash", "job_name", "model_name", "attempt")


def reserved_column_problems(names: list[str], embedding: bool = False) -> list[str]:
    """Problems with a batch model's column names: no `request`, or a reserved name in any letter case
    (BigQuery compares column names case-insensitively). An embedding model's relation also holds
    `predictions` (`EMBEDDING_OUTPUT_COLUMNS`)."""
    problems = []
    if "request" not in {n.lower() for n in names}:
        builder = "embedding_request" if embedding else "gemini_request"
        problems.append("the SELECT has no `request` column: a batch model's SELECT must return a JSON "
                        f"`request` column (build it with {{{{ {builder}(...) }}}} ... as request)")
    reserved = RESERVED_COLUMNS + (("predictions",) if embedding else ())
    vertex = [f"`{n}`" for n in names if n.lower() in reserved]
    if vertex:
        problems.append(f"column(s) {', '.join(vertex)} use names reserved for the columns Vertex writes "
                        f"({', '.join(reserved)}, in any letter case); rename them")
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


def check_columns(columns: list[Column], embedding: bool = False) -> list[str]:
    """Problems with a request relation's columns (empty list when it is fine): the names
    (`reserved_column_problems`), then the types Vertex accepts.

    Names are compared case-insensitively, as BigQuery does.
    """
    problems = reserved_column_problems([c.name for c in columns], embedding)
    request = {c.name.lower(): c for c in columns}.get("request")
    if request is not None and request.type.strip().upper() not in REQUEST_TYPES:
        problems.append(f"column `request` has type {request.type}; it must be JSON or STRING")
    for col in columns:
        lname = col.name.lower()
        if lname == "request" or lname in RESERVED_COLUMNS or lname in BOOKKEEPING_COLUMNS or lname == "predictions":
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
    request = _as_object(request)
    if isinstance(request, str):
        return request
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
    unparsable text included): hashing and validating a row with a single JSON parse. For an
    embedding model (`is_embedding_model`) the rules are `embedding_request_problem`'s."""
    return request_hasher(model)(request)


def request_hasher(model: str) -> Callable[[str | bytes | None], str | None]:
    """`valid_request_hash` for one model, with the model's rules and hash suffix looked up once rather
    than per row (a build hashes every row of the model: at 1M rows each microsecond is a second)."""
    check = embedding_request_problem if is_embedding_model(model) else request_problem
    suffix = b"\n" + model.encode()

    def hash_one(request: str | bytes | None) -> str | None:
        if request is None:
            return None
        try:
            parsed = _loads(request)
        except ValueError:
            return None
        if check(parsed) is not None:
            return None
        digest = _sha256(_canonical_bytes(parsed))
        digest.update(suffix)
        return digest.hexdigest()

    return hash_one


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


# -- embedding batch models (contract §3) ------------------------------------------------------------
# A text-embedding model runs as a Vertex batch job BigQuery in / BigQuery out with its own contract:
# the input table holds the predict instance's fields as columns (`content`, and optionally
# `task_type`, `title`), the job takes the predict parameters (`outputDimensionality`,
# `autoTruncate`) once, as its `modelParameters`, and the output table holds the input columns plus
# `predictions` (JSON text `[{"embeddings": {"statistics": {"token_count": 8, "truncated": false},
# "values": [...]}}]`) and `status`. A batch model of an embedding model still builds one JSON
# `request` per row (`embedding_request(...)`), so hashing, diffing and reuse work as for Gemini:
#
#     {"content": "<one text>", "task_type": "RETRIEVAL_DOCUMENT", "title": "...",
#      "parameters": {"outputDimensionality": 256, "autoTruncate": false}}

#: Model names (the last path segment, any `@version` kept) of the text-embedding families whose batch
#: jobs take BigQuery tables.
EMBEDDING_MODEL_PATTERN = re.compile(r"^(text-embedding-|text-multilingual-embedding-|textembedding-gecko)")

#: Embedding models whose batch jobs read Cloud Storage JSONL only (contract §3): refused.
GCS_ONLY_EMBEDDING_PATTERN = re.compile(r"^(gemini-embedding-|multimodalembedding)")

#: The fields of a text-embedding predict instance, which become input table columns.
EMBEDDING_INSTANCE_FIELDS = ("content", "task_type", "title")

#: The predict parameters (TextEmbeddingPredictionParams), one set per job.
EMBEDDING_PARAMETERS = ("outputDimensionality", "autoTruncate")

#: Task types of the text-embedding models (EmbedContentRequest.EmbeddingTaskType).
EMBEDDING_TASK_TYPES = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
                        "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")

#: Dimensions of the text-embedding models' vectors by default, and the most `outputDimensionality` asks.
EMBEDDING_DIMENSIONS = 768

#: "Each request can include up to 30,000 prompts" (contract §3): rows per embedding batch job, at most.
EMBEDDING_MAX_ROWS_PER_JOB = 30_000

#: Tokens of one text a text-embedding model reads; longer texts are truncated (autoTruncate, the
#: default) or fail the row with 400 INVALID_ARGUMENT (autoTruncate false).
EMBEDDING_MAX_TEXT_TOKENS = 2048

#: Column names Vertex writes into an embedding job's output table.
EMBEDDING_OUTPUT_COLUMNS = ("predictions", "status")



def _as_object(request: Any) -> dict | str:
    """The request as a dict (parsed from JSON text), or the problem that stops it being one."""
    if request is None:
        return "request is NULL"
    if isinstance(request, (str, bytes, bytearray)):
        try:
            request = _loads(request)
        except ValueError as exc:
            return f"request is not valid JSON: {exc}"
    if not isinstance(request, dict):
        return f"request is not a JSON object (got {_json_kind(request)})"
    return request

def _model_name(model: str) -> str:
    return model.rsplit("/", 1)[-1].strip().lower()


def is_embedding_model(model: str | None) -> bool:
    """True for a text-embedding model Vertex batch runs BigQuery in / BigQuery out."""
    return bool(model) and EMBEDDING_MODEL_PATTERN.match(_model_name(model)) is not None


def batch_model_problem(model: str | None, fallback_model: str | None = None) -> tuple[str, str] | None:
    """Why a batch model's `model` (and `fallback_model`) cannot run as a BigQuery batch job, as
    (the config key at fault, the message), or None.

    Refuses the embedding models whose batch contract is Cloud Storage JSONL only, and a fallback of
    another kind than the model (a Gemini row cannot be resent to an embedding model)."""
    for key, name in (("model", model), ("fallback_model", fallback_model)):
        if name and GCS_ONLY_EMBEDDING_PATTERN.match(_model_name(name)):
            return key, (f"`{key}:` {name!r} runs Vertex batch jobs from Cloud Storage JSONL only: Vertex does not "
                    "take BigQuery tables for it, and batchflow's batch models are BigQuery in and out; use a "
                    "text-embedding model for batch embeddings (text-embedding-005, or "
                    "text-multilingual-embedding-002 for other languages)")
    if model and fallback_model and is_embedding_model(model) != is_embedding_model(fallback_model):
        kinds = ("an embedding", "a Gemini") if is_embedding_model(model) else ("a Gemini", "an embedding")
        return "fallback_model", (f"`fallback_model:` {fallback_model!r} is {kinds[1]} model but `model:` {model!r} is {kinds[0]} "
                "model; rows can only be resent to a model of the same kind")
    return None


def _did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    if not close:
        close = difflib.get_close_matches(value.upper(), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def embedding_request_problem(request: str | bytes | dict | None) -> str | None:
    """Why one embedding request is invalid, or None when it is fine.

    Checks: JSON text that parses, a JSON object with only the keys `content`, `task_type`, `title`
    and `parameters`; `content` one non-empty text (a string: an array would be several texts, and a
    batch row embeds one); `task_type` one of EMBEDDING_TASK_TYPES; `title` a string, only with task
    type RETRIEVAL_DOCUMENT; `parameters` an object of `outputDimensionality` (an integer from 1 to
    EMBEDDING_DIMENSIONS) and `autoTruncate` (a boolean)."""
    request = _as_object(request)
    if isinstance(request, str):
        return request
    allowed = EMBEDDING_INSTANCE_FIELDS + ("parameters",)
    for key in request:
        if key not in allowed:
            if key == "contents":
                return ("request has `contents`, a Gemini request; an embedding model takes "
                        "{{ embedding_request(content) }}")
            return (f"request has unknown key {json.dumps(key)}{_did_you_mean(key, allowed)} (an embedding request "
                    f"holds {', '.join(allowed)})")
    content = request.get("content")
    if content is None:
        return "request has no `content` (the text to embed)"
    if isinstance(content, list):
        return f"`content` is an array of {len(content)} value(s): an embedding row embeds one text, give one row per text"
    if not isinstance(content, str):
        return f"`content` is not a string (got {_json_kind(content)})"
    if not content.strip():
        return "`content` is empty"
    task_type = request.get("task_type")
    if task_type is not None:
        if not isinstance(task_type, str):
            return f"`task_type` is not a string (got {_json_kind(task_type)})"
        if task_type not in EMBEDDING_TASK_TYPES:
            return (f"`task_type` {json.dumps(task_type)} is not a task type{_did_you_mean(task_type, EMBEDDING_TASK_TYPES)} "
                    f"({', '.join(EMBEDDING_TASK_TYPES)})")
    title = request.get("title")
    if title is not None:
        if not isinstance(title, str):
            return f"`title` is not a string (got {_json_kind(title)})"
        if task_type != "RETRIEVAL_DOCUMENT":
            return "`title` is only accepted with task_type RETRIEVAL_DOCUMENT"
    parameters = request.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            return f"`parameters` is not an object (got {_json_kind(parameters)})"
        for key, value in parameters.items():
            if key not in EMBEDDING_PARAMETERS:
                return (f"`parameters` has unknown key {json.dumps(key)}{_did_you_mean(key, EMBEDDING_PARAMETERS)} "
                        f"({', '.join(EMBEDDING_PARAMETERS)})")
            if key == "outputDimensionality" and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= EMBEDDING_DIMENSIONS):
                return (f"`outputDimensionality` must be an integer from 1 to {EMBEDDING_DIMENSIONS}, "
                        f"got {json.dumps(value)}")
            if key == "autoTruncate" and value is not None and not isinstance(value, bool):
                return f"`autoTruncate` must be true or false, got {json.dumps(value)}"
    return None


def embedding_parameters(request: str | bytes | dict | None) -> dict[str, Any]:
    """The `parameters` of an embedding request (nulls left out): the job's modelParameters."""
    if isinstance(request, (str, bytes, bytearray)):
        request = _loads(request)
    parameters = (request or {}).get("parameters") if isinstance(request, dict) else None
    return {k: v for k, v in (parameters or {}).items() if v is not None} if isinstance(parameters, dict) else {}
