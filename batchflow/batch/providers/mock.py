"""A deterministic, fast stand-in for Gemini: same request + model → byte-identical response.

Answers are modern `GenerateContentResponse` objects (contract §2.3). Every choice (answer words,
JSON values, scores, ids, timestamps) derives from the row's request hash
(`batchflow.requests.request_hash(request, model)`: SHA-256 of ``canonical_json(request) + "\\n" +
model``, the digest the lifecycle keys answers by), never from the row's position in a batch or from
the clock. `generate` (request dicts) and `generate_json` (request JSON text, what the local executor
sends) give byte-identical answers, as do copies of the provider in worker processes (`cpu_bound`;
not with a `limit` rule, whose count is the provider's own).

Modes
- JSON mode (`generationConfig.responseMimeType == "application/json"`, snake case accepted):
  the answer text is JSON conforming to `responseSchema` / `responseJsonSchema` when present
  (OBJECT, ARRAY, STRING, INTEGER, NUMBER, BOOLEAN, NULL in either case; `enum`, `properties`,
  `propertyOrdering`, `items`, `minItems`/`maxItems`, `minimum`/`maximum`, `nullable`, `anyOf`),
  else a small object ``{"answer": ..., "label": ..., "score": ...}``.
- Text mode: ``Mock answer <n>: <first words of the last prompt text>``.
- `generationConfig.maxOutputTokens`: an answer longer than that (≈ 4 chars per token) is cut and
  finishes with MAX_TOKENS, as a real model does.

Failure injection (config ``{"failures": [rule, ...]}``); the first matching rule decides the row:
- selectors (all given ones must match; a rule with none matches every row):
  ``when_prompt_contains``: substring of the prompt text (all text parts of `contents`, joined by "\\n");
  ``when_model``: the batch model name equals this;
  ``every``: N ≥ 1, the row's request hash, read as an integer from its first 16 hex digits, is
  divisible by N (i.e. ``int(request_hash(request, model)[:16], 16) % N == 0``): about 1/N of the
  rows, always the same ones, wherever they sit in the job;
  ``limit``: the rule fires at most this many times in the provider's lifetime (then the row is
  answered normally), to simulate errors that clear on resubmission.
- ``outcome``: ``recitation`` | ``safety`` | ``prompt_blocked`` | ``max_tokens`` | ``row_error`` |
  ``transient_error`` (shapes in contract §2.2/§2.4).

Embeddings (text-embedding models, `embed_json`): the contract of the test doubles, which the Vertex
emulator (tests/emulators/embeddings.py) implements independently, so the same rows get the same
vectors through both backends. A row's answer depends on its `content` text and the job's
parameters only (not on `task_type` or `title`):
- tokens: n = the matches of the regex ``\\w+|[^\\w\\s]`` in the text (Python `re`, Unicode);
  ``truncated = n > 2048``, ``token_count = min(n, 2048)``; with ``autoTruncate: false`` a text of
  more than 2,048 tokens is a 400 INVALID_ARGUMENT row error instead.
- dimension d = `outputDimensionality`, else 768.
- raw values: the 4-byte big-endian unsigned integers u_0, u_1, ... of the byte stream
  ``SHA-256(utf8(text) + b"\\x00" + ascii(str(k)))`` for k = 0, 1, 2, ... concatenated (8 integers a
  digest); ``raw_i = u_i / 2**31 - 1`` for i < d (so a shorter vector is a prefix, renormalised).
- ``values_i = raw_i / sqrt(math.fsum(raw_j * raw_j for j < d))``: a unit vector, bit-identical in any
  implementation (fsum and sqrt are correctly rounded).
- ``predictions = [{"embeddings": {"statistics": {"token_count": ..., "truncated": ...}, "values": [...]}}]``.
Failure rules apply to embedding rows with the outcomes ``row_error`` and ``transient_error``
(``when_prompt_contains`` matches the content); the other outcomes concern Gemini answers only.

Other config: ``traffic_type`` (usageMetadata.trafficType, default ``ON_DEMAND``; the SDK's
TrafficType enum has no BATCH value).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import orjson

from batchflow.batch.providers.base import (
    NOT_AN_OBJECT,
    BaseProvider,
    ProviderResult,
    _dumps,
    error_status,
    parse_request,
    predictions_text,
    row_error,
    system_text,
)
from batchflow.errors import ConfigError
from batchflow.requests import request_hash, request_problem

OUTCOMES = ("recitation", "safety", "prompt_blocked", "max_tokens", "row_error", "transient_error")
_BLOCKED = ("prompt_blocked", "recitation", "safety")

_c_answer = json.encoder.c_make_encoder(  # built once: json.dumps rebuilds it on every call
    None, lambda o: str(o), json.encoder.encode_basestring, None, ": ", ", ", False, False, False
) if getattr(json.encoder, "c_make_encoder", None) else None


def _dump_answer(value: Any) -> str:
    """The JSON answer text, spaced like Gemini's (`{"a": 1, "b": 2}`)."""
    if _c_answer is None or isinstance(value, str):  # pragma: no cover - pure-Python json
        return json.dumps(value, ensure_ascii=False)
    return "".join(_c_answer(value, 0))


