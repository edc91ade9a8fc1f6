"""A batch model's history for the docs site, read through the warehouse protocol: its jobs from the
ledger (`_batchflow_jobs`), and what they landed from the model's responses store (`<model>__responses`).

Read-only on purpose: `docs generate` may point at a production dataset, so nothing here creates or
alters a table (the ledger is queried directly rather than through `Ledger`, whose constructor creates
the table when it is missing).

Per run (the jobs sharing a `run_id`, in the order they started):
- `sent`, `successful`, `failed`, `missing`: the ledger's counts of the run's jobs;
- `reused`: answers in the store landed by an earlier run's jobs (so this run did not pay for them);
- `outcomes`, tokens and cost: of the answers the run's jobs landed that are still the stored answer
  (a later run that answered a row again takes it over).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Callable

from batchflow.batch_stages import answer_is_good, outcomes_sql
from batchflow.compiler import batch_results_relations
from batchflow.cost import Price, price_for
from batchflow.ledger import LEDGER_TABLE, LedgerEntry
from batchflow.requests import is_embedding_model

if TYPE_CHECKING:
    from batchflow.compiler import Node
    from batchflow.warehouse.base import Warehouse

MacroFn = Callable[..., str]
_LEDGER_FIELDS = tuple(LedgerEntry.__dataclass_fields__)


@dataclass
class HistoryReader:
    """Reads the history of batch models from one warehouse."""

    warehouse: "Warehouse"
    macro: MacroFn  # renders a built-in macro for the target (row_outcome, usage_tokens)
    prices: dict[str, Price]

    def __post_init__(self) -> None:
        self.ledger = self.warehouse.relation(LEDGER_TABLE)
        self.has_ledger = self.warehouse.kind(self.ledger) is not None

    def jobs(self, node: str) -> list[dict[str, Any]]:
        """The ledger rows of one batch model, oldest first (empty without a ledger)."""
        if not self.has_ledger:
            return []
        from batchflow.relation import string_literal

        rows = self.warehouse.query_arrow(
            f"SELECT * FROM {self.ledger.render()} WHERE node = {string_literal(node)} ORDER BY created_at, job_key"
        ).to_pylist()
        return [{k: _plain(row.get(k)) for k in _LEDGER_FIELDS} for row in rows]

    def landed(self, node: "Node") -> list[dict[str, Any]]:
        """Per job and outcome of the stored answers: rows, tokens in and out, and whether the answer is a
        finished call (one a rerun reuses). An embedding model's store holds its predictions as
        `response`; its tokens are those it read."""
        responses = batch_results_relations(node.relation)["responses"]
        if self.warehouse.kind(responses) is None:
            return []
        m = self.macro
        if is_embedding_model(node.config.get("model")):
            outcome = m("row_outcome", "r.response", "r.status")
            read = f"SUM({m('embedding_token_count', 'r.response')})"
            tokens = f"{read} AS prompt, 0 AS candidates, 0 AS thoughts, {read} AS total"
        else:
            outcome = m("row_outcome", "r.response", "r.status", "r.request")
            tokens = (f"SUM({m('usage_tokens', 'r.response', 'promptTokenCount')}) AS prompt, "
                      f"SUM({m('usage_tokens', 'r.response', 'candidatesTokenCount')}) AS candidates, "
                      f"SUM({m('usage_tokens', 'r.response', 'thoughtsTokenCount')}) AS thoughts, "
                      f"SUM({m('usage_tokens', 'r.response', 'totalTokenCount')}) AS total")
        sql = (f"SELECT r.job_name, r.model_name, {outcome} AS outcome, {answer_is_good('r')} AS good, "
               f"COUNT(*) AS n, {tokens} FROM {responses.render()} r GROUP BY 1, 2, 3, 4")
        return [{k: _plain(v) for k, v in row.items()} for row in self.warehouse.query_arrow(sql).to_pylist()]

    def outcomes(self, node: "Node") -> dict[str, int]:
        """Rows of the model's relation per outcome now (`missing`: no answer yet)."""
        if self.warehouse.kind(node.relation) is None:
            return {}
        embedding = is_embedding_model(node.config.get("model"))
        rows = self.warehouse.query_arrow(outcomes_sql(node.relation, self.macro, embedding)).to_pylist()
        return {str(r["outcome"]): int(r["n"]) for r in rows}

    def history(self, node: "Node") -> dict[str, Any]:
        """Jobs, runs and the current outcome mix of one batch model, as plain data."""
        jobs = self.jobs(node.name)
        landed = self.landed(node)
        return {
            "jobs": jobs,
            "runs": summarize_runs(jobs, landed, self.prices),
            "outcomes": self.outcomes(node),
            "landed_rows": sum(int(r["n"]) for r in landed),
        }


def summarize_runs(jobs: list[dict[str, Any]], landed: list[dict[str, Any]],
                   prices: dict[str, Price]) -> list[dict[str, Any]]:
    """One summary per run (see the module doc), in the order the runs started."""
    run_of_job = {j["job_name"]: j["run_id"] for j in jobs if j.get("job_name")}
    runs: dict[str, dict[str, Any]] = {}
    for job in jobs:
        run = runs.setdefault(job["run_id"], {
            "run_id": job["run_id"], "started_at": job["created_at"], "ended_at": job["updated_at"], "jobs": 0,
            "states": Counter(), "sent": 0, "successful": 0, "failed": 0, "missing": 0, "reused": 0,
            "outcomes": Counter(), "prompt_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost": 0.0,
            "models": set()})
        run["jobs"] += 1
        run["states"][job["state"]] += 1
        run["sent"] += int(job["row_count"] or 0)
        run["successful"] += int(job["successful_count"] or 0)
        run["failed"] += int(job["failed_count"] or 0)
        run["missing"] += int(job["missing_count"] or 0)
        run["models"].add(job["gemini_model"])
        run["started_at"] = min(filter(None, [run["started_at"], job["created_at"]]), default=None)
        run["ended_at"] = max(filter(None, [run["ended_at"], job["updated_at"]]), default=None)
    order = list(runs)  # jobs come oldest first, so runs are in the order they started
    for row in landed:
        run_id = run_of_job.get(row["job_name"])
        if run_id is None:
            continue  # an answer whose job the ledger no longer holds
        run = runs[run_id]
        n = int(row["n"] or 0)
        run["outcomes"][str(row["outcome"])] += n
        prompt = int(row["prompt"] or 0)
        output = int(row["candidates"] or 0) + int(row["thoughts"] or 0)
        run["prompt_tokens"] += prompt
        run["output_tokens"] += output
        run["total_tokens"] += int(row["total"] or 0)
        price = price_for(prices, str(row["model_name"] or ""))
        run["cost"] = None if run["cost"] is None or price is None else run["cost"] + price.cost(prompt, output)
        if row["good"]:  # a finished answer from this run is reused by every later run
            for later in order[order.index(run_id) + 1:]:
                runs[later]["reused"] += n
    out = []
    for run_id in order:
        run = runs[run_id]
        out.append({**run, "states": dict(run["states"]), "outcomes": dict(run["outcomes"]),
                    "models": sorted(m for m in run["models"] if m),
                    "cost": None if run["cost"] is None else round(run["cost"], 9)})
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: timestamps as ISO text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value
