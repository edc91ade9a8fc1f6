"""The one small interface every local-executor provider implements, plus shared helpers.

A provider answers Gemini `GenerateContentRequest` dicts with Gemini `GenerateContentResponse` dicts
(REST camelCase JSON, exactly as Vertex batch writes them into the `response` column), or with a row
error in Vertex's `status` text format: ``<HTTP reason phrase>: <google.rpc error JSON>``, e.g.
``Bad Request: {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from http import HTTPStatus
from typing import Any, Protocol, Sequence

import orjson

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_orjson_loads = orjson.loads
_json_loads = json.loads


class ProviderResult:
    """The answer to one request: `response` (None on a row error) and `status` ("" on success).

    A provider may hand over the response as JSON text instead (`text=`, what the mock does to stay
    fast on million-row jobs): `response` then parses it on first access, and `response_text()`
    returns it without re-encoding. Treat `response` as read-only.
    """

    __slots__ = ("_response", "_text", "status")

    def __init__(self, response: dict | None = None, status: str = "", *, text: str | None = None):
        self._response = response
        self._text = text
        self.status = status

    @property
    def response(self) -> dict | None:
        if self._response is None and self._text is not None:
            self._response = json.loads(self._text)
        return self._response

    def response_text(self) -> str | None:
        """The response as compact JSON text (None for a row error)."""
        if self._text is None and self._response is not None:
            self._text = _dumps(self._response)
        return self._text

    @property
    def ok(self) -> bool:
        return self.status == ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProviderResult):
            return NotImplemented
        return self.status == other.status and self.response == other.response

    def __repr__(self) -> str:
        body = self._text if self._text is not None else self._response
        return f"ProviderResult(response={body!r}, status={self.status!r})"


class Provider(Protocol):
    """Answers batches of requests. Never raises for one bad row: it returns a row error instead.

    Everything the local executor uses is declared here (`BaseProvider` gives the defaults); it
    probes for nothing:

    - ``cpu_bound``: answers cost CPU only (no network, no shared state across calls). The executor
      then answers on one thread (more add no CPU under the GIL, only switching) and, where CPUs are
      to spare, answers big jobs in worker processes, each holding a pickled copy of the provider.
      Only declare it True when a copy answers exactly as the original.
    - ``encodes_json``: every response text it returns comes out of a JSON encoder (it answers with
      dicts, or encodes its own texts), so the warehouse stores it without parsing it again (on
      DuckDB, parsing costs ~0.5 s per 200k Gemini responses). False: each text is parsed on commit
      and a text that is not JSON fails the job instead of landing.
    - ``generate_json(model, texts, hashes=None) -> (responses, statuses)``: the same answers as
      `generate`, but from the `request` column's JSON text (None for NULL) to columns:
      ``responses[i]`` the response as compact JSON text (None for a failed row), ``statuses[i]`` its
      status ("" on success). Rows that are not JSON objects get `parse_request`'s 400 status. The
      executor passes `hashes` (each row's ``request_hash(request, model)``, or None) when the input's
      `request_hash` column was computed for this model; a provider may ignore it. `BaseProvider`'s
      parses each text and calls `generate`; the mock has its own: parsing, answering and dropping
      each row in turn keeps a million-row job from building a chunk of request dicts.
    """

    name: str
    cpu_bound: bool
    encodes_json: bool

    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        """One result per request, in the same order."""

    def generate_json(
        self, model: str, texts: Sequence[str | bytes | None], hashes: Sequence[str | None] | None = None
    ) -> tuple[list, list[str]]:
        """`generate` over request texts, as columns (see above)."""

    def check(self) -> str:
        """Make one real call (or none, for an in-process provider) and say what answered; raise
        ExecutionError when nothing does (`batchflow debug`)."""

    def embed_json(self, model: str, instances: Sequence[dict], parameters: dict) -> tuple[list, list[str]]:
        """An embedding job's rows (contract §3) → (predictions, statuses) columns. `instances[i]` is
        row i's predict instance (`content`, and `task_type` / `title` when the job's input has them,
        None for NULL cells); `parameters` the job's (`outputDimensionality`, `autoTruncate`).
        ``predictions[i]`` is Vertex's JSON text
        ``[{"embeddings": {"statistics": {"token_count": n, "truncated": b}, "values": [...]}}]`` (None
        for a failed row), ``statuses[i]`` "" or the row's error status."""


class BaseProvider(ABC):
    """The defaults of `Provider` for a provider to inherit: not CPU-bound (threads answer it, never
    worker processes), and `generate_json` through `generate`, which each provider must write."""

    name: str = "provider"
    cpu_bound: bool = False
    encodes_json: bool = False  # a subclass may hand over raw texts (`ProviderResult(text=...)`)

    @abstractmethod
    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        """One result per request, in the same order."""

    def generate_json(
        self, model: str, texts: Sequence[str | bytes | None], hashes: Sequence[str | None] | None = None
    ) -> tuple[list, list[str]]:
        return generate_json(self, model, texts)  # the module function: `hashes` is only a shortcut

    def check(self) -> str:
        return f"{self.name} answers in this process"

    def embed_json(self, model: str, instances: Sequence[dict], parameters: dict) -> tuple[list, list[str]]:
        """Providers answer Gemini requests unless they say otherwise: every row fails with 501."""
        failure = error_status(501, f"provider {self.name} does not answer embedding models such as {model}")
        return [None] * len(instances), [failure] * len(instances)