_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_MAX_PLANS = 256  # distinct generationConfigs whose answer plan is kept

_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)
_LABELS = ("positive", "negative", "neutral", "mixed")
_MASK64 = 0xFFFFFFFFFFFFFFFF

_ROLES = ("user", "model")
_EMPTY: dict = {}
_encode_str = json.encoder.encode_basestring  # JSON string literal, non-ASCII kept

_ROW_ERROR = error_status(400, "Request contains an invalid argument.", "INVALID_ARGUMENT")
_TRANSIENT = error_status(429, "Resource exhausted. Please try again later.", "RESOURCE_EXHAUSTED")


@dataclass
class FailureRule:
    """One injected failure; see the module docstring for the matching rules."""

    outcome: str
    prompt_contains: str | None = None
    model: str | None = None
    every: int | None = None
    limit: int | None = None
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, raw: Any, index: int) -> "FailureRule":
        where = f"mock provider failures[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
        known = {"outcome", "when_prompt_contains", "when_model", "every", "limit"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        outcome = raw.get("outcome")
        if outcome not in OUTCOMES:
            raise ConfigError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        every = raw.get("every")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ConfigError(f"{where}: every must be an integer >= 1, got {every!r}")
        limit = raw.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ConfigError(f"{where}: limit must be an integer >= 0, got {limit!r}")
        contains = raw.get("when_prompt_contains")
        if contains is not None and not isinstance(contains, str):
            raise ConfigError(f"{where}: when_prompt_contains must be a string")
        model = raw.get("when_model")
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"{where}: when_model must be a string")
        return cls(outcome=outcome, prompt_contains=contains, model=model, every=every, limit=limit)

    def __getstate__(self) -> dict:  # picklable (worker processes): a fresh lock on the other side
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def matches(self, prompt: str, model: str, h: int) -> bool:
        if self.prompt_contains is not None and self.prompt_contains not in prompt:
            return False
        if self.model is not None and self.model != model:
            return False
        if self.every is not None and h % self.every:
            return False
        if self.limit is not None:
            with self._lock:
                if self.hits >= self.limit:
                    return False
                self.hits += 1
        return True


class _Rng:
    """A 64-bit LCG seeded from the request digest (deterministic, no global state)."""

    __slots__ = ("s",)

    def __init__(self, seed: int):
        self.s = seed

    def __call__(self) -> int:
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) & _MASK64
        return self.s >> 33


def model_version(model: str) -> str:
    """`gemini-2.5-flash` → `gemini-2.5-flash-001`; a name already ending in `-NNN` or `@x` is kept."""
    name = model.rsplit("/", 1)[-1]
    tail = name.rsplit("-", 1)[-1]
    if "@" in name or (tail.isdigit() and len(tail) == 3):
        return name
    return f"{name}-001"


