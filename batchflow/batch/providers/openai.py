"""Answer Gemini requests through any OpenAI-compatible chat-completions endpoint (Ollama, vLLM, ...).

Config: ``base_url`` (e.g. ``http://127.0.0.1:11434/v1``), ``api_key`` or ``api_key_env``,
``model`` (overrides the batch model name), ``timeout`` (seconds, default 120), ``concurrency``
(requests in flight per `generate` call, default 8), ``max_attempts`` (default 4: 429, 5xx, timeouts
and connection errors are retried with exponential backoff), ``backoff_initial`` / ``backoff_max``
(seconds, default 0.5 / 8), ``headers`` (extra HTTP headers).

Conversion: `systemInstruction` → a system message; `contents` roles user/model → user/assistant
(text parts joined with a newline; inline images → `image_url` data URLs; `thought` parts skipped);
`generationConfig` temperature/topP/maxOutputTokens/stopSequences/candidateCount/seed/presencePenalty/
frequencyPenalty → temperature/top_p/max_tokens/stop/n/seed/presence_penalty/frequency_penalty;
`responseMimeType: application/json` → ``response_format: {"type": "json_object"}``, or
``{"type": "json_schema", ...}`` when a `responseSchema`/`responseJsonSchema` is given.
`fileData` parts, tools and function calls have no chat-completions equivalent: such rows fail with
a 400 INVALID_ARGUMENT row error naming the reason.

Embedding models (text-embedding-005, ...: `embed_json`): ``POST {base_url}/embeddings`` with
``{"model": <embedding_model or the batch model>, "input": [texts]}`` (``"dimensions"`` when the job
sets `outputDimensionality`), `embedding_batch_size` texts a call (default 32). Each `data[]` item's
`embedding` becomes the row's `values`, in Vertex's `predictions` shape. `token_count`: the call's
`usage.prompt_tokens`, shared among its texts in proportion to their length (exact for a call of one
text); `truncated` is false (the endpoint does not say). `task_type` and `title` have no OpenAI
equivalent and are not sent. A failed call fails its texts with its status.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from batchflow.batch.providers.base import (
    BaseProvider,
    ProviderResult,
    as_list,
    error_status,
    get2,
    predictions_text,
    row_error,
)
from batchflow.errors import ConfigError

_FINISH = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "eos": "STOP",
}

_GEN_MAP = (
    ("temperature", "temperature", "temperature"),
    ("topP", "top_p", "top_p"),
    ("maxOutputTokens", "max_output_tokens", "max_tokens"),
    ("candidateCount", "candidate_count", "n"),
    ("seed", "seed", "seed"),
    ("presencePenalty", "presence_penalty", "presence_penalty"),
    ("frequencyPenalty", "frequency_penalty", "frequency_penalty"),
)


class UnsupportedRequest(ValueError):
    """The request uses a feature chat completions cannot express (becomes a 400 row error)."""


class _HTTPFailure(Exception):
    """One failed attempt: the row status text and whether a retry may help."""

    def __init__(self, status: str, retryable: bool):
        super().__init__(status)
        self.status = status
        self.retryable = retryable


class OpenAIProvider(BaseProvider):
    """Gemini requests in, Gemini responses out, via `POST {base_url}/chat/completions`."""

    name = "openai"
    #: answers wait on the network: threads (never worker processes, which would copy its connections)
    cpu_bound = False
    #: answers are dicts (`to_gemini_response`), encoded by `ProviderResult.response_text`
    encodes_json = True

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        base_url = config.get("base_url")
        if not base_url or not isinstance(base_url, str):
            raise ConfigError("openai provider: `base_url` is required (e.g. http://127.0.0.1:11434/v1)")
        self.base_url = base_url.rstrip("/")
        api_key = config.get("api_key")
        if not api_key and config.get("api_key_env"):
            api_key = os.environ.get(str(config["api_key_env"]))
            if not api_key:
                raise ConfigError(f"openai provider: environment variable {config['api_key_env']} is not set")
        self.model = config.get("model") or None
        self.embedding_model = config.get("embedding_model") or None
        try:
            self.timeout = float(config.get("timeout", 120))
            self.concurrency = max(1, int(config.get("concurrency", 8)))
            self.max_attempts = max(1, int(config.get("max_attempts", 4)))
            self.backoff_initial = float(config.get("backoff_initial", 0.5))
            self.backoff_max = float(config.get("backoff_max", 8))
            self.embedding_batch_size = max(1, int(config.get("embedding_batch_size", 32)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"openai provider: bad numeric option: {exc}") from exc
        headers = {"Content-Type": "application/json"}
        headers.update({str(k): str(v) for k, v in (config.get("headers") or {}).items()})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=self.concurrency * 4, max_keepalive_connections=self.concurrency * 4),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- protocol ------------------------------------------------------------------------------
    def check(self) -> str:
        """`GET {base_url}/models`: the endpoint answers (and with which models), or why not."""
        from batchflow.errors import ExecutionError

        try:
            resp = self._client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise ExecutionError(f"openai provider: {self.base_url} did not answer: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise ExecutionError(f"openai provider: GET {self.base_url}/models answered HTTP {resp.status_code}: "
                                 f"{_error_message(resp)}")
        try:
            models = [m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)]
        except ValueError:
            models = []
        shown = ", ".join(str(m) for m in models[:5]) + (" …" if len(models) > 5 else "")
        return f"{self.base_url} answers" + (f" (models: {shown})" if models else "")

    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._one(model, r) for r in requests]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bf-openai")
        return list(self._pool.map(lambda r: self._one(model, r), requests))

    def embed_json(self, model: str, instances: list[dict], parameters: dict) -> tuple[list, list[str]]:
        """An embedding job's rows through ``POST {base_url}/embeddings`` (see the module docstring)."""
        n = len(instances)
        predictions: list[str | None] = [None] * n
        statuses: list[str] = [""] * n
        rows = []
        for i, instance in enumerate(instances):
            text = (instance or {}).get("content")
            if isinstance(text, str) and text.strip():
                rows.append(i)
            else:
                statuses[i] = error_status(400, "The text content is empty.", "INVALID_ARGUMENT")
        size = self.embedding_batch_size
        calls = [rows[k:k + size] for k in range(0, len(rows), size)]
        body: dict[str, Any] = {"model": self.embedding_model or model}
        if parameters.get("outputDimensionality"):
            body["dimensions"] = int(parameters["outputDimensionality"])

        def one(call: list[int]) -> None:
            texts = [instances[i]["content"] for i in call]
            try:
                answer = self._post({**body, "input": texts}, "embeddings", "data")
                vectors = to_embeddings(answer, len(texts))
            except _HTTPFailure as exc:
                for i in call:
                    statuses[i] = exc.status
                return
            except Exception as exc:  # noqa: BLE001 - an unreadable answer fails its rows, not the job
                for i in call:
                    statuses[i] = error_status(502, f"Unreadable answer from {self.base_url}/embeddings: "
                                                    f"{type(exc).__name__}: {exc}")
                return
            for i, (values, tokens) in zip(call, _share_tokens(vectors, texts, answer)):
                predictions[i] = predictions_text(values, tokens, False)

        if len(calls) <= 1 or self.concurrency == 1:
            for call in calls:
                one(call)
        else:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bf-openai")
            list(self._pool.map(one, calls))
        return predictions, statuses

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- one row ---------------------------------------------------------------------------------
    def _one(self, model: str, request: dict) -> ProviderResult:
        try:
            body = to_chat_request(request, self.model or model)
        except UnsupportedRequest as exc:
            return row_error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - a malformed row must not break the batch
            return row_error(400, f"Invalid request: {type(exc).__name__}: {exc}")
        try:
            answer = self._post(body)
        except _HTTPFailure as exc:
            return ProviderResult(None, exc.status)
        try:
            return ProviderResult(to_gemini_response(answer))
        except Exception as exc:  # noqa: BLE001
            return row_error(502, f"Unreadable answer from {self.base_url}: {type(exc).__name__}: {exc}")

    def _post(self, body: dict, path: str = "chat/completions", answer_key: str = "choices") -> dict:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, _HTTPFailure) and e.retryable),
            reraise=True,
        )
        try:
            return retrying(self._attempt, body, path, answer_key)
        except RetryError as exc:  # pragma: no cover - reraise=True gives the last _HTTPFailure
            raise exc.last_attempt.exception() from None

    def _attempt(self, body: dict, path: str = "chat/completions", answer_key: str = "choices") -> dict:
        url = f"{self.base_url}/{path}"
        try:
            resp = self._client.post(url, content=json.dumps(body, ensure_ascii=False).encode())
        except httpx.TimeoutException as exc:
            raise _HTTPFailure(
                error_status(504, f"Timed out calling {url}: {type(exc).__name__}", "DEADLINE_EXCEEDED"), True
            ) from exc
        except httpx.HTTPError as exc:
            raise _HTTPFailure(
                error_status(503, f"Cannot reach {url}: {type(exc).__name__}: {exc}", "UNAVAILABLE"), True
            ) from exc
        if resp.status_code >= 400:
            code = resp.status_code
            raise _HTTPFailure(error_status(code, _error_message(resp)), code == 429 or code >= 500)
        try:
            answer = resp.json()
        except ValueError as exc:
            raise _HTTPFailure(error_status(502, f"{url} answered with invalid JSON: {exc}", "UNAVAILABLE"), True)
        if not isinstance(answer, dict):
            raise _HTTPFailure(error_status(502, f"{url} answered with a non-object JSON", "UNAVAILABLE"), True)
        if "error" in answer and answer_key not in answer:  # some servers answer errors with HTTP 200
            raise _HTTPFailure(error_status(500, _message_of(answer["error"])), True)
        return answer


