"""The Vertex emulator's own Gemini: deterministic answers to `GenerateContentRequest` JSON.

Written from the contract (shared/contract/vertex-batch.md §2.2-§2.4), not from batchflow's mock:
the emulator must not agree with batchflow by construction. Every choice derives from SHA-256 of
the model name, the system instruction and the prompt text, so the same request gets the same
answer in any job, on DuckDB or BigQuery (whose JSON spelling of the request differs).

Answers
- Text mode: ``Emulated answer <8 hex>: <first words of the prompt>``.
- JSON mode (`generationConfig.responseMimeType` / `response_mime_type` = application/json): JSON
  text fitting `responseSchema` (OpenAPI subset) or `responseJsonSchema`: enum → a hash-chosen value,
  string → a short text, integer/number (within minimum/maximum), boolean, object → every listed
  property (propertyOrdering first), array → max(1, minItems) items, anyOf → the first branch;
  without a schema ``{"answer": ...}``.
- `maxOutputTokens`: an answer longer than that (4 characters a token) is cut, finishReason MAX_TOKENS.

Row rules (`RowRule.parse`): ``{"when_prompt_contains": str, "when_model": str, "limit": int,
"outcome": ...}``; the first matching rule decides the row. Outcomes: ``recitation`` / ``safety``
(candidate without content, §2.4), ``prompt_blocked`` (no candidates, promptFeedback), ``max_tokens``,
``transient_error`` (429 RESOURCE_EXHAUSTED), ``server_error`` (500 INTERNAL), ``failed_precondition``
(400, the service-agent row of §2.2), ``bad_request`` (400 INVALID_ARGUMENT). Failed rows have no
response and a status ``<HTTP reason phrase>: {"error": {"code": ..., "message": ..., "status": ...}}``.
An invalid request (not JSON, not an object, no contents, a contents item without a valid role or
without parts, a proto-plus `type_` key) fails with a 400 status, as Vertex does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

ROW_OUTCOMES = (
    "recitation", "safety", "prompt_blocked", "max_tokens",
    "transient_error", "server_error", "failed_precondition", "bad_request",
)
_REASONS = {400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_ERRORS = {
    "transient_error": (429, "Resource exhausted. Please try again later. Please refer to "
                             "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                        "RESOURCE_EXHAUSTED"),
    "server_error": (500, "Internal error encountered.", "INTERNAL"),
    # the real row of contract §2.2 (GoogleCloudPlatform/generative-ai#1308)
    "failed_precondition": (400, "Service agents are being provisioned (https://cloud.google.com/vertex-ai/docs/"
                                 "general/access-control#service-agents). Service agents are needed to read the "
                                 "Cloud Storage file provided. So please try again in a few minutes.",
                            "FAILED_PRECONDITION"),
    "bad_request": (400, "Request contains an invalid argument.", "INVALID_ARGUMENT"),
}
_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)
_WORDS = ("clear", "solid", "brief", "useful", "plain", "steady", "careful", "direct", "honest", "simple")


def row_status(code: int, message: str, status: str) -> str:
    """Vertex's `status` text of a failed row (contract §2.2)."""
    body = json.dumps({"error": {"code": code, "message": message, "status": status}})
    return f"{_REASONS.get(code, 'Bad Request' if code < 500 else 'Internal Server Error')}: {body}"


@dataclass
class RowRule:
    """One configured row fault (see the module docstring)."""

    outcome: str
    prompt_contains: str | None = None
    model: str | None = None
    limit: int | None = None
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, raw: "RowRule | dict") -> "RowRule":
        if isinstance(raw, RowRule):
            return raw
        unknown = set(raw) - {"outcome", "when_prompt_contains", "when_model", "limit"}
        if unknown or raw.get("outcome") not in ROW_OUTCOMES:
            raise ValueError(f"bad row rule {raw!r}: keys when_prompt_contains/when_model/limit/outcome, "
                             f"outcome one of {ROW_OUTCOMES}")
        return cls(raw["outcome"], raw.get("when_prompt_contains"), raw.get("when_model"), raw.get("limit"))

    def take(self, prompt: str, model: str) -> bool:
        """Does the rule fire for this row (counting it against `limit`)?"""
        if self.prompt_contains is not None and self.prompt_contains not in prompt:
            return False
        if self.model is not None and self.model != model:
            return False
        with self._lock:
            if self.limit is not None and self.hits >= self.limit:
                return False
            self.hits += 1
        return True


