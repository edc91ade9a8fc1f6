"""Token and cost estimates for batch models, and the budget that refuses to overspend.

Prices come from the project (`batch: prices:` in batchflow_project.yml, batch prices in USD per
million tokens), because they change more often than code does. `--online` runs pay online prices: the
entry's `online_input_per_million` / `online_output_per_million`, or twice the batch price when those
are not given (Vertex's batch discount is 50%).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from batchflow.errors import ConfigError, ExecutionError

#: rough characters per token for estimates (Gemini's own rule of thumb for English text)
CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256


class BudgetError(ExecutionError):
    """A batch model would exceed a configured request or cost limit; nothing was submitted."""


#: online price / batch price when an entry gives no online price (batch is half price, contract §1)
ONLINE_FACTOR = 2.0


@dataclass(frozen=True)
class Price:
    """Batch price of one model in USD per million tokens (and its online price, when given)."""

    input_per_million: float
    output_per_million: float
    online_input_per_million: float | None = None
    online_output_per_million: float | None = None

    def for_mode(self, mode: str) -> "Price":
        """The price answers in `mode` ("batch" | "online") are paid at."""
        if mode != "online":
            return self
        return Price(self.online_input_per_million if self.online_input_per_million is not None
                     else self.input_per_million * ONLINE_FACTOR,
                     self.online_output_per_million if self.online_output_per_million is not None
                     else self.output_per_million * ONLINE_FACTOR)

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """USD for the given token counts."""
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1_000_000


def price_table(batch_defaults: dict[str, Any]) -> dict[str, Price]:
    """Read `batch: prices: {model: {input_per_million: x, output_per_million: y}}`."""
    table: dict[str, Price] = {}
    for model, entry in (batch_defaults.get("prices") or {}).items():
        try:
            online = [entry.get(k) for k in ("online_input_per_million", "online_output_per_million")]
            table[str(model)] = Price(float(entry["input_per_million"]), float(entry["output_per_million"]),
                                      *(None if v is None else float(v) for v in online))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"batch.prices.{model} needs numeric input_per_million and output_per_million"
            ) from None
    return table


def price_for(table: dict[str, Price], model: str) -> Price | None:
    """The price of `model`; a versioned name (`gemini-2.5-flash-001`) falls back to its family."""
    if model in table:
        return table[model]
    family = max((name for name in table if model.startswith(name)), key=len, default=None)
    return table[family] if family else None


@dataclass
class Estimate:
    """What sending some requests is expected to use and cost."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = 0.0  # None when some model has no price

    def add(self, other: "Estimate") -> None:
        """Accumulate another estimate into this one."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost


class RunBudget:
    """Limits across every batch model of one run (`max_requests_per_run`,
    `max_estimated_cost_per_run`); lifecycles on several threads reserve from it."""

    def __init__(self, batch_defaults: dict[str, Any]):
        self.max_requests = _optional_number(batch_defaults.get("max_requests_per_run"), int)
        self.max_cost = _optional_number(batch_defaults.get("max_estimated_cost_per_run"), float)
        self.spent = Estimate()
        self._lock = threading.Lock()

    def reserve(self, node: str, estimate: Estimate) -> None:
        """Count `estimate` against the run's limits, or raise BudgetError and count nothing."""
        with self._lock:
            requests = self.spent.requests + estimate.requests
            if self.max_requests is not None and requests > self.max_requests:
                raise BudgetError(
                    f"{node}: {estimate.requests:,} requests would bring this run to {requests:,}, over "
                    f"max_requests_per_run={self.max_requests:,}; nothing was submitted"
                )
            if self.max_cost is not None:
                if estimate.cost is None:
                    raise BudgetError(f"{node}: max_estimated_cost_per_run is set but a model has no price "
                                      "under batch: prices:; nothing was submitted")
                total = (self.spent.cost or 0.0) + estimate.cost
                if total > self.max_cost:
                    raise BudgetError(
                        f"{node}: estimated ${estimate.cost:,.4f} would bring this run to ${total:,.4f}, over "
                        f"max_estimated_cost_per_run=${self.max_cost:,.4f}; nothing was submitted"
                    )
            self.spent.add(estimate)


def check_model_limits(node: str, estimate: Estimate, max_requests: int | None, max_cost: float | None) -> None:
    """Per-model limits (`max_requests`, `max_estimated_cost` in the model's config)."""
    if max_requests is not None and estimate.requests > max_requests:
        raise BudgetError(f"{node}: {estimate.requests:,} requests to send exceed max_requests={max_requests:,}; "
                          "nothing was submitted")
    if max_cost is not None:
        if estimate.cost is None:
            raise BudgetError(f"{node}: max_estimated_cost is set but its model has no price under batch: prices:; "
                              "nothing was submitted")
        if estimate.cost > max_cost:
            raise BudgetError(f"{node}: estimated cost ${estimate.cost:,.4f} exceeds max_estimated_cost="
                              f"${max_cost:,.4f}; nothing was submitted")


def _optional_number(value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch limit {value!r} is not a number") from None