class MockProvider(BaseProvider):
    """Deterministic Gemini stand-in; see the module docstring."""

    name = "mock"
    #: answer texts are assembled from encoder output only (`_c_answer`, `_dumps`, pre-encoded parts)
    encodes_json = True

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        failures = config.get("failures") or []
        if not isinstance(failures, list):
            raise ConfigError("mock provider: failures must be a list of rules")
        self.rules = [FailureRule.parse(r, i) for i, r in enumerate(failures)]
        self.traffic_type = str(config.get("traffic_type", "ON_DEMAND"))
        self._traffic_json = json.dumps(self.traffic_type)
        self._versions: dict[str, str] = {}
        self._plans: dict[bytes, tuple] = {}

    @property
    def cpu_bound(self) -> bool:
        """Answers cost CPU only, so the local executor may run copies in worker processes; not with
        a `limit` rule, whose count belongs to this one provider."""
        return all(rule.limit is None for rule in self.rules)

    def __getstate__(self) -> dict:  # worker processes get a copy without the (closure) caches
        state = dict(self.__dict__)
        state["_plans"] = {}
        return state

    # -- protocol ------------------------------------------------------------------------------
    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        version = self._version(model)
        answer = self._answer
        out = []
        append = out.append
        for req in requests:
            try:
                text, status = answer(model, version, req, None)
            except Exception as exc:  # a provider never raises for one row
                append(row_error(400, f"Invalid request: {type(exc).__name__}: {exc}"))
                continue
            append(ProviderResult(None, status) if status else ProviderResult(text=text))
        return out

    def generate_json(
        self, model: str, texts: Sequence[str | bytes | None], hashes: Sequence[str | None] | None = None
    ) -> tuple[list, list[str]]:
        """`generate` on the `request` column's JSON text, answered row by row (see `Provider`).
        `hashes[i]`, when given, is row i's ``request_hash(request, model)`` (the lifecycle's
        `request_hash` column): the answer derives from it instead of hashing the request again."""
        version = self._version(model)
        answer = self._answer
        plans = self._plans
        n = len(texts)
        responses: list[str | None] = [None] * n
        statuses: list[str] = [""] * n
        for i, raw in enumerate(texts):
            try:
                req = _orjson_loads(raw)  # pure JSON values: the answer plans may be cached by their text
                cache = plans
            except (ValueError, TypeError):
                req, status = parse_request(raw)  # NULL, json-only texts (NaN, ...) and the 400s
                if status:
                    statuses[i] = status
                    continue
                cache = None
            if type(req) is not dict:
                statuses[i] = NOT_AN_OBJECT
                continue
            try:
                text, status = answer(model, version, req, cache, None if hashes is None else hashes[i])
            except Exception as exc:  # a provider never raises for one row
                statuses[i] = error_status(400, f"Invalid request: {type(exc).__name__}: {exc}")
                continue
            if status:
                statuses[i] = status
            else:
                responses[i] = text
        return responses, statuses

    def embed_json(self, model: str, instances: Sequence[dict], parameters: dict) -> tuple[list, list[str]]:
        """Deterministic unit vectors for an embedding job's rows (see "Embeddings" above)."""
        dimensions = int(parameters.get("outputDimensionality") or EMBEDDING_DIMENSIONS)
        auto_truncate = parameters.get("autoTruncate") is not False
        rules = [r for r in self.rules if r.outcome in ("row_error", "transient_error")]
        predictions: list[str | None] = []
        statuses: list[str] = []
        for instance in instances:
            text = (instance or {}).get("content")
            if not isinstance(text, str) or not text.strip():
                predictions.append(None)
                statuses.append(error_status(400, "The text content is empty.", "INVALID_ARGUMENT"))
                continue
            rule = next((r for r in rules if r.matches(text, model, int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))), None)
            if rule is not None:
                predictions.append(None)
                statuses.append(_ROW_ERROR if rule.outcome == "row_error" else _TRANSIENT)
                continue
            tokens = embedding_token_count(text)
            if tokens > EMBEDDING_MAX_TOKENS and not auto_truncate:
                predictions.append(None)
                statuses.append(error_status(400, f"The input has {tokens} tokens, more than the {EMBEDDING_MAX_TOKENS} "
                                                  "the model accepts, and autoTruncate is false.", "INVALID_ARGUMENT"))
                continue
            predictions.append(predictions_text(mock_embedding(text, dimensions), min(tokens, EMBEDDING_MAX_TOKENS),
                                                tokens > EMBEDDING_MAX_TOKENS))
            statuses.append("")
        return predictions, statuses

    def _version(self, model: str) -> str:
        version = self._versions.get(model)
        if version is None:
            version = self._versions[model] = model_version(model)
        return version

    # -- one row ---------------------------------------------------------------------------------
    def _answer(
        self, model: str, version: str, req: dict, plans: dict | None, digest: str | None = None
    ) -> tuple[str | None, str]:
        """(response JSON text, "") or (None, row status). `plans` caches what `generationConfig`
        implies, keyed by its orjson text: only for requests made of pure JSON values. `digest`: the
        request's hash, if known."""
        # Collect the prompt text and validate in one walk (request_problem words the error).
        contents = req.get("contents") if type(req) is dict else None
        texts: list[str] = []
        bad = type(contents) is not list or not contents
        if (  # the usual one user turn with one text part
            not bad
            and len(contents) == 1
            and type(content := contents[0]) is dict
            and content.get("role") in _ROLES
            and type(parts := content.get("parts")) is list
            and len(parts) == 1
            and type(part := parts[0]) is dict
            and type(t := part.get("text")) is str
        ):
            texts.append(t)
        elif not bad:
            for content in contents:
                if type(content) is not dict or content.get("role") not in _ROLES:
                    bad = True
                    break
                parts = content.get("parts")
                if type(parts) is dict:
                    parts = (parts,)
                elif type(parts) is not list or not parts:
                    bad = True
                    break
                for part in parts:
                    if type(part) is dict:
                        t = part.get("text")
                        if type(t) is str:
                            texts.append(t)
        if bad:
            return None, error_status(400, request_problem(req) or "Request contains an invalid argument.")

        hex_digest = digest if type(digest) is str and len(digest) == 64 else request_hash(req, model)
        h = int(hex_digest[:16], 16)
        prompt = "\n".join(texts)

        outcome = None
        for rule in self.rules:
            if rule.matches(prompt, model, h):
                outcome = rule.outcome
                break
        if outcome == "row_error":
            return None, _ROW_ERROR
        if outcome == "transient_error":
            return None, _TRANSIENT

        si = req.get("systemInstruction") or req.get("system_instruction")
        if not si:
            si_chars = 0
        elif (  # the usual {"parts": [{"text": ...}]}, measured without building the text again
            type(si) is dict
            and type(parts := si.get("parts")) is list
            and len(parts) == 1
            and type(part := parts[0]) is dict
            and type(si_text := part.get("text")) is str
        ):
            si_chars = len(si_text)
        else:
            si_chars = len(system_text(req))
        prompt_tokens = (len(prompt) + si_chars) // 4 + 1

        if outcome is not None and outcome in _BLOCKED:
            create_time = f"{_TIMES[(h >> 24) % _NTIMES]}.{h % 1000000:06d}Z"
            return _dumps(self._blocked(outcome, h, prompt_tokens, version, create_time, hex_digest[16:40])), ""

        gc = req.get("generationConfig") or req.get("generation_config") or _EMPTY
        if plans is not None and type(gc) is dict:
            key = _orjson_dumps(gc)
            plan = plans.get(key)
            if plan is None:
                if len(plans) >= _MAX_PLANS:
                    plans.clear()
                plan = plans[key] = _plan(gc, True)
        else:
            plan = _plan(gc, False)
        json_mode, emit, max_out = plan
        if json_mode:
            if emit is not None:
                text = emit(h)
            else:
                text = _dump_answer(
                    {"answer": _snippet(texts, 6), "label": _LABELS[h % 4], "score": (h >> 8) % 100 / 100}
                )
        else:
            text = f"Mock answer {h % 10000}: {_snippet(texts, 12)}"

        finish = "STOP"
        cand_tokens = len(text) // 4 + 1
        if outcome == "max_tokens":
            text = text[: max(1, len(text) // 2)]
            finish = "MAX_TOKENS"
            cand_tokens = max_out if type(max_out) is int and max_out > 0 else len(text) // 4 + 1
        elif type(max_out) is int and 0 < max_out < cand_tokens:
            text = text[: max_out * 4]
            finish = "MAX_TOKENS"
            cand_tokens = max_out

        ratings = _RATINGS_JSON[(h >> 20) % _NRATINGS]
        return (
            f'{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":{_encode_str(text)}}}]}},'
            f'"finishReason":"{finish}","avgLogprobs":{_LOGPROBS[(h >> 12) % _NLOGPROBS]},'
            f'"safetyRatings":{ratings}}}],'
            f'"usageMetadata":{{"promptTokenCount":{prompt_tokens},"candidatesTokenCount":{cand_tokens},'
            f'"totalTokenCount":{prompt_tokens + cand_tokens},"trafficType":{self._traffic_json}}},'
            f'"modelVersion":{_encode_str(version)},"createTime":"{_TIMES[(h >> 24) % _NTIMES]}.{h % 1000000:06d}Z",'
            f'"responseId":"{hex_digest[16:40]}"}}'
        ), ""

    def _blocked(self, outcome: str, h: int, prompt_tokens: int, version: str, create_time: str, rid: str) -> dict:
        head = {"modelVersion": version, "createTime": create_time, "responseId": rid}
        if outcome == "prompt_blocked":
            return {
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": self._ratings(h, blocked=True)},
                "usageMetadata": {"promptTokenCount": prompt_tokens},
                **head,
            }
        if outcome == "recitation":
            candidate = {
                "finishReason": "RECITATION",
                "safetyRatings": self._ratings(h),
                "citationMetadata": {
                    "citations": [
                        {
                            "startIndex": 0,
                            "endIndex": 100 + h % 400,
                            "uri": f"https://example.com/source/{h % 100000}",
                            "title": "Mock cited source",
                            "license": "",
                        }
                    ]
                },
            }
        else:  # safety
            candidate = {"finishReason": "SAFETY", "safetyRatings": self._ratings(h, blocked=True)}
        return {"candidates": [candidate], "usageMetadata": self._usage(prompt_tokens, 0), **head}

    # -- pieces ----------------------------------------------------------------------------------
    def _usage(self, prompt_tokens: int, cand_tokens: int) -> dict:
        usage = {"promptTokenCount": prompt_tokens}
        if cand_tokens:
            usage["candidatesTokenCount"] = cand_tokens
        usage["totalTokenCount"] = prompt_tokens + cand_tokens
        usage["trafficType"] = self.traffic_type
        return usage

    @staticmethod
    def _ratings(h: int, blocked: bool = False) -> list[dict]:
        ratings = _ratings_for((h >> 20) % _NRATINGS)
        if blocked:
            ratings[h % 4].update(
                probability="HIGH",
                probabilityScore=0.9 + (h % 90) / 1000,
                severity="HARM_SEVERITY_HIGH",
                severityScore=0.8 + (h % 90) / 1000,
                blocked=True,
            )
        return ratings


def _rating(category: str, k: int) -> dict:
    score = (k + 1) / 1000
    return {
        "category": category,
        "probability": "NEGLIGIBLE",
        "probabilityScore": score,
        "severity": "HARM_SEVERITY_NEGLIGIBLE",
        "severityScore": score / 2,
    }


def _ratings_for(k: int) -> list[dict]:
    """The 4 safety ratings of variant `k` (scores spread over 0.001-0.120)."""
    return [_rating(c, (k * (7 + 13 * i) + 31 * i) % 120) for i, c in enumerate(_CATEGORIES)]


_NRATINGS = 1024
_RATINGS_JSON = tuple(json.dumps(_ratings_for(k), separators=(",", ":")) for k in range(_NRATINGS))
_NTIMES = 4096
_TIMES = tuple(
    f"2025-{k % 12 + 1:02d}-{(k * 7) % 28 + 1:02d}T{(k * 5) % 24:02d}:{(k * 11) % 60:02d}:{(k * 13) % 60:02d}"
    for k in range(_NTIMES)
)
_NLOGPROBS = 5000
_LOGPROBS = tuple(repr(-(k + 1) / 10000) for k in range(_NLOGPROBS))


def _snippet(texts: list[str], words: int) -> str:
    """The first `words` words of the last prompt text (what the answer echoes)."""
    if not texts:
        return ""
    return " ".join(texts[-1].split()[:words])


def _schema_type(schema: dict) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if str(x).lower() != "null"), "null")
    if not t:
        if "properties" in schema:
            return "OBJECT"
        if "items" in schema:
            return "ARRAY"
        return "STRING"
    return str(t).upper()


