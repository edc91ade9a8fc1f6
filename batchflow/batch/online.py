"""The online batch backend: each request answered at once by google-genai, written as a batch job's output.

`batchflow run --online` (or a target's ``batch: {backend: online}``) sends every request of a job to
`client.models.generate_content` (Vertex AI with application default credentials, or the Gemini
Developer API with an API key) and writes the answers into the job's output table with exactly the
shape a Vertex batch job gives (contract §2.2): the input columns, then `response` (the REST
`GenerateContentResponse` JSON, camelCase, as the service sent it), `status` ("" on success,
``<HTTP reason>: <google.rpc error JSON>`` otherwise) and `processed_time`. Flatten models cannot tell
an online answer from a batch one.

The job mechanics are the local executor's (`LocalBackend`: read the input through the warehouse
protocol in chunks, commit answered chunks as they come, cancel, live counts); this module supplies the
answerer, `GenaiAnswerer`, in the executor's provider role. Requests go out on one shared pool of
`concurrency` threads (the bound on calls in flight, whatever the chunking). A call that fails with 429
or a 5xx (or never reaches the server) is retried with exponential backoff and jitter (tenacity),
waiting what the server asks for when it says (a `Retry-After` header, or a google.rpc `RetryInfo`
detail); other 4xx answers are final. A call that still fails becomes a failed row with the error's
status text, which the lifecycle resends in its next round when the error is transient, as it does for
batch rows.

The answer is the HTTP body itself (`GenerateContentConfig(should_return_http_response=True)`), not the
SDK's parsed object dumped back: a dump adds `sdkHttpResponse`, reorders keys and rewrites timestamps.
The Gemini Developer API names citations `citationSources` where Vertex (and so batch output) says
`citations`; they are renamed, as the SDK itself does.

Embedding jobs (text-embedding-005 and kin, contract §3) go row by row to `client.models.embed_content`
(Vertex's `:predict`), written as a batch embedding job's `predictions` JSON (`values`, and the
`token_count` / `truncated` statistics Vertex returns; the Gemini API returns none, so its count is
estimated at four characters a token).
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import orjson
import tenacity

from batchflow.batch.base import JobSpec, JobStatus
from batchflow.batch.local import LocalBackend
from batchflow.batch.providers.base import BaseProvider, ProviderResult, error_status, predictions_text, row_error
from batchflow.errors import ConfigError, ExecutionError
from batchflow.warehouse.base import Warehouse

#: Top-level fields of a REST GenerateContentRequest → GenerateContentConfig fields (the rest of the
#: config comes from `generationConfig`). Either spelling is accepted, as proto JSON does.
REQUEST_FIELDS = {
    "systemInstruction": "system_instruction", "system_instruction": "system_instruction",
    "safetySettings": "safety_settings", "safety_settings": "safety_settings",
    "tools": "tools", "toolConfig": "tool_config", "tool_config": "tool_config",
    "cachedContent": "cached_content", "cached_content": "cached_content",
    "labels": "labels", "modelArmorConfig": "model_armor_config", "model_armor_config": "model_armor_config",
}
#: the most a server's Retry-After is waited for (a longer ask fails the row; a later round resends it)
MAX_RETRY_AFTER = 300.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


@dataclasses.dataclass(frozen=True)
class OnlineOptions:
    """Who answers and how hard to push (profiles.yml: `batch: {backend: online, ...}` or `batch: online:`)."""

    api: str  # "vertex" | "gemini"
    project: str | None = None
    location: str | None = None
    api_key: str | None = None
    access_token: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    concurrency: int = 8
    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    timeout: float = 120.0

    def where(self) -> str:
        """`Vertex AI (us-central1, project p)` or `the Gemini API`, plus a custom host."""
        text = (f"Vertex AI ({self.location}, project {self.project})" if self.api == "vertex"
                else "the Gemini Developer API")
        return text + (f" at {self.base_url}" if self.base_url else "")


def make_client(options: OnlineOptions) -> Any:
    """The google-genai client for `options`; its own retries stay off (this module retries)."""
    from google import genai
    from google.genai import types

    http = types.HttpOptions(base_url=options.base_url, api_version=options.api_version,
                             timeout=int(options.timeout * 1000))
    try:
        if options.api == "gemini":
            return genai.Client(api_key=options.api_key, http_options=http)
        credentials = None
        if options.access_token:  # a fixed bearer token: emulators and short-lived tokens
            from google.oauth2.credentials import Credentials

            credentials = Credentials(token=options.access_token)
        return genai.Client(vertexai=True, project=options.project, location=options.location,
                            credentials=credentials, http_options=http)
    except Exception as exc:  # no application default credentials, a bad key...: the user's to fix
        raise ConfigError(f"online mode cannot open google-genai for {options.where()}: {type(exc).__name__}: {exc}") from None


def request_call(request: dict) -> tuple[Any, Any]:
    """A REST GenerateContentRequest → ``(contents, GenerateContentConfig)`` for `generate_content`.
    Raises ValueError with Vertex's wording for a field it would refuse."""
    from google.genai import types

    fields: dict[str, Any] = {}
    for key, value in request.items():
        if key == "contents":
            continue
        if key in ("generationConfig", "generation_config"):
            if not isinstance(value, dict):
                raise ValueError(f"Invalid value at '{key}': expected an object")
            fields.update(value)
        elif key in REQUEST_FIELDS:
            fields[REQUEST_FIELDS[key]] = value
        else:
            raise ValueError(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    fields["should_return_http_response"] = True  # the REST body, exactly as batch output holds it
    try:
        config = types.GenerateContentConfig.model_validate(fields)
    except Exception as exc:  # pydantic's ValidationError: a field Vertex would not know either
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"Invalid JSON payload received. {where}: {first.get('msg')}") from None
    return request.get("contents"), config


