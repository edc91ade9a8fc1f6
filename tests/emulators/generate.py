"""An online Gemini emulator on 127.0.0.1: `:generateContent` and the embedding calls, for tests.

It never imports batchflow. Answers come from `gemini.py` (the same deterministic answerer the Vertex
batch emulator writes into its output tables), so an online answer and a batch answer to the same
request are the same REST JSON; embeddings come from `embeddings.py`, as the batch emulator's do.

Paths it serves (what google-genai 3.x sends, contract §4.4):

    Vertex AI (`Client(vertexai=True, project=, location=, credentials=)`; header `Authorization: Bearer`)
      POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/{pub}/models/{m}:generateContent
      POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/{pub}/models/{m}:embedContent   (gemini-embedding)
      POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/{pub}/models/{m}:predict        (text-embedding-*)
      GET  /{v1|v1beta1}/publishers/google/models                                               (list, check)
    Gemini Developer API (`Client(api_key=)`; header `x-goog-api-key`)
      POST /{v1|v1beta}/models/{m}:generateContent
      POST /{v1|v1beta}/models/{m}:embedContent | :batchEmbedContents
      GET  /{v1|v1beta}/models                                                                   (list, check)

A call without its credential header gets 401 UNAUTHENTICATED; a failed row of `gemini.py` (a 400, or a
row rule's 429/500) is answered as that HTTP error with its google.rpc body, as the online API does.

Test knobs:
- `emu.row_rules = [{"when_prompt_contains": "...", "outcome": "transient_error", "limit": 2}, ...]`
  (gemini.py's outcomes; `limit` counts over the emulator's life).
- `emu.faults = [429, 503, (429, {"Retry-After": "7"}), "drop", ...]`: consumed one per answering call
  (generate or embed), in order, before any answer: the first N calls fail so. An int answers with
  that HTTP error; a tuple adds response headers; "drop" closes the connection without an answer.
- `emu.fault_rule = callable(call) -> fault | None`: decides a fault per call by rule (after `faults`).
- `emu.retry_info = "3s"`: 429 bodies carry a google.rpc.RetryInfo detail (`retryDelay`), as the Gemini
  API's do.
- `emu.gate`: a `threading.Event`, set by default; clear it and answering calls wait on it (counted in
  `emu.in_flight` while they wait), so a test can see how many calls a client keeps in flight at
  once. `emu.max_in_flight` is the most ever seen; `emu.wait_in_flight(n)` blocks until n wait.
- `emu.calls` records every request (`Call`); `emu.count("generate")`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from .gemini import RowRule, answer

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}
_VERTEX = re.compile(r"^/(?P<v>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/"
                     r"publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_GEMINI = re.compile(r"^/(?P<v>v1|v1beta)/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_LIST = re.compile(r"^/(v1|v1beta1)/publishers/google/models$|^/(v1|v1beta)/models$")
ANSWERING = {"generateContent": "generate", "embedContent": "embed", "batchEmbedContents": "embed",
             "predict": "embed"}


@dataclass
class Call:
    """One HTTP request as the emulator received it, and what it answered."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    op: str | None  # generate | embed | list | None (unrouted)
    api: str | None  # vertex | gemini
    model: str | None
    status_code: int | None = None  # 0: the connection was dropped