def predictions_text(values: Sequence[float], token_count: int, truncated: bool) -> str:
    """Vertex's `predictions` JSON text for one embedded text (contract §3)."""
    body = {"embeddings": {"statistics": {"token_count": int(token_count), "truncated": bool(truncated)},
                           "values": [float(v) for v in values]}}
    return _dumps([body])


#: google.rpc canonical codes for the HTTP statuses Vertex maps them to.
RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def http_reason(code: int) -> str:
    """The HTTP reason phrase (`Too Many Requests` for 429); `Client Closed Request` for 499."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Client Closed Request" if code == 499 else ("Bad Request" if code < 500 else "Internal Server Error")


def rpc_status(code: int) -> str:
    """The google.rpc status name for an HTTP code (UNKNOWN when there is no mapping)."""
    if code in RPC_STATUS:
        return RPC_STATUS[code]
    if 400 <= code < 500:
        return "FAILED_PRECONDITION"
    if code >= 500:
        return "INTERNAL"
    return "UNKNOWN"


def error_status(code: int, message: str, status: str | None = None) -> str:
    """Vertex's row `status` text: ``<reason>: {"error": {"code": .., "message": .., "status": ..}}``."""
    body = {"error": {"code": code, "message": message, "status": status or rpc_status(code)}}
    return f"{http_reason(code)}: {json.dumps(body)}"


def row_error(code: int, message: str, status: str | None = None) -> ProviderResult:
    """A failed row: no response, Vertex status text."""
    return ProviderResult(None, error_status(code, message, status))


NULL_REQUEST = error_status(400, "Request is empty (NULL).", "INVALID_ARGUMENT")
NOT_AN_OBJECT = error_status(400, "Invalid JSON payload received. Request is not a JSON object.")


def loads_request(text: str | bytes) -> Any:
    """Parse one `request` value: orjson (4-5x faster than json), falling back to json for what orjson
    refuses and json accepts (NaN, Infinity, 1e999, lone surrogates), so the same texts parse as
    before. Integers beyond 64 bits become floats, as orjson (and Vertex's proto JSON) reads them.
    Raises ValueError with json's message for text that is not JSON."""
    try:
        return _orjson_loads(text)
    except ValueError:
        return _json_loads(text)


def parse_request(text: str | bytes | None) -> tuple[dict | None, str]:
    """A `request` column value → ``(request, "")``, or ``(None, status)`` with Vertex's 400 row status
    for NULL, text that is not JSON, and JSON that is not an object."""
    if text is None:
        return None, NULL_REQUEST
    try:
        request = loads_request(text)
    except ValueError as exc:
        return None, error_status(400, f"Invalid JSON payload received. {exc}", "INVALID_ARGUMENT")
    if type(request) is not dict:
        return None, NOT_AN_OBJECT
    return request, ""


def generate_json(provider: Provider, model: str, texts: Sequence[str | bytes | None]) -> tuple[list, list[str]]:
    """``provider.generate`` over request texts, as columns (see `Provider`): the generic form of
    `generate_json` for providers without their own. May raise what `generate` raises."""
    n = len(texts)
    responses: list[str | None] = [None] * n
    statuses: list[str] = [""] * n
    requests: list[dict] = []
    positions: list[int] = []
    for i, text in enumerate(texts):
        request, status = parse_request(text)
        if status:
            statuses[i] = status
        else:
            requests.append(request)
            positions.append(i)
    if requests:
        results = provider.generate(model, requests)
        if len(results) != len(requests):
            raise RuntimeError(f"returned {len(results)} results for {len(requests)} requests")
        for i, result in zip(positions, results):
            if result.status:
                statuses[i] = result.status
            else:
                text = result.response_text()
                if text is None:
                    statuses[i] = error_status(500, "provider returned neither a response nor an error")
                else:
                    responses[i] = text
    return responses, statuses


def as_list(value: Any) -> list:
    """`parts` arrive as a list or (legacy) a single object; always give a list."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def get2(obj: dict, camel: str, snake: str, default: Any = None) -> Any:
    """A request field under its camelCase or snake_case name (proto-JSON accepts both)."""
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake, default)
    return value


def system_text(request: dict) -> str:
    """Text of `systemInstruction` (a Content, a list of parts, or a plain string)."""
    si = get2(request, "systemInstruction", "system_instruction")
    if si is None:
        return ""
    if isinstance(si, str):
        return si
    if isinstance(si, list):
        parts = si
    elif isinstance(si, dict):
        parts = as_list(si.get("parts")) if "parts" in si else [si]
    else:
        return ""
    return "\n".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