@dataclass
class RowResult:
    """The emulator's answer to one input row."""

    response: dict | None
    status: str
    outcome: str  # ok | invalid | one of ROW_OUTCOMES | truncated (natural MAX_TOKENS)


class _Seed:
    """Deterministic choices from a SHA-256 digest (re-hashed when exhausted)."""

    def __init__(self, text: str):
        self.digest = hashlib.sha256(text.encode()).digest()
        self.pos = 0

    def int(self, n: int) -> int:
        if self.pos + 4 > len(self.digest):
            self.digest, self.pos = hashlib.sha256(self.digest).digest(), 0
        value = int.from_bytes(self.digest[self.pos : self.pos + 4], "big")
        self.pos += 4
        return value % max(n, 1)

    def unit(self) -> float:
        return self.int(1_000_000) / 1_000_000


def _get(obj: dict, camel: str) -> Any:
    """A field in camelCase or snake_case (proto JSON accepts both, contract §1)."""
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(snake)


def _texts(content: Any) -> list[str]:
    parts = content.get("parts") if isinstance(content, dict) else None
    if isinstance(parts, dict):  # a single part object (seen in Google's own samples)
        parts = [parts]
    return [p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _problem(request: Any) -> str | None:
    """Why Vertex would refuse this request (a 400 row), or None."""
    if not isinstance(request, dict):
        return "Invalid JSON payload received. Expected an object."
    if _has_key(request, "type_"):
        return 'Invalid JSON payload received. Unknown name "type_" at \'generation_config.response_schema\': Cannot find field.'
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "Unable to submit request because it must include at least one contents field."
    for item in contents:
        if not isinstance(item, dict) or item.get("role") not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = item.get("parts")
        if not parts:
            return "Unable to submit request because it must have at least one parts field, which describes the prompt input."
    return None


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    return isinstance(value, list) and any(_has_key(v, key) for v in value)


def _schema_value(schema: Any, seed: _Seed, prompt_words: list[str], depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > 8:
        return None
    for key in ("anyOf", "any_of", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _schema_value(schema[key][0], seed, prompt_words, depth + 1)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed.int(len(schema["enum"]))]
    kind = schema.get("type")
    if isinstance(kind, list):  # JSON Schema ["string", "null"]
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        first = [k for k in _get(schema, "propertyOrdering") or [] if k in props]
        order = first + [k for k in props if k not in first]
        return {k: _schema_value(props[k], seed, prompt_words, depth + 1) for k in order}
    if kind == "array":
        n = max(1, int(_get(schema, "minItems") or 0))
        return [_schema_value(schema.get("items") or {}, seed, prompt_words, depth + 1) for _ in range(n)]
    if kind == "integer":
        lo, hi = int(schema.get("minimum", 1)), int(schema.get("maximum", 5))
        return lo + seed.int(hi - lo + 1)
    if kind == "number":
        lo, hi = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))
        return round(lo + (hi - lo) * seed.unit(), 2)
    if kind == "boolean":
        return bool(seed.int(2))
    if kind == "null":
        return None
    return f"A {_WORDS[seed.int(len(_WORDS))]} note on {' '.join(prompt_words[:4]) or 'the input'}."