@dataclass
class GenerateEmulator:
    """The server (see the module docstring); `start()` it, point a client at `url`, `stop()` it."""

    row_rules: list = field(default_factory=list)
    faults: list = field(default_factory=list)
    fault_rule: Callable[[Call], Any] | None = None
    retry_info: str | None = None
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.row_rules = [RowRule.parse(r) for r in self.row_rules]
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> "GenerateEmulator":
        emu = self

        class Handler(_Handler):
            pass

        Handler.emu = emu
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="generate-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- test helpers ----------------------------------------------------------------------------
    def count(self, op: str) -> int:
        """Calls of one kind received (faulted ones included)."""
        with self._lock:
            return sum(1 for c in self.calls if c.op == op)

    def answered(self, op: str = "generate") -> list[Call]:
        """Calls of one kind answered with 200."""
        with self._lock:
            return [c for c in self.calls if c.op == op and c.status_code == 200]

    def wait_in_flight(self, n: int, timeout: float = 30.0) -> bool:
        """Block until at least `n` answering calls wait at the closed gate."""
        with self._lock:
            return self._lock.wait_for(lambda: self.in_flight >= n, timeout)

    # -- the answer --------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[Call, int, Any, dict]:
        path = path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        call = Call(method, path, body, headers, None, None, None)
        m = _VERTEX.match(path)
        g = None if m else _GEMINI.match(path)
        if m or g:
            match = m or g
            call.api, call.model = ("vertex" if m else "gemini"), match["model"]
            call.op = ANSWERING.get(match["method"])
        elif _LIST.match(path) and method == "GET":
            call.op, call.api = "list", "vertex" if "publishers" in path else "gemini"
        with self._lock:
            self.calls.append(call)
        if call.op is None or (call.op != "list" and method != "POST"):
            return call, *_error(404, f"The requested URL {path} was not found on this server.")
        if call.api == "vertex" and not headers.get("authorization", "").startswith("Bearer "):
            return call, *_error(401, "Request is missing required authentication credential.")
        if call.api == "gemini" and not headers.get("x-goog-api-key"):
            return call, *_error(403, "Method doesn't allow unregistered callers. Please use API Key.")
        if call.op == "list":
            return call, 200, {"models": [{"name": "models/gemini-2.5-flash"}],
                               "publisherModels": [{"name": "publishers/google/models/gemini-2.5-flash"}]}, {}
        fault = self._fault(call)
        if fault is not None:
            return (call, 0, None, {}) if fault == "drop" else (call, *self._fault_answer(fault))
        if not isinstance(body, dict):
            return call, *_error(400, "Invalid JSON payload received.")
        if call.op == "generate":
            return call, *self._generate(call.model, body)
        return call, *self._embed(call, body)

    def _fault(self, call: Call) -> Any:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
        return self.fault_rule(call) if self.fault_rule is not None else None

    def _fault_answer(self, fault: Any) -> tuple[int, dict, dict]:
        code, headers = (fault if isinstance(fault, tuple) else (fault, {}))
        message = {429: "Resource exhausted. Please try again later.", 500: "Internal error encountered.",
                   503: "The service is currently unavailable."}.get(code, "Request failed.")
        status, body, _ = _error(code, message)
        if code == 429 and self.retry_info:
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                         "retryDelay": self.retry_info}]
        return status, body, dict(headers)

    def _generate(self, model: str, request: dict) -> tuple[int, dict, dict]:
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        result = answer(request, model, self.row_rules, now)
        if result.status:  # a failed row is an HTTP error online: `<Reason>: {google.rpc error}`
            error = json.loads(result.status.split(": ", 1)[1])
            return error["error"]["code"], error, {}
        return 200, result.response, {}

    def _embed(self, call: Call, body: dict) -> tuple[int, dict, dict]:
        """Each text answered by embeddings.py (the batch emulator's embedding model); a failed text fails
        the call with its error, as the online API does."""
        from . import embeddings

        instances, parameters = _embed_instances(body)
        predictions = []
        for instance in instances:
            result = embeddings.answer(instance, call.model, parameters, self.row_rules)
            if result.status:
                error = json.loads(result.status.split(": ", 1)[1])
                return error["error"]["code"], error, {}
            predictions.append(result.response[0])
        if call.path.endswith(":predict"):  # Vertex text-embedding models
            return 200, {"predictions": predictions}, {}
        vectors = [{"values": p["embeddings"]["values"]} for p in predictions]  # the Gemini API: no statistics
        if call.path.endswith(":batchEmbedContents"):
            return 200, {"embeddings": vectors}, {}
        return 200, {"embedding": vectors[0]}, {}


def _embed_instances(body: dict) -> tuple[list[dict], dict]:
    """(instances as content/task_type/title, parameters) of a :predict, :embedContent or
    :batchEmbedContents body."""
    if "instances" in body:  # Vertex :predict
        return list(body["instances"]), dict(body.get("parameters") or {})
    requests = body["requests"] if "requests" in body else [body]  # Gemini :batchEmbedContents / :embedContent
    instances, parameters = [], {}
    for r in requests:
        text = "".join(p.get("text", "") for p in (r.get("content") or {}).get("parts", []))
        instance = {"content": text}
        for src, dst in (("taskType", "task_type"), ("title", "title")):
            if r.get(src) is not None:
                instance[dst] = r[src]
        if r.get("outputDimensionality") is not None:
            parameters["outputDimensionality"] = r["outputDimensionality"]
        instances.append(instance)
    return instances, parameters


def _error(code: int, message: str, status: str | None = None) -> tuple[int, dict, dict]:
    return code, {"error": {"code": code, "message": message, "status": status or _RPC_STATUS.get(code, "UNKNOWN")}}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emu: GenerateEmulator

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        emu = self.emu
        answering = self.command == "POST" and any(self.path.split("?")[0].endswith(":" + m) for m in ANSWERING)
        if answering and not emu.gate.is_set():
            with emu._lock:
                emu.in_flight += 1
                emu.max_in_flight = max(emu.max_in_flight, emu.in_flight)
                emu._lock.notify_all()
            emu.gate.wait()
            with emu._lock:
                emu.in_flight -= 1
        elif answering:
            with emu._lock:
                emu.max_in_flight = max(emu.max_in_flight, emu.in_flight + 1)
        call, status, body, extra = emu._dispatch(self.command, self.path, headers, raw)
        call.status_code = status
        if status == 0:
            self.close_connection = True
            return
        data = json.dumps(body).encode()
        try:
            self.send_response(status, _REASONS.get(status))
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def vertex_client(base_url: str, project: str = "p1", location: str = "us-central1"):
    """`genai.Client(vertexai=True, ...)` with a static bearer token, talking to `base_url`."""
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    return genai.Client(vertexai=True, project=project, location=location,
                        credentials=google.oauth2.credentials.Credentials(token="test"),
                        http_options=types.HttpOptions(base_url=base_url))


def gemini_client(base_url: str, api_key: str = "test-key"):
    """`genai.Client(api_key=...)` (the Gemini Developer API) talking to `base_url`."""
    from google import genai
    from google.genai import types

    return genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=base_url))


@pytest.fixture
def generate_emulator() -> Iterator[GenerateEmulator]:
    """A started emulator; stopped after the test."""
    emu = GenerateEmulator().start()
    try:
        yield emu
    finally:
        emu.stop()
