"""The job ledger: one row per batch job, kept in the target dataset (`_batchflow_jobs`).

It is written before a job is created (state SUBMITTING), again once the backend named the job,
and on every state change, so a rerun on a fresh machine knows what was already paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchflow.batch.states import CLOSED_STATES
from batchflow.relation import Relation, string_literal
from batchflow.warehouse.base import Warehouse

LEDGER_TABLE = "_batchflow_jobs"

_COLUMNS = """
  job_key STRING,
  job_name STRING,
  node STRING,
  run_id STRING,
  shard INT64,
  gemini_model STRING,
  input_table STRING,
  output_table STRING,
  fingerprint STRING,
  state STRING,
  row_count INT64,
  successful_count INT64,
  failed_count INT64,
  error STRING,
  created_at TIMESTAMP,
  updated_at TIMESTAMP,
  job_state STRING,
  missing_count INT64,
  mode STRING,
  sample STRING
"""
#: columns added after the first release: an older ledger gets them on open
_ADDED_COLUMNS = (("job_state", "STRING"), ("missing_count", "INT64"), ("mode", "STRING"), ("sample", "STRING"))


@dataclass
class LedgerEntry:
    """One job as the ledger remembers it."""

    job_key: str  # batchflow's own id (run, node, shard): known before the backend names the job
    job_name: str | None
    node: str
    run_id: str
    shard: int
    gemini_model: str
    input_table: str
    output_table: str
    fingerprint: str
    state: str
    row_count: int
    successful_count: int = 0
    failed_count: int = 0
    error: str | None = None
    created_at: Any = None
    updated_at: Any = None
    job_state: str | None = None  # the backend's last state (the row's `state` also says LANDED/CLOSED)
    missing_count: int | None = None  # rows the job was sent and left out of its output
    mode: str | None = None  # how it answers: "batch" (a batch job), "online" (--online); None: before modes
    sample: str | None = None  # the run's --sample N / --sample-fraction p, when it sent a sample


class Ledger:
    """Reads and writes `_batchflow_jobs` through a warehouse adapter."""

    def __init__(self, warehouse: Warehouse, schema: str | None = None):
        self.warehouse = warehouse
        self.relation: Relation = warehouse.relation(LEDGER_TABLE, schema)
        warehouse.execute(f"CREATE TABLE IF NOT EXISTS {self.relation.render()} ({_COLUMNS})")
        have = {c.name for c in warehouse.columns(self.relation)}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                warehouse.execute(f"ALTER TABLE {self.relation.render()} ADD COLUMN {name} {kind}")

    def record(self, entry: LedgerEntry) -> None:
        """Insert a new job row (called before the backend's create)."""
        values = ", ".join(
            [
                string_literal(entry.job_key),
                string_literal(entry.job_name),
                string_literal(entry.node),
                string_literal(entry.run_id),
                str(int(entry.shard)),
                string_literal(entry.gemini_model),
                string_literal(entry.input_table),
                string_literal(entry.output_table),
                string_literal(entry.fingerprint),
                string_literal(entry.state),
                str(int(entry.row_count)),
                "0",
                "0",
                "NULL",
                "CURRENT_TIMESTAMP()",
                "CURRENT_TIMESTAMP()",
                "NULL",
                "NULL",
                string_literal(entry.mode),
                string_literal(entry.sample),
            ]
        )
        self.warehouse.execute(f"INSERT INTO {self.relation.render()} VALUES ({values})")

    def update(self, job_key: str, **fields: Any) -> None:
        """Set columns of one job row (state, job_name, counts, error)."""
        sets = []
        for column, value in fields.items():
            if isinstance(value, int) and not isinstance(value, bool):
                sets.append(f"{column} = {value}")
            else:
                sets.append(f"{column} = {string_literal(None if value is None else str(value))}")
        sets.append("updated_at = CURRENT_TIMESTAMP()")
        self.warehouse.execute(
            f"UPDATE {self.relation.render()} SET {', '.join(sets)} WHERE job_key = {string_literal(job_key)}"
        )

    def entries(self, node: str | None = None, open_only: bool = False) -> list[LedgerEntry]:
        """Ledger rows, oldest first; `open_only` keeps the rows whose requests are still in flight or
        whose output is not landed yet (see `batchflow.batch.states`). A state this version does not
        know counts as open: a newer version's row is never given up silently."""
        where = []
        if node is not None:
            where.append(f"node = {string_literal(node)}")
        if open_only:
            closed = ", ".join(string_literal(s) for s in sorted(CLOSED_STATES))
            where.append(f"state NOT IN ({closed})")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        table = self.warehouse.query_arrow(
            f"SELECT * FROM {self.relation.render()}{clause} ORDER BY created_at, job_key"
        )
        return [LedgerEntry(**row) for row in table.to_pylist()]
