"""The Vertex emulator's own text-embedding model: answers to embedding batch rows (contract §3).

Written from the contract, never importing batchflow: batchflow's mock provider implements the same
documented derivation on its own, so a test can check that the same rows get the same vectors through
both backends (and a bug in one cannot hide in the other).

An embedding batch job (model `publishers/google/models/text-embedding-*`,
`text-multilingual-embedding-*`, `textembedding-gecko*`) reads the instance fields from its input
table's columns: `content` (required), `task_type` and `title` (optional); its parameters
(`outputDimensionality`, `autoTruncate`) come once per job, in the create body's `modelParameters`.
Its output table is the input columns, then `predictions` (STRING, JSON text) and `status` (STRING);
no `processed_time`.

The contract of the test doubles (identical in batchflow/batch/providers/mock.py): a row's answer
depends on its `content` text and the job's parameters only (not on task_type or title):
- tokens: n = the matches of the regex ``\\w+|[^\\w\\s]`` in the text (Python `re`, Unicode);
  ``truncated = n > 2048``, ``token_count = min(n, 2048)``; with ``autoTruncate: false`` a text of
  more than 2,048 tokens is a 400 INVALID_ARGUMENT row error instead.
- dimension d = `outputDimensionality`, else 768.
- raw values: the 4-byte big-endian unsigned integers u_0, u_1, ... of the byte stream
  ``SHA-256(utf8(text) + b"\\x00" + ascii(str(k)))`` for k = 0, 1, 2, ... concatenated (8 integers a
  digest); ``raw_i = u_i / 2**31 - 1`` for i < d.
- ``values_i = raw_i / sqrt(math.fsum(raw_j * raw_j for j < d))``: a unit vector.
- ``predictions = [{"embeddings": {"statistics": {"token_count": ..., "truncated": ...}, "values": [...]}}]``.

Rows fail (no predictions, a status) when `content` is NULL or blank (400 INVALID_ARGUMENT), when
`task_type` is not a known task type (400), and for the emulator's row rules (gemini.RowRule,
matching on the content; outcomes transient_error, server_error, failed_precondition and bad_request
apply, the Gemini-only ones answer normally). A bad `outputDimensionality` (not 1..768) fails every
row with 400, as the online API answers it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from .gemini import _ERRORS, RowResult, RowRule, row_status

MODEL = re.compile(r"^(text-embedding-|text-multilingual-embedding-|textembedding-gecko)")
DEFAULT_DIMENSIONS = 768
MAX_TOKENS = 2048
TASK_TYPES = ("RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
              "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY")
INSTANCE_FIELDS = ("content", "task_type", "title")
#: the columns an embedding job appends to its input columns
OUTPUT_COLUMNS = (("predictions", "STRING"), ("status", "STRING"))
_TOKEN = re.compile(r"\w+|[^\w\s]")


def is_embedding_model(model: str) -> bool:
    """`publishers/google/models/text-embedding-005` (or a bare name) is a text-embedding model."""
    return MODEL.match(model.rsplit("/", 1)[-1]) is not None


def tokens(text: str) -> int:
    """The double's token count: word runs and single non-space symbols."""
    return len(_TOKEN.findall(text))


def vector(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The unit vector of `text` (see the module docstring)."""
    stream = b""
    k = 0
    seed = text.encode("utf-8") + b"\x00"
    while len(stream) < 4 * dimensions:
        stream += hashlib.sha256(seed + str(k).encode("ascii")).digest()
        k += 1
    raw = [int.from_bytes(stream[4 * i: 4 * i + 4], "big") / 2**31 - 1 for i in range(dimensions)]
    length = math.sqrt(math.fsum(x * x for x in raw))
    return [x / length for x in raw]


def parameter_problem(parameters: dict[str, Any]) -> str | None:
    """Why a job's `modelParameters` cannot be used, or None."""
    unknown = sorted(set(parameters) - {"outputDimensionality", "autoTruncate"})
    if unknown:
        return f"Unknown model parameter {unknown[0]!r} for text embedding models."
    dims = parameters.get("outputDimensionality")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= DEFAULT_DIMENSIONS):
        return f"outputDimensionality {dims!r} is not supported by this model (1 to {DEFAULT_DIMENSIONS})."
    truncate = parameters.get("autoTruncate")
    if truncate is not None and not isinstance(truncate, bool):
        return f"autoTruncate must be a boolean, got {truncate!r}."
    return None


def answer(instance: dict[str, Any], model: str, parameters: dict[str, Any], rules: list[RowRule]) -> RowResult:
    """The answer to one input row (`instance`: its content / task_type / title cells)."""
    problem = parameter_problem(parameters)
    if problem is not None:
        return RowResult(None, row_status(400, problem, "INVALID_ARGUMENT"), "invalid")
    text = instance.get("content")
    if not isinstance(text, str) or not text.strip():
        return RowResult(None, row_status(400, "The text content is empty.", "INVALID_ARGUMENT"), "invalid")
    task = instance.get("task_type")
    if task is not None and task not in TASK_TYPES:
        return RowResult(None, row_status(400, f"Unsupported task type: {task}.", "INVALID_ARGUMENT"), "invalid")
    name = model.rsplit("/", 1)[-1]
    for rule in rules:
        if rule.outcome in _ERRORS and rule.take(text, name):
            code, message, status = _ERRORS[rule.outcome]
            return RowResult(None, row_status(code, message, status), rule.outcome)
    n = tokens(text)
    if n > MAX_TOKENS and parameters.get("autoTruncate") is False:
        return RowResult(None, row_status(400, f"Input of {n} tokens is longer than the maximum of {MAX_TOKENS} "
                                               "tokens and autoTruncate is false.", "INVALID_ARGUMENT"), "invalid")
    values = vector(text, parameters.get("outputDimensionality") or DEFAULT_DIMENSIONS)
    prediction = [{"embeddings": {"statistics": {"token_count": min(n, MAX_TOKENS), "truncated": n > MAX_TOKENS},
                                  "values": values}}]
    return RowResult(prediction, "", "truncated" if n > MAX_TOKENS else "ok")


def predictions_text(result: RowResult) -> str | None:
    """The `predictions` cell of a row (JSON text, as the docs' BigQuery output example shows)."""
    return None if result.response is None else json.dumps(result.response)