def response_json(body: str | bytes | None) -> dict:
    """The HTTP body of an answer as the batch `response` value (Gemini API citations renamed)."""
    if not body:
        raise ValueError("the service answered with an empty body")
    response = orjson.loads(body)
    for candidate in response.get("candidates") or ():
        meta = candidate.get("citationMetadata")
        if isinstance(meta, dict) and "citationSources" in meta and "citations" not in meta:
            meta["citations"] = meta.pop("citationSources")
    return response


def _api_error(exc: BaseException) -> Any:
    from google.genai import errors

    return exc if isinstance(exc, errors.APIError) else None


def _unreachable(exc: BaseException) -> bool:
    """The call never got an HTTP answer (connect error, timeout, dropped connection): httpx's and
    httpx2's TransportError, named so that neither is imported here."""
    return any(c.__name__ == "TransportError" and c.__module__.startswith("httpx") for c in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """Retried: 408, 429 and 5xx answers, and calls that never got an answer. Other 4xx are final."""
    error = _api_error(exc)
    if error is not None:
        return error.code in (408, 429) or error.code >= 500
    return _unreachable(exc)


def server_delay(exc: BaseException) -> float | None:
    """Seconds the server asked to wait: a `Retry-After` header (seconds or an HTTP date), else a
    google.rpc.RetryInfo `retryDelay` detail ("13s"); None when it did not say."""
    error = _api_error(exc)
    if error is None:
        return None
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if value:
        value = str(value).strip()
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            pass
    body = error.details if isinstance(error.details, dict) else {}
    for detail in (body.get("error") or {}).get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def failure_status(exc: BaseException) -> str:
    """The row status of a call that failed for good, in Vertex's format."""
    error = _api_error(exc)
    if error is not None:
        return error_status(int(error.code), str(error.message or error), error.status or None)
    if _unreachable(exc):
        return error_status(503, f"the service did not answer: {type(exc).__name__}: {exc}", "UNAVAILABLE")
    return error_status(500, f"online call failed: {type(exc).__name__}: {exc}")


class GenaiAnswerer(BaseProvider):
    """Answers requests with `client.models.generate_content`, at most `concurrency` calls at once
    (one pool shared by every chunk and job), retrying transient failures. In the local executor's
    provider role (`generate` per chunk); never raises for one row."""

    name = "online"
    cpu_bound = False  # network-bound: threads
    encodes_json = True  # answers are dicts (`response_json`), encoded by `ProviderResult.response_text`

    def __init__(self, options: OnlineOptions, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep):
        """`client`: a google-genai client (default: `make_client(options)`); `sleep`: how backoff
        waits (tests pass a recorder)."""
        self.options = options
        self.client = client if client is not None else make_client(options)
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max(1, options.concurrency), thread_name_prefix="bf-online")
        self._lock = threading.Lock()
        self.calls = 0  # HTTP calls made, retries included
        self.retries = 0

    def _wait(self, state: tenacity.RetryCallState) -> float:
        asked = server_delay(state.outcome.exception()) if state.outcome is not None else None
        if asked is not None:
            return min(asked, MAX_RETRY_AFTER)
        backoff = tenacity.wait_exponential_jitter(initial=self.options.backoff_initial, max=self.options.backoff_max,
                                                   jitter=self.options.backoff_initial)
        return backoff(state)

    def _call(self, call: Callable[[], Any]) -> Any:
        """`call()` (one google-genai call), retried on transient failures (see the module docstring)."""
        def once() -> Any:
            with self._lock:
                self.calls += 1
            return call()

        def counted(state: tenacity.RetryCallState) -> None:
            with self._lock:
                self.retries += 1

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient), stop=tenacity.stop_after_attempt(self.options.max_attempts),
            wait=self._wait, sleep=self._sleep, before_sleep=counted, reraise=True)
        return retrying(once)

    def answer(self, model: str, request: dict) -> ProviderResult:
        """One request's result: the response JSON, or a failed row's status."""
        try:
            contents, config = request_call(request)
        except ValueError as exc:
            return row_error(400, str(exc), "INVALID_ARGUMENT")
        try:
            answer = self._call(lambda: self.client.models.generate_content(model=model, contents=contents,
                                                                            config=config))
        except Exception as exc:  # noqa: BLE001 - every failure is a row, as in a batch job
            return ProviderResult(None, failure_status(exc))
        try:
            http = answer.sdk_http_response
            return ProviderResult(response_json(http.body if http is not None else None))
        except ValueError as exc:
            return row_error(500, f"unreadable answer: {exc}")

    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        return list(self._pool.map(lambda r: self.answer(model, r), requests))

    def embed(self, model: str, instance: dict, parameters: dict) -> tuple[str | None, str]:
        """One embedding row (`content`, `task_type`, `title`) → (Vertex batch `predictions` JSON text, status)."""
        from google.genai import types

        text = instance.get("content")
        if not isinstance(text, str) or not text.strip():
            return None, error_status(400, "The text content is empty.", "INVALID_ARGUMENT")
        try:
            config = types.EmbedContentConfig(
                task_type=instance.get("task_type"), title=instance.get("title"),
                output_dimensionality=parameters.get("outputDimensionality"), auto_truncate=parameters.get("autoTruncate"))
        except Exception as exc:  # noqa: BLE001 - pydantic: a value the API would refuse too
            return None, error_status(400, f"Invalid embedding parameters: {exc}", "INVALID_ARGUMENT")
        try:
            answer = self._call(lambda: self.client.models.embed_content(model=model, contents=[text], config=config))
        except Exception as exc:  # noqa: BLE001 - every failure is a row, as in a batch job
            return None, failure_status(exc)
        embedding = (answer.embeddings or [None])[0]
        if embedding is None or not embedding.values:
            return None, error_status(500, "the service answered without an embedding")
        stats = embedding.statistics
        # Vertex counts the tokens it read; the Gemini API says nothing: ~4 characters a token
        count = stats.token_count if stats is not None and stats.token_count is not None else -(-len(text) // 4)
        truncated = bool(stats.truncated) if stats is not None and stats.truncated is not None else False
        return predictions_text(embedding.values, int(count), truncated), ""

    def embed_json(self, model: str, instances: Sequence[dict], parameters: dict) -> tuple[list, list[str]]:
        """An embedding job's rows, one `embed_content` call each, on the shared pool."""
        answers = list(self._pool.map(lambda i: self.embed(model, i, parameters), instances))
        return [a for a, _ in answers], [s for _, s in answers]

    def check(self) -> str:
        """One real call: list one model."""
        try:
            pager = self.client.models.list(config={"page_size": 1, "query_base": True})
            next(iter(pager), None)
        except Exception as exc:  # noqa: BLE001 - debug reports what went wrong
            raise ExecutionError(f"{self.options.where()} did not answer: {type(exc).__name__}: {exc}") from None
        return f"{self.options.where()} answered (models.list)"

    def close(self) -> None:
        """Stop the request threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class OnlineBackend:
    """`BatchBackend` answering each job's requests online (see the module docstring). Jobs run in this
    process: they end with it (a rerun lands what they committed)."""

    name = "online"
    jobs_outlive_process = False
    reads_views = True  # its jobs are LocalBackend's
    poll_interval = 0.05
    NAME_PREFIX = "online/jobs/"

    def __init__(self, warehouse: Warehouse, answerer: GenaiAnswerer, chunk_size: int | None = None):
        """`chunk_size`: requests read (and committed) together; default 4 × the answerer's concurrency,
        so a chunk's slowest call holds back little while the next chunk keeps the pool busy."""
        self.answerer = answerer
        size = chunk_size or max(4 * answerer.options.concurrency, 1)
        self._jobs = LocalBackend(warehouse, answerer, concurrency=2, chunk_size=size)

    def _named(self, status: JobStatus) -> JobStatus:
        return dataclasses.replace(status, name=self.NAME_PREFIX + status.name.rsplit("/", 1)[-1])

    def submit(self, spec: JobSpec) -> JobStatus:
        return self._named(self._jobs.submit(spec))

    def get(self, name: str) -> JobStatus:
        return self._named(self._jobs.get(name))

    def cancel(self, name: str) -> None:
        self._jobs.cancel(name)

    def list(self, labels: dict[str, str] | None = None) -> list[JobStatus]:
        return [self._named(s) for s in self._jobs.list(labels)]

    def join(self, name: str, timeout: float | None = None) -> JobStatus:
        """Block until the job ends (tests and scripts)."""
        return self._named(self._jobs.join(name, timeout))

    def describe(self) -> str:
        o = self.answerer.options
        return (f"online: google-genai generate_content on {o.where()}, {o.concurrency} call(s) at once, "
                f"{o.max_attempts} attempt(s) per request on 429/5xx")

    def check(self) -> str:
        return self.answerer.check()

    def close(self) -> None:
        """Stop the request threads."""
        self.answerer.close()
        self._jobs.close()


def online_options(settings: dict[str, Any], *, where: str, environ: dict[str, str] | None = None) -> OnlineOptions:
    """Online options from a `batch:` block's settings (`backend: online`, or its `online:` mapping merged
    over what the target already says). Without a project/location or an API key, the environment is
    read as google-genai would: GOOGLE_API_KEY / GEMINI_API_KEY, GOOGLE_CLOUD_PROJECT + GOOGLE_CLOUD_LOCATION.
    ConfigError (naming `where`) when nothing says who answers."""
    import os

    env = os.environ if environ is None else environ
    key = settings.get("api_key")
    if not key and settings.get("api_key_env"):
        key = env.get(str(settings["api_key_env"]))
        if not key:
            raise ConfigError(f"{where}: api_key_env names ${settings['api_key_env']}, which is not set")
    project, location = settings.get("project"), settings.get("location")
    api = settings.get("api") or ("gemini" if key and not (project and location) else "vertex")
    if api == "gemini" and not key:
        key = env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY")
    if api == "vertex":
        project = project or env.get("GOOGLE_CLOUD_PROJECT")
        location = location or env.get("GOOGLE_CLOUD_LOCATION")
        if not (project and location):
            if not settings.get("api") and (env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY")):
                api, key = "gemini", env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY")
            else:
                raise ConfigError(
                    f"{where}: online mode needs who answers: `project:` and `location:` (Vertex AI with "
                    "application default credentials) or `api_key_env:` (the Gemini Developer API), under "
                    "`online:` in the target's `batch:` block (or `backend: online`), or GOOGLE_CLOUD_PROJECT "
                    "and GOOGLE_CLOUD_LOCATION / GEMINI_API_KEY in the environment")
    if api == "gemini" and not key:
        raise ConfigError(f"{where}: the Gemini Developer API needs an API key: `api_key_env:` (or "
                          "GEMINI_API_KEY in the environment)")
    return OnlineOptions(
        api=str(api), project=None if api == "gemini" else str(project), location=None if api == "gemini" else str(location),
        api_key=str(key) if key else None, access_token=settings.get("access_token"), base_url=settings.get("base_url"),
        api_version=settings.get("api_version"), concurrency=int(settings.get("concurrency", 8)),
        max_attempts=int(settings.get("max_attempts", 5)), backoff_initial=float(settings.get("backoff_initial", 1.0)),
        backoff_max=float(settings.get("backoff_max", 30.0)), timeout=float(settings.get("timeout", 120.0)),
    )