# -- request conversion ------------------------------------------------------------------------------


def to_chat_request(request: dict, model: str) -> dict:
    """A Gemini `GenerateContentRequest` as an OpenAI chat-completions body."""
    if not isinstance(request, dict):
        raise UnsupportedRequest("request is not a JSON object")
    for key in ("tools", "toolConfig", "tool_config", "cachedContent", "cached_content"):
        if request.get(key):
            raise UnsupportedRequest(f"`{key}` is not supported by the openai provider (chat completions)")
    messages: list[dict] = []
    si = get2(request, "systemInstruction", "system_instruction")
    if si:
        if isinstance(si, str):
            messages.append({"role": "system", "content": si})
        else:
            parts = as_list(si.get("parts")) if isinstance(si, dict) and "parts" in si else as_list(si)
            messages.append({"role": "system", "content": _content(parts, "systemInstruction")})
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise UnsupportedRequest("request has no `contents` array")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise UnsupportedRequest(f"contents[{i}] is not an object")
        role = content.get("role")
        if role not in ("user", "model"):
            raise UnsupportedRequest(f"contents[{i}]: Please use a valid role: user, model.")
        messages.append(
            {
                "role": "assistant" if role == "model" else "user",
                "content": _content(as_list(content.get("parts")), f"contents[{i}]"),
            }
        )
    body: dict[str, Any] = {"model": model, "messages": messages}
    gc = get2(request, "generationConfig", "generation_config") or {}
    for camel, snake, target in _GEN_MAP:
        value = get2(gc, camel, snake)
        if value is not None:
            body[target] = value
    stop = get2(gc, "stopSequences", "stop_sequences")
    if stop:
        body["stop"] = stop
    if get2(gc, "responseMimeType", "response_mime_type") == "application/json":
        schema = get2(gc, "responseJsonSchema", "response_json_schema")
        if schema is None:
            schema = get2(gc, "responseSchema", "response_schema")
            schema = to_json_schema(schema) if schema is not None else None
        if schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
        else:
            body["response_format"] = {"type": "json_object"}
    return body