def _value(schema: Any, rng: _Rng, name: str, depth: int) -> Any:
    """A value conforming to a Gemini (OpenAPI subset) or JSON Schema, chosen by `rng`."""
    if not isinstance(schema, dict):
        return f"{name} {rng() % 1000}"
    enum = schema.get("enum")
    if enum:
        return enum[rng() % len(enum)]
    if "const" in schema:
        return schema["const"]
    alternatives = schema.get("anyOf") or schema.get("any_of") or schema.get("oneOf")
    if alternatives:
        usable = [a for a in alternatives if isinstance(a, dict) and _schema_type(a) != "NULL"]
        return _value(usable[0] if usable else alternatives[0], rng, name, depth)
    kind = _schema_type(schema)
    if kind == "OBJECT":
        props = schema.get("properties") or {}
        order = schema.get("propertyOrdering") or schema.get("property_ordering") or []
        keys = [k for k in order if k in props] + [k for k in props if k not in order]
        if depth > 8:
            return {}
        return {k: _value(props[k], rng, k, depth + 1) for k in keys}
    if kind == "ARRAY":
        items = schema.get("items") or {"type": "STRING"}
        lo = _int(schema.get("minItems", schema.get("min_items")), 1)
        hi = _int(schema.get("maxItems", schema.get("max_items")), max(lo, 3))
        lo, hi = min(lo, hi), max(lo, hi)
        n = lo + rng() % (min(hi, lo + 2) - lo + 1)
        if depth > 8:
            return []
        return [_value(items, rng, name, depth + 1) for _ in range(n)]
    if kind == "INTEGER":
        lo = _int(schema.get("minimum"), 0)
        hi = _int(schema.get("maximum"), lo + 100)
        return lo + rng() % (max(hi, lo) - lo + 1)
    if kind == "NUMBER":
        lo = _num(schema.get("minimum"), 0.0)
        hi = _num(schema.get("maximum"), lo + 1.0)
        return round(lo + (max(hi, lo) - lo) * (rng() % 1001) / 1000, 3)
    if kind == "BOOLEAN":
        return bool(rng() & 1)
    if kind == "NULL":
        return None
    fmt = schema.get("format")
    r = rng()
    if fmt == "date-time":
        return f"2025-{r % 12 + 1:02d}-{r % 28 + 1:02d}T{r % 24:02d}:{r % 60:02d}:00Z"
    if fmt == "date":
        return f"2025-{r % 12 + 1:02d}-{r % 28 + 1:02d}"
    return f"{name} {r % 1000}"


