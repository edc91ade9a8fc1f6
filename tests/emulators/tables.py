"""The Vertex emulator's own table access: a DuckDB file or a BigQuery client, never batchflow.

The emulator must not share code with batchflow's warehouse adapters: a bug on both sides (a type
mapping, a JSON cast) would then be invisible. So it reads input and writes output tables here, with
`duckdb` and `google.cloud.bigquery` used directly. Tables are addressed as `bq://project.dataset.table`;
on DuckDB the project is ignored and the dataset is the schema. Column types are reported in BigQuery
standard SQL spelling (INT64, STRING, JSON, TIMESTAMP, DATETIME, ARRAY<...>, STRUCT) so the emulator
can apply Vertex's input rules (contract §1) the same way on both.

Output tables (contract §2.2): every input column unchanged, then `response` JSON, `status` STRING,
`processed_time` TIMESTAMP.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import threading
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pyarrow as pa

OUTPUT_COLUMNS = (("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP"))


class Column(NamedTuple):
    """One column: BigQuery type name, plus the engine's own spelling (to recreate it exactly)."""

    name: str
    type: str
    native: Any = None


def split_uri(uri: str) -> tuple[str, str, str]:
    """`bq://p.d.t` → (p, d, t)."""
    project, dataset, table = uri.removeprefix("bq://").split(".")
    return project, dataset, table


class Tables(Protocol):
    """What the emulator needs from a warehouse."""

    def exists(self, uri: str) -> bool: ...
    def columns(self, uri: str) -> list[Column]: ...
    def read(self, uri: str) -> pa.Table: ...
    def ensure_dataset(self, project: str, dataset: str) -> None: ...
    def create_output(self, uri: str, columns: list[Column], rows: pa.Table) -> None:
        """Create `uri` (must not exist) with `columns` = input columns + OUTPUT_COLUMNS; `rows` has
        the same column names, JSON columns as JSON text."""
        ...


# -- DuckDB ------------------------------------------------------------------------------------------
_DUCKDB_TYPES = {
    "VARCHAR": "STRING", "UUID": "STRING", "BIGINT": "INT64", "INTEGER": "INT64", "SMALLINT": "INT64",
    "TINYINT": "INT64", "HUGEINT": "INT64", "UBIGINT": "INT64", "UINTEGER": "INT64", "USMALLINT": "INT64",
    "UTINYINT": "INT64", "DOUBLE": "FLOAT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "JSON": "JSON",
    "DATE": "DATE", "TIME": "TIME", "BLOB": "BYTES", "INTERVAL": "INTERVAL",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    # a naive timestamp is BigQuery's DATETIME (which Vertex refuses as an input column)
    "TIMESTAMP": "DATETIME", "TIMESTAMP_NS": "DATETIME", "TIMESTAMP_MS": "DATETIME", "TIMESTAMP_S": "DATETIME",
}
_DUCKDB_OUTPUT = {"JSON": "JSON", "STRING": "VARCHAR", "TIMESTAMP": "TIMESTAMPTZ"}


