"""The small protocol every warehouse adapter implements.

All SQL handed to an adapter is BigQuery Standard SQL (the language models are written in);
an adapter for another engine transpiles it. Materialization DDL is the adapter's business:
the runner hands over a SELECT and a target relation, never a CREATE statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Literal, Protocol

if TYPE_CHECKING:  # pyarrow costs 0.2 s to import; `batchflow ls` never needs it
    import pyarrow as pa

from batchflow.relation import Relation

if TYPE_CHECKING:
    from batchflow.table_options import TableOptions


@dataclass(frozen=True)
class Column:
    """A column and its type, spelled as BigQuery spells it (STRING, INT64, JSON, ARRAY<STRING>, ...)."""

    name: str
    type: str


RelationKind = Literal["table", "view"]


class Warehouse(Protocol):
    """What the runner and batch backends need from a warehouse."""

    #: "duckdb" or "bigquery"
    name: str
    #: Table config keys (`batchflow.table_options.TABLE_OPTION_KEYS`) this warehouse does not apply,
    #: each with why; every other key is applied. The runner notes the ignored keys a model sets.
    TABLE_OPTIONS_IGNORED: dict[str, str]

    def relation(self, identifier: str, schema: str | None = None) -> Relation:
        """A relation in the target's database, in `schema` (default: the target's schema)."""

    def ensure_schema(self, schema: str) -> None:
        """Create the schema (dataset) if it is missing."""

    def execute(self, sql: str) -> None:
        """Run a BigQuery SQL statement for its effect."""

    def query_arrow(self, sql: str) -> pa.Table:
        """Run a BigQuery SQL query and return all rows (for small results only)."""

    def iter_batches(self, sql: str, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        """Stream the rows of a BigQuery SQL query as Arrow record batches."""

    def kind(self, relation: Relation) -> RelationKind | None:
        """"table", "view", or None when the relation does not exist."""

    def columns(self, relation: Relation) -> list[Column]:
        """Columns of an existing relation, with BigQuery type names."""

    def create_table_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> int:
        """Atomically replace `relation` with the rows of `select_sql`; returns the row count. `options`:
        partitioning, clustering, table options, descriptions and grants, as far as this warehouse applies them."""

    def create_view_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> None:
        """Create or replace a view (with its description, labels, expiration and grants from `options`)."""

    def create_table_if_missing(self, relation: Relation, columns_sql: str, options: TableOptions | None = None) -> None:
        """CREATE TABLE IF NOT EXISTS with BigQuery column definitions (`a STRING, b INT64`), laid out per
        `options` where the warehouse has partitions and clustering. An existing table is left as it is."""

    def apply_schema_change(self, relation: Relation, select_sql: str, options: TableOptions) -> list[str]:
        """Before an incremental run adds rows: compare the SELECT's columns with the table's and act per
        `options.on_schema_change` (ignore, fail: ExecutionError, append_new_columns, sync_all_columns).
        Returns what changed, one line per column."""

    def insert_overwrite(self, relation: Relation, select_sql: str, options: TableOptions) -> int:
        """Replace the partitions of `relation` the SELECT's rows fall in (dynamic), or the partitions
        `options.partitions` lists (static), with the SELECT's rows; returns the rows inserted."""

    def apply_table_options(self, relation: Relation, options: TableOptions) -> None:
        """After an incremental run: bring an existing table's description, labels, column descriptions and
        grants to `options` (what `create_table_as` sets when it builds the table)."""

    def insert_into(self, relation: Relation, select_sql: str) -> int:
        """Append the rows of `select_sql` (matching columns by name); returns rows inserted."""

    def merge_into(self, relation: Relation, select_sql: str, unique_key: list[str]) -> int:
        """Upsert the rows of `select_sql` on `unique_key`; returns rows affected."""

    def drop(self, relation: Relation) -> None:
        """Drop a table or view if it exists."""

    def list_relations(self, schema: str, prefix: str) -> list[Relation]:
        """Tables and views of `schema` whose name starts with `prefix` (batch scratch tables left over)."""

    def write_arrow(
        self,
        relation: Relation,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        json_columns: Iterable[str] = (),
    ) -> int:
        """Create `relation` (it must not exist) from Arrow batches; `json_columns` hold JSON text
        and become JSON-typed columns. Returns the row count."""

    def create_table_from_schema(self, relation: Relation, schema: pa.Schema, json_columns: Iterable[str] = ()) -> None:
        """Create `relation` (it must not exist) empty, with the columns `write_arrow` would give
        `schema` (`json_columns` JSON-typed): a table that rows are then committed into by
        `append_arrow`, so it exists, and holds what was committed, whatever happens to the writer."""

    def append_arrow(
        self,
        relation: Relation,
        batches: pa.RecordBatch | pa.Table | Iterable[pa.RecordBatch],
        json_columns: Iterable[str] = (),
        checked_json: Iterable[str] = (),
    ) -> int:
        """Append Arrow rows to an existing table (made by `create_table_from_schema` with the same
        schema; columns matched by name, `json_columns` hold JSON text) in one commit of its own:
        after a crash the table holds all of these rows or none. Returns the rows appended. A
        `pa.RecordBatchReader` may be streamed into the commit as it yields (DuckDB does).
        `checked_json`: those of `json_columns` whose texts are known to be JSON (read out of a JSON
        column, or written by a JSON encoder), which a warehouse may store without parsing them
        again (DuckDB does; BigQuery parses every JSON column it loads)."""

    def load_csv(self, relation: Relation, path: Path) -> int:
        """Replace `relation` with the rows of a CSV file (seeds, local samples of sources)."""

    def request_hash_sql(self, request_sql: str, model: str) -> str:
        """A SQL expression (BigQuery syntax) giving the request hash of the JSON `request_sql`
        for `model`: SHA-256 hex of the canonical JSON text plus the model name. NULL for a NULL
        or unparsable request; an adapter may also give NULL for every invalid request."""

    def request_problem_sql(self, request_sql: str, hash_sql: str | None = None) -> str:
        """A SQL expression (BigQuery syntax) giving why the request in `request_sql` is invalid
        (see `batchflow.requests.request_problem`), or NULL when it is valid. `hash_sql` is the
        row's `request_hash_sql` value when the caller has it: an adapter whose hash is NULL for
        every invalid request skips checking the rows that have one."""

    def dry_run(self, sql: str) -> tuple[int | None, list[Column]]:
        """Validate a query without running it: bytes it would process (None when the engine
        cannot tell) and its output columns. Raises ExecutionError with the engine's message."""

    def check_batch_location(self) -> None:
        """Raise ConfigError when batch jobs cannot read and write this warehouse's tables
        (BigQuery: multi-region or global datasets). A no-op where location has no meaning."""

    def close(self) -> None:
        """Release connections."""