def _plan(gc: Any, compiled: bool) -> tuple[bool, Any, Any]:
    """What `generationConfig` implies: (JSON mode, the schema answer's writer or None, maxOutputTokens).

    The writer takes the row's seed (the request hash's first 64 bits) and returns the answer text.
    `compiled` writers are generated once per schema (`_compiled`, for cached plans); otherwise the
    writer walks the schema each time (`_walker`)."""
    json_mode = gc is not _EMPTY and (gc.get("responseMimeType") or gc.get("response_mime_type")) == "application/json"
    emit = None
    if json_mode:
        schema = (
            gc.get("responseSchema")
            or gc.get("response_schema")
            or gc.get("responseJsonSchema")
            or gc.get("response_json_schema")
        )
        if schema:
            emit = _compiled(schema) if compiled else _walker(schema)
    max_out = (gc.get("maxOutputTokens") or gc.get("max_output_tokens")) if gc is not _EMPTY else None
    return json_mode, emit, max_out


def _walker(schema: Any) -> Callable[[int], str]:
    """The reference writer: `_value`'s answer for the row seed, dumped."""
    return lambda seed: _dump_answer(_value(schema, _Rng(seed), "value", 0))


class _Unsupported(Exception):
    """A schema shape the compiled writer leaves to the reference writer."""