def _ratings(seed: _Seed, blocked: str | None = None) -> list[dict]:
    out = []
    for category in _CATEGORIES:
        if category == blocked:
            out.append({"category": category, "probability": "HIGH", "probabilityScore": 0.93,
                        "severity": "HARM_SEVERITY_HIGH", "severityScore": 0.88, "blocked": True})
        else:
            p, s = round(0.02 + 0.2 * seed.unit(), 6), round(0.01 + 0.15 * seed.unit(), 6)
            out.append({"category": category, "probability": "NEGLIGIBLE", "probabilityScore": p,
                        "severity": "HARM_SEVERITY_NEGLIGIBLE", "severityScore": s})
    return out


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def answer(request_text: Any, model: str, rules: list[RowRule], processed_time: str) -> RowResult:
    """The answer to one `request` cell (JSON text, an already parsed value, or None)."""
    request = request_text
    if request is None or isinstance(request, (str, bytes)):
        try:
            request = json.loads(request_text) if request_text is not None else None
        except ValueError as exc:
            return RowResult(None, row_status(400, f"Invalid JSON payload received. {exc}", "INVALID_ARGUMENT"), "invalid")
    problem = _problem(request)
    if problem:
        return RowResult(None, row_status(400, problem, "INVALID_ARGUMENT"), "invalid")
    short = model.rsplit("/", 1)[-1]
    prompt = "\n".join(t for c in request["contents"] for t in _texts(c))
    system = "\n".join(_texts(_get(request, "systemInstruction") or {}))
    seed = _Seed(f"{short}\n{system}\n{prompt}")
    outcome = next((r.outcome for r in rules if r.take(prompt, short)), "ok")
    if outcome in _ERRORS:
        return RowResult(None, row_status(*_ERRORS[outcome]), outcome)

    prompt_tokens = _tokens(system + prompt)
    response_id = base64.urlsafe_b64encode(seed.digest[:16]).decode().rstrip("=")
    meta = {"modelVersion": short, "createTime": processed_time, "responseId": response_id}
    if outcome == "prompt_blocked":
        return RowResult({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "The prompt was blocked."},
            "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            **meta,
        }, "", outcome)
    usage_blocked = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
    if outcome == "safety":
        blocked = _CATEGORIES[seed.int(len(_CATEGORIES))]
        return RowResult({"candidates": [{"index": 0, "finishReason": "SAFETY", "safetyRatings": _ratings(seed, blocked)}],
                          "usageMetadata": usage_blocked, **meta}, "", outcome)
    if outcome == "recitation":
        start = seed.int(200)
        return RowResult({"candidates": [{
            "index": 0, "finishReason": "RECITATION", "safetyRatings": _ratings(seed),
            "citationMetadata": {"citations": [{"startIndex": start, "endIndex": start + 150, "uri": "https://example.com/source",
                                                "license": "MIT"}]},
        }], "usageMetadata": usage_blocked, **meta}, "", outcome)

    config = _get(request, "generationConfig") or {}
    words = prompt.split()
    if str(_get(config, "responseMimeType") or "").lower() == "application/json":
        schema = _get(config, "responseSchema") or _get(config, "responseJsonSchema")
        value = _schema_value(schema, seed, words) if schema else {"answer": f"{_WORDS[seed.int(10)]} {' '.join(words[:4])}"}
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = f"Emulated answer {seed.digest.hex()[:8]}: {' '.join(words[:12])}"
    finish = "STOP"
    limit = _get(config, "maxOutputTokens")
    if outcome == "max_tokens":
        text, finish = text[: max(1, len(text) // 2)], "MAX_TOKENS"
    elif isinstance(limit, int) and limit > 0 and _tokens(text) > limit:
        text, finish, outcome = text[: limit * 4], "MAX_TOKENS", "truncated"
    out_tokens = _tokens(text)
    return RowResult({
        "candidates": [{
            "index": 0,
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish,
            "avgLogprobs": -round(0.01 + 0.5 * seed.unit(), 6),
            "safetyRatings": _ratings(seed),
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
            "totalTokenCount": prompt_tokens + out_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
            "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": out_tokens}],
        },
        **meta,
    }, "", outcome)


def response_text(response: dict | None) -> str | None:
    """The answer text (text parts joined, thoughts skipped): what a correct flattening extracts."""
    if not response:
        return None
    candidates = response.get("candidates") or []
    parts = ((candidates[0].get("content") or {}).get("parts") or []) if candidates else []
    texts = [p["text"] for p in parts if "text" in p and not p.get("thought")]
    return "".join(texts) if texts else None