def _content(parts: list, where: str) -> str | list[dict]:
    """Text parts joined by newlines; a list of content parts when images are present."""
    texts: list[str] = []
    blocks: list[dict] = []
    has_image = False
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise UnsupportedRequest(f"{where}.parts[{j}] is not an object")
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
            blocks.append({"type": "text", "text": part["text"]})
            continue
        inline = get2(part, "inlineData", "inline_data")
        if isinstance(inline, dict):
            mime = get2(inline, "mimeType", "mime_type") or ""
            if not mime.startswith("image/"):
                raise UnsupportedRequest(f"{where}.parts[{j}]: inline {mime or 'data'} is not supported by chat completions")
            blocks.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{inline.get('data', '')}"}})
            has_image = True
            continue
        if get2(part, "fileData", "file_data") is not None:
            raise UnsupportedRequest(
                f"{where}.parts[{j}]: fileData (gs:// or YouTube URIs) is not supported by the openai provider; "
                "chat-completions endpoints cannot fetch it"
            )
        kinds = ", ".join(sorted(part)) or "empty part"
        raise UnsupportedRequest(f"{where}.parts[{j}]: {kinds} is not supported by the openai provider")
    if has_image:
        return blocks
    return "\n".join(texts)


def to_json_schema(schema: Any) -> Any:
    """A Gemini (OpenAPI subset, `type: OBJECT`) schema as JSON Schema (`type: object`)."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    nullable = bool(schema.get("nullable"))
    for key, value in schema.items():
        if key in ("nullable", "propertyOrdering", "property_ordering"):
            continue
        if key == "type" and isinstance(value, str):
            value = value.lower()
            out["type"] = [value, "null"] if nullable and value != "null" else value
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items",):
            out["items"] = to_json_schema(value)
        elif key in ("anyOf", "any_of"):
            out["anyOf"] = to_json_schema(value)
        elif key in ("minItems", "min_items"):
            out["minItems"] = value
        elif key in ("maxItems", "max_items"):
            out["maxItems"] = value
        else:
            out[key] = value
    return out


# -- response conversion -----------------------------------------------------------------------------


def to_gemini_response(answer: dict) -> dict:
    """An OpenAI chat-completions answer as a Gemini `GenerateContentResponse` (REST camelCase)."""
    candidates = []
    for k, choice in enumerate(answer.get("choices") or []):
        message = choice.get("message") or {}
        parts = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append({"text": reasoning, "thought": True})
        text = message.get("content")
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if isinstance(text, str) and (text or not parts):
            parts.append({"text": text})
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = {"arguments": fn.get("arguments")}
            parts.append({"functionCall": {"name": fn.get("name", ""), "args": args}})
        reason = choice.get("finish_reason")
        finish = _FINISH.get(reason, "OTHER") if reason else "FINISH_REASON_UNSPECIFIED"
        candidate: dict[str, Any] = {"index": choice.get("index", k)}
        if finish == "SAFETY" and not (text or "").strip():
            pass  # blocked: no content, as Gemini writes it
        else:
            candidate["content"] = {"role": "model", "parts": parts}
        candidate["finishReason"] = finish
        logprobs = (choice.get("logprobs") or {}).get("content")
        if logprobs:
            values = [t.get("logprob") for t in logprobs if isinstance(t.get("logprob"), (int, float))]
            if values:
                candidate["avgLogprobs"] = sum(values) / len(values)
        candidates.append(candidate)
    response: dict[str, Any] = {}
    if candidates:
        response["candidates"] = candidates
    usage = answer.get("usage") or {}
    if usage:
        meta: dict[str, Any] = {}
        for src, dst in (
            ("prompt_tokens", "promptTokenCount"),
            ("completion_tokens", "candidatesTokenCount"),
            ("total_tokens", "totalTokenCount"),
        ):
            if isinstance(usage.get(src), int):
                meta[dst] = usage[src]
        reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        if reasoning_tokens:
            meta["thoughtsTokenCount"] = reasoning_tokens
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            meta["cachedContentTokenCount"] = cached
        meta["trafficType"] = "ON_DEMAND"
        response["usageMetadata"] = meta
    if answer.get("model"):
        response["modelVersion"] = answer["model"]
    if answer.get("id"):
        response["responseId"] = str(answer["id"])
    created = answer.get("created")
    if isinstance(created, (int, float)):
        response["createTime"] = (
            datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )
    return response


def to_embeddings(answer: dict, count: int) -> list[list[float]]:
    """The vectors of an OpenAI embeddings answer, in input order (`data[].index`)."""
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise ValueError(f"expected {count} embeddings in `data`, got {len(data) if isinstance(data, list) else data!r}")
    ordered = sorted(data, key=lambda d: d.get("index", 0)) if all("index" in d for d in data) else data
    vectors = []
    for item in ordered:
        values = item.get("embedding")
        if not isinstance(values, list) or not values:
            raise ValueError("an item of `data` has no `embedding` list (base64 encoding is not supported)")
        vectors.append([float(v) for v in values])
    return vectors


def _share_tokens(vectors: list[list[float]], texts: list[str], answer: dict) -> list[tuple[list[float], int]]:
    """Each vector with its text's share of `usage.prompt_tokens` (by length, largest remainder)."""
    usage = answer.get("usage") or {}
    total = usage.get("prompt_tokens", usage.get("total_tokens"))
    if not isinstance(total, int):
        return [(v, 0) for v in vectors]
    lengths = [max(len(t), 1) for t in texts]
    exact = [total * n / sum(lengths) for n in lengths]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(texts)), key=lambda i: exact[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    return list(zip(vectors, shares))


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:500] or f"HTTP {resp.status_code} from {resp.request.url}"
    if isinstance(body, dict) and "error" in body:
        return _message_of(body["error"])
    return json.dumps(body)[:500]


def _message_of(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error))[:500]
    return str(error)[:500]