def _compiled(schema: Any) -> Callable[[int], str]:
    """A writer giving exactly `_walker(schema)`'s text, for a fraction of its cost: the schema is
    walked once, here, into a small Python function that draws the same `_Rng` numbers in the same
    order and writes the answer's JSON text straight from precomputed pieces (no value built and
    dumped per row). Shapes it does not mirror exactly, and any error, fall back to `_walker`."""
    try:
        code = _Code()
        _gen(code, schema, "value", 0)
        source = code.source()
        namespace = {"C": tuple(code.constants), "_date_time": _date_time, "_date": _date}
        exec(compile(source, "<mock answer writer>", "exec"), namespace)  # noqa: S102 - our own code
        return namespace["write"]
    except Exception:  # noqa: BLE001 - RecursionError, SyntaxError (too deep) included
        return _walker(schema)


_DRAW = "s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF"  # = _Rng.__call__


class _Code:
    """Source of ``def write(s): o = ""; ...; return o``, appending the answer text to `o`.
    Literal text goes through `constants` (never spliced into the source) and is merged with its
    neighbours."""

    def __init__(self):
        self.lines: list[str] = []
        self.constants: list[Any] = []
        self.pending = ""
        self.depth = 1
        self.loops = 0

    def constant(self, value: Any) -> str:
        self.constants.append(value)
        return f"C[{len(self.constants) - 1}]"

    def text(self, literal: str) -> None:
        self.pending += literal

    def flush(self) -> None:
        if self.pending:
            self.lines.append("    " * self.depth + f"o += {self.constant(self.pending)}")
            self.pending = ""

    def line(self, statement: str) -> None:
        self.flush()
        self.lines.append("    " * self.depth + statement)

    def append(self, expression: str) -> None:
        self.line(f"o += {expression}")

    def source(self) -> str:
        self.flush()
        return "def write(s):\n    o = ''\n" + "\n".join(self.lines) + "\n    return o\n"


