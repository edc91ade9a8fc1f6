"""A deterministic, fast stand-in for Gemini: same request + model → byte-identical response.

Answers are modern `GenerateContentResponse` objects (contract §2.3). Every choice (answer words,
JSON values, scores, ids, timestamps) derives from the digest of the request hash input
(``canonical_json(request) + "\\n" + model``, see `batchflow.requests.request_hash`), never from
the row's position in a batch or from the clock.

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

Other config: ``traffic_type`` (usageMetadata.trafficType, default ``ON_DEMAND``; the SDK's
TrafficType enum has no BATCH value).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from batchflow.batch.providers.base import ProviderResult, error_status, row_error, system_text
from batchflow.errors import ConfigError
from batchflow.requests import canonical_json as _canonical, request_problem

OUTCOMES = ("recitation", "safety", "prompt_blocked", "max_tokens", "row_error", "transient_error")

_c_answer = json.encoder.c_make_encoder(  # built once: json.dumps rebuilds it on every call
    None, lambda o: str(o), json.encoder.encode_basestring, None, ": ", ", ", False, False, False
) if getattr(json.encoder, "c_make_encoder", None) else None


def _dump_answer(value: Any) -> str:
    """The JSON answer text, spaced like Gemini's (`{"a": 1, "b": 2}`)."""
    if _c_answer is None or isinstance(value, str):  # pragma: no cover - pure-Python json
        return json.dumps(value, ensure_ascii=False)
    return "".join(_c_answer(value, 0))
_sha256 = hashlib.sha256

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


class MockProvider:
    """Deterministic Gemini stand-in; see the module docstring."""

    name = "mock"

    def __init__(self, config: dict | None = None):
        config = dict(config or {})
        failures = config.get("failures") or []
        if not isinstance(failures, list):
            raise ConfigError("mock provider: failures must be a list of rules")
        self.rules = [FailureRule.parse(r, i) for i, r in enumerate(failures)]
        self.traffic_type = str(config.get("traffic_type", "ON_DEMAND"))
        self._traffic_json = json.dumps(self.traffic_type)
        self._versions: dict[str, str] = {}

    # -- protocol ------------------------------------------------------------------------------
    def generate(self, model: str, requests: list[dict]) -> list[ProviderResult]:
        version = self._versions.get(model)
        if version is None:
            version = self._versions[model] = model_version(model)
        answer = self._answer
        out = []
        append = out.append
        for req in requests:
            try:
                append(answer(model, version, req))
            except Exception as exc:  # a provider never raises for one row
                append(row_error(400, f"Invalid request: {type(exc).__name__}: {exc}"))
        return out

    # -- one row ---------------------------------------------------------------------------------
    def _answer(self, model: str, version: str, req: dict) -> ProviderResult:
        # Collect the prompt text and validate in one walk (request_problem words the error).
        contents = req.get("contents") if type(req) is dict else None
        texts: list[str] = []
        bad = type(contents) is not list or not contents
        if not bad:
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
            return row_error(400, request_problem(req) or "Request contains an invalid argument.")

        digest = _sha256((_canonical(req) + "\n" + model).encode()).digest()
        h = int.from_bytes(digest[:8], "big")
        prompt = "\n".join(texts)

        outcome = None
        for rule in self.rules:
            if rule.matches(prompt, model, h):
                outcome = rule.outcome
                break
        if outcome == "row_error":
            return ProviderResult(None, _ROW_ERROR)
        if outcome == "transient_error":
            return ProviderResult(None, _TRANSIENT)

        si = req.get("systemInstruction") or req.get("system_instruction")
        prompt_tokens = (len(prompt) + (len(system_text(req)) if si else 0)) // 4 + 1
        create_time = f"{_TIMES[(h >> 24) % _NTIMES]}.{h % 1000000:06d}Z"
        response_id = digest.hex()[16:40]

        if outcome in ("prompt_blocked", "recitation", "safety"):
            return ProviderResult(self._blocked(outcome, h, prompt_tokens, version, create_time, response_id))

        gc = req.get("generationConfig") or req.get("generation_config") or _EMPTY
        if gc is not _EMPTY and (gc.get("responseMimeType") or gc.get("response_mime_type")) == "application/json":
            schema = (
                gc.get("responseSchema")
                or gc.get("response_schema")
                or gc.get("responseJsonSchema")
                or gc.get("response_json_schema")
            )
            if schema:
                value = _value(schema, _Rng(h), "value", 0)
            else:
                value = {"answer": _snippet(texts, 6), "label": _LABELS[h % 4], "score": (h >> 8) % 100 / 100}
            text = _dump_answer(value)
        else:
            text = f"Mock answer {h % 10000}: {_snippet(texts, 12)}"

        finish = "STOP"
        cand_tokens = len(text) // 4 + 1
        max_out = (gc.get("maxOutputTokens") or gc.get("max_output_tokens")) if gc is not _EMPTY else None
        if outcome == "max_tokens":
            text = text[: max(1, len(text) // 2)]
            finish = "MAX_TOKENS"
            cand_tokens = max_out if type(max_out) is int and max_out > 0 else len(text) // 4 + 1
        elif type(max_out) is int and 0 < max_out < cand_tokens:
            text = text[: max_out * 4]
            finish = "MAX_TOKENS"
            cand_tokens = max_out

        ratings = _RATINGS_JSON[(h >> 20) % _NRATINGS]
        return ProviderResult(
            text=(
                f'{{"candidates":[{{"content":{{"role":"model","parts":[{{"text":{_encode_str(text)}}}]}},'
                f'"finishReason":"{finish}","avgLogprobs":{_LOGPROBS[(h >> 12) % _NLOGPROBS]},'
                f'"safetyRatings":{ratings}}}],'
                f'"usageMetadata":{{"promptTokenCount":{prompt_tokens},"candidatesTokenCount":{cand_tokens},'
                f'"totalTokenCount":{prompt_tokens + cand_tokens},"trafficType":{self._traffic_json}}},'
                f'"modelVersion":{_encode_str(version)},"createTime":"{create_time}","responseId":"{response_id}"}}'
            )
        )

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