def _duckdb_bq_type(native: str) -> str:
    t = native.strip().upper()
    if t.endswith("]"):
        return f"ARRAY<{_duckdb_bq_type(t[: t.rindex('[')])}>"
    if t.startswith(("STRUCT(", "MAP(", "UNION(")):
        return "STRUCT"
    if t.startswith(("DECIMAL", "NUMERIC")):
        return "NUMERIC"
    return _DUCKDB_TYPES.get(t, t)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBTables:
    """Tables in a DuckDB database: a file path (opened per operation, so the file is not held
    between jobs) or an open connection (used through its own cursors).

    In one process, `duckdb.connect(path)` joins the database instance another connection (e.g.
    batchflow's DuckDB adapter) already has open. Another *process* holding the file locks it: a
    test that runs batchflow in a subprocess should use BigQueryTables instead.
    """

    def __init__(self, database: str | Path | Any):
        if isinstance(database, (str, Path)):
            self.path: str | None = str(database)
            self._con = None
        else:
            self.path, self._con = None, database
        self._lock = threading.Lock()

    def connect(self):
        """A fresh connection (file) or cursor (connection); the caller closes it."""
        import duckdb

        return duckdb.connect(self.path) if self.path is not None else self._con.cursor()

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        """Run DuckDB SQL (for tests preparing inputs)."""
        with self._lock:
            con = self.connect()
            try:
                return con.execute(query, params or []).fetchall() if query.strip() else []
            finally:
                con.close()

    def _native_columns(self, con, uri: str) -> list[tuple[str, str]]:
        _p, dataset, table = split_uri(uri)
        return con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [dataset, table],
        ).fetchall()

    def exists(self, uri: str) -> bool:
        _p, dataset, table = split_uri(uri)
        return bool(self.sql(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [dataset, table]
        ))

    def columns(self, uri: str) -> list[Column]:
        with self._lock:
            con = self.connect()
            try:
                return [Column(n, _duckdb_bq_type(t), t) for n, t in self._native_columns(con, uri)]
            finally:
                con.close()

    def read(self, uri: str) -> pa.Table:
        _p, dataset, table = split_uri(uri)
        with self._lock:
            con = self.connect()
            try:
                rel = con.sql(f"SELECT * FROM {_q(dataset)}.{_q(table)}")
                fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table  # DuckDB 2 renamed it
                return fetch()
            finally:
                con.close()

    def ensure_dataset(self, project: str, dataset: str) -> None:
        self.sql(f"CREATE SCHEMA IF NOT EXISTS {_q(dataset)}")

    def create_output(self, uri: str, columns: list[Column], rows: pa.Table) -> None:
        _p, dataset, table = split_uri(uri)
        select = ", ".join(
            f"CAST({_q(c.name)} AS {c.native or _DUCKDB_OUTPUT[c.type]}) AS {_q(c.name)}" for c in columns
        )
        with self._lock:
            con = self.connect()
            try:
                con.register("__vertex_emu_rows", rows)
                # plain CREATE TABLE: fails if the table appeared meanwhile, as Vertex's export would
                con.execute(f"CREATE TABLE {_q(dataset)}.{_q(table)} AS SELECT {select} FROM __vertex_emu_rows")
                con.unregister("__vertex_emu_rows")
            finally:
                con.close()


# -- BigQuery -----------------------------------------------------------------------------------------
_BQ_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT", "BIGNUMERIC": "BIGNUMERIC"}


def _jsonable(value: Any, bq_type: str) -> Any:
    """One Arrow value as newline-delimited JSON for a load job into a column of `bq_type`."""
    if value is None:
        return None
    if bq_type == "JSON":
        return json.loads(value) if isinstance(value, str) else value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


class BigQueryTables:
    """Tables through a `google.cloud.bigquery.Client` (the local BigQuery emulator in tests).

    The output table is created with its schema first (input fields copied as they are), then filled
    by a newline-delimited JSON load job: JSON columns get JSON values, not strings.
    """

    def __init__(self, client: Any):
        self.client = client

    def _table(self, uri: str):
        from google.api_core.exceptions import NotFound

        try:
            return self.client.get_table(uri.removeprefix("bq://"))
        except NotFound:
            return None

    def exists(self, uri: str) -> bool:
        return self._table(uri) is not None

    def columns(self, uri: str) -> list[Column]:
        table = self._table(uri)
        if table is None:
            raise KeyError(uri)
        out = []
        for f in table.schema:
            base = _BQ_TYPES.get(f.field_type.upper(), f.field_type.upper())
            out.append(Column(f.name, f"ARRAY<{base}>" if f.mode == "REPEATED" else base, f))
        return out

    def read(self, uri: str) -> pa.Table:
        table = self.client.get_table(uri.removeprefix("bq://"))
        return self.client.list_rows(table).to_arrow(create_bqstorage_client=False)

    def ensure_dataset(self, project: str, dataset: str) -> None:
        self.client.create_dataset(f"{project}.{dataset}", exists_ok=True)

    def create_output(self, uri: str, columns: list[Column], rows: pa.Table) -> None:
        from google.cloud import bigquery

        schema = [c.native if c.native is not None else bigquery.SchemaField(c.name, c.type) for c in columns]
        ref = uri.removeprefix("bq://")
        self.client.create_table(bigquery.Table(ref, schema=schema))  # Conflict if it exists
        if rows.num_rows == 0:
            return
        types = {c.name: c.type for c in columns}
        data = [{k: _jsonable(v, types[k]) for k, v in row.items()} for row in rows.to_pylist()]
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            schema=schema,
        )
        self.client.load_table_from_json(data, ref, job_config=config).result()


def open_tables(target: Any) -> Tables:
    """A Tables for `target`: a Tables object as is, a path → DuckDB file, a `bigquery.Client` →
    BigQuery, a DuckDB connection → DuckDB."""
    if isinstance(target, (str, Path)):
        return DuckDBTables(target)
    if hasattr(target, "get_table") and hasattr(target, "load_table_from_json"):
        return BigQueryTables(target)
    if hasattr(target, "create_output"):
        return target
    if hasattr(target, "cursor") and hasattr(target, "execute"):
        return DuckDBTables(target)
    raise TypeError(f"cannot store tables in {type(target).__name__}")