def _gen(code: _Code, schema: Any, name: str, depth: int) -> None:
    """`_value` + `_dump_answer`, branch for branch: the same draws in the same order, the same text."""
    if not isinstance(schema, dict):
        _gen_string(code, name)
        return
    enum = schema.get("enum")
    if enum:
        if type(enum) is not list:
            raise _Unsupported("enum")
        choices = code.constant(tuple(_dump_answer(v) for v in enum))
        code.line(_DRAW)
        code.append(f"{choices}[(s >> 33) % {len(enum)}]")
        return
    if "const" in schema:
        code.text(_dump_answer(schema["const"]))
        return
    alternatives = schema.get("anyOf") or schema.get("any_of") or schema.get("oneOf")
    if alternatives:
        if type(alternatives) is not list:
            raise _Unsupported("anyOf")
        usable = [a for a in alternatives if isinstance(a, dict) and _schema_type(a) != "NULL"]
        _gen(code, usable[0] if usable else alternatives[0], name, depth)
        return
    kind = _schema_type(schema)
    if kind == "OBJECT":
        props = schema.get("properties") or {}
        order = schema.get("propertyOrdering") or schema.get("property_ordering") or []
        if type(props) is not dict or type(order) is not list:
            raise _Unsupported("properties")
        keys = [k for k in order if k in props] + [k for k in props if k not in order]
        if len(set(keys)) != len(keys) or not all(type(k) is str for k in keys):
            raise _Unsupported("propertyOrdering")
        if depth > 8 or not keys:
            code.text("{}")
            return
        for i, key in enumerate(keys):
            code.text(("{" if i == 0 else ", ") + _encode_str(key) + ": ")
            _gen(code, props[key], key, depth + 1)
        code.text("}")
        return
    if kind == "ARRAY":
        items = schema.get("items") or {"type": "STRING"}
        lo = _int(schema.get("minItems", schema.get("min_items")), 1)
        hi = _int(schema.get("maxItems", schema.get("max_items")), max(lo, 3))
        lo, hi = min(lo, hi), max(lo, hi)
        if type(lo) is not int or type(hi) is not int:
            raise _Unsupported("array bounds")
        code.line(_DRAW)
        if depth > 8:
            code.text("[]")
            return
        code.loops += 1
        i = f"i{code.loops}"
        code.line(f"n{code.loops} = {lo!r} + (s >> 33) % {min(hi, lo + 2) - lo + 1!r}")
        code.text("[")
        code.line(f"for {i} in range(n{code.loops}):")
        code.depth += 1
        code.line(f"if {i}:")
        code.depth += 1
        code.text(", ")
        code.flush()
        code.depth -= 1
        _gen(code, items, name, depth + 1)
        code.flush()
        code.depth -= 1
        code.text("]")
        return
    if kind == "INTEGER":
        lo = _int(schema.get("minimum"), 0)
        hi = _int(schema.get("maximum"), lo + 100)
        if type(lo) is not int or type(hi) is not int:
            raise _Unsupported("integer bounds")
        code.line(_DRAW)
        code.append(f"str({lo!r} + (s >> 33) % {max(hi, lo) - lo + 1!r})")
        return
    if kind == "NUMBER":
        lo = _num(schema.get("minimum"), 0.0)
        hi = _num(schema.get("maximum"), lo + 1.0)
        span = max(hi, lo) - lo
        if type(lo) is not float or type(span) is not float or not abs(lo) + abs(span) < 1e300:
            raise _Unsupported("number bounds")  # dumping an infinite value fails: the walker says how
        code.line(_DRAW)
        code.append(f"float.__repr__(round({code.constant(lo)} + {code.constant(span)} * ((s >> 33) % 1001) / 1000, 3))")
        return
    if kind == "BOOLEAN":
        code.line(_DRAW)
        code.append("('true' if (s >> 33) & 1 else 'false')")
        return
    if kind == "NULL":
        code.text("null")
        return
    fmt = schema.get("format")
    if fmt == "date-time":
        code.line(_DRAW)
        code.append("_date_time(s >> 33)")
        return
    if fmt == "date":
        code.line(_DRAW)
        code.append("_date(s >> 33)")
        return
    _gen_string(code, name)


def _gen_string(code: _Code, name: str) -> None:
    """`f"{name} {rng() % 1000}"` as a JSON string literal (digits and spaces need no escaping)."""
    code.text(_encode_str(f"{name} ")[:-1])
    code.line(_DRAW)
    code.append("str((s >> 33) % 1000)")
    code.text('"')


def _date_time(r: int) -> str:
    return f'"2025-{r % 12 + 1:02d}-{r % 28 + 1:02d}T{r % 24:02d}:{r % 60:02d}:00Z"'


def _date(r: int) -> str:
    return f'"2025-{r % 12 + 1:02d}-{r % 28 + 1:02d}"'


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _num(value: Any, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


# -- embeddings (see "Embeddings" in the module docstring) --------------------------------------------

EMBEDDING_DIMENSIONS = 768  # the text-embedding models' default
EMBEDDING_MAX_TOKENS = 2048  # what one text may hold before it is truncated
_TOKEN = re.compile(r"\w+|[^\w\s]")
_EIGHT = struct.Struct(">8I")


def embedding_token_count(text: str) -> int:
    """Tokens of `text` by the double's rule: word runs and single non-space symbols."""
    return sum(1 for _ in _TOKEN.finditer(text))


def mock_embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The unit vector of `text` (`dimensions` values), derived from SHA-256 as documented above."""
    data = text.encode("utf-8") + b"\x00"
    raw: list[float] = []
    k = 0
    while len(raw) < dimensions:
        raw.extend(u / 2**31 - 1 for u in _EIGHT.unpack(hashlib.sha256(data + str(k).encode("ascii")).digest()))
        k += 1
    del raw[dimensions:]
    norm = math.sqrt(math.fsum(v * v for v in raw))
    return [v / norm for v in raw]
