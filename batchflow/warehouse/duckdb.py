"""DuckDB adapter: the embedded warehouse of the local target.

Models arrive as BigQuery SQL; each SELECT is transpiled by `batchflow.sql.to_duckdb` and wrapped
in DuckDB DDL here. BigQuery functions DuckDB lacks are installed by `duckdb_functions.install`.
"""

from __future__ import annotations

import atexit
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pyarrow as pa

from batchflow.errors import ConfigError, ExecutionError
from batchflow.relation import Relation
from batchflow.sql import to_duckdb
from batchflow.table_options import NO_OPTIONS, TableOptions, schema_change
from batchflow.warehouse.base import Column, RelationKind
from batchflow.warehouse.duckdb_functions import install

_SIMPLE_TYPES = {
    "VARCHAR": "STRING",
    "BIGINT": "INT64",
    "INTEGER": "INT64",
    "SMALLINT": "INT64",
    "TINYINT": "INT64",
    "HUGEINT": "INT64",
    "UBIGINT": "INT64",
    "UINTEGER": "INT64",
    "USMALLINT": "INT64",
    "UTINYINT": "INT64",
    "DOUBLE": "FLOAT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "JSON": "JSON",
    "DATE": "DATE",
    "TIME": "TIME",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    # A naive DuckDB timestamp is what BigQuery calls DATETIME (no time zone).
    "TIMESTAMP": "DATETIME",
    "TIMESTAMP_NS": "DATETIME",
    "TIMESTAMP_MS": "DATETIME",
    "TIMESTAMP_S": "DATETIME",
    "BLOB": "BYTES",
    "UUID": "STRING",
    "INTERVAL": "INTERVAL",
}


def bigquery_type(duckdb_type: str) -> str:
    """Spell a DuckDB column type the way BigQuery would (VARCHAR → STRING, INTEGER[] → ARRAY<INT64>)."""
    t = duckdb_type.strip().upper()
    if t.endswith("[]"):
        return f"ARRAY<{bigquery_type(t[:-2])}>"
    if re.fullmatch(r".+\[\d+\]", t):
        return f"ARRAY<{bigquery_type(t[: t.rindex('[')])}>"
    if t.startswith("STRUCT(") or t.startswith("MAP("):
        return "STRUCT"
    if t.startswith("DECIMAL") or t.startswith("NUMERIC"):
        return "NUMERIC"
    return _SIMPLE_TYPES.get(t, t)


def _request_hash_udf(requests: pa.Array, models: pa.Array) -> pa.Array:
    """Vectorised `bf_request_hash(request_text, model)` for DuckDB: NULL for invalid requests."""
    from batchflow.requests import request_hasher  # the rules live in one place, shared by every target

    model_values = models.unique().to_pylist()
    if len(model_values) == 1:  # the usual call: one literal model name for the whole vector
        hasher = request_hasher(model_values[0]) if model_values[0] is not None else (lambda r: None)
        return pa.array([hasher(r) for r in requests.to_pylist()], type=pa.string())
    hashers = {m: request_hasher(m) for m in model_values if m is not None}
    return pa.array(
        [None if m is None else hashers[m](r) for r, m in zip(requests.to_pylist(), models.to_pylist())],
        type=pa.string(),
    )


def _request_problem_udf(requests: pa.Array) -> pa.Array:
    """Vectorised `bf_request_problem(request_text)` for DuckDB."""
    from batchflow.requests import request_problem

    return pa.array([request_problem(r) for r in requests.to_pylist()], type=pa.string())


def _arrow_table(result: duckdb.DuckDBPyRelation) -> pa.Table:
    # DuckDB 2 renamed fetch_arrow_table/fetch_record_batch to to_arrow_table/to_arrow_reader.
    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
    return fetch()


def _arrow_reader(result: duckdb.DuckDBPyRelation, batch_size: int) -> pa.RecordBatchReader:
    fetch = getattr(result, "to_arrow_reader", None) or result.fetch_record_batch
    return fetch(batch_size)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def _render(relation: Relation) -> str:
    """DuckDB-quoted `"schema"."table"` (the database part is ignored: one file, one catalog)."""
    return f"{_quote(relation.schema)}.{_quote(relation.identifier)}"


#: WAL size at which a commit checkpoints (DuckDB's default is 16 MB). A local batch job streams its answers
#: into an output table that is merged into the store and dropped within the run; at 16 MB the commits
#: checkpoint again and again, and the one that pays is often the lifecycle's next small statement (a
#: ledger UPDATE or a DROP waited 4-5 s at 1M rows). A larger WAL checkpoints less often, and a table
#: dropped between two checkpoints is never written. Side by side at 1M rows the execute stage took 41.8 s
#: at 256 MB vs 52.3 s at 16 MB (1 GB: 43.0 s, peak RSS 1,526 MB); benchmarks/RESULTS.md §5 has the pairs.
#: A kill leaves at most this much WAL for the next open to replay.
CHECKPOINT_THRESHOLD = "256MB"

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _open_error(path: str, exc: BaseException) -> str:
    """One line saying why DuckDB could not open `path`; for a lock, which process holds it."""
    text = str(exc)
    held = _LOCK_HOLDER.search(text)
    if held:
        return (f"DuckDB database {path} is in use by another process (PID {held['pid']}, {held['program']}); "
                "wait for it to finish, or stop it")
    return f"cannot open DuckDB database {path}: {text.splitlines()[0] if text else type(exc).__name__}"


def _csv_problem(path: Path, exc: BaseException) -> tuple[str, Path, int | None]:
    """(message, file, line) for a CSV DuckDB refused: the first row whose field count differs from the
    header's, found with the csv module (only on this error path), else DuckDB's first line."""
    from batchflow.csvfile import shape_problem

    problem = shape_problem(path)
    if problem is not None:
        return problem[0], path, problem[1]
    text = getattr(exc, "message", None) or str(exc)
    return f"DuckDB cannot read this CSV: {text.splitlines()[0]}", path, None


class DuckDBWarehouse:
    """A DuckDB database file (or `:memory:`), one cursor per thread."""

    name = "duckdb"
    #: dbt-bigquery table configs with no meaning in a DuckDB file: noted, not applied. persist_docs becomes
    #: COMMENT ON, on_schema_change ALTER TABLE, insert_overwrite a delete of the partitions then an insert.
    TABLE_OPTIONS_IGNORED: dict[str, str] = {
        "partition_by": "DuckDB tables have no partitions; insert_overwrite still reads it to find the rows it replaces",
        "cluster_by": "DuckDB tables have no clustering",
        "require_partition_filter": "DuckDB tables have no partitions",
        "partition_expiration_days": "DuckDB tables have no partitions",
        "labels": "DuckDB tables have no labels",
        "kms_key_name": "a DuckDB file is not encrypted with a Cloud KMS key",
        "hours_to_expiration": "DuckDB tables do not expire",
        "grants": "a DuckDB file has no users to grant to",
    }

    def __init__(self, path: str | Path, schema: str = "main", memory_limit: str | None = None):
        self.path = str(path)
        if self.path != ":memory:" and Path(self.path).stem == schema:
            # DuckDB names the catalog after the file: `schema.table` would then be ambiguous.
            raise ConfigError(f"DuckDB file {Path(self.path).name} has the same name as schema {schema!r}; "
                              "rename one of them in profiles.yml")
        if self.path != ":memory:":
            # One missing folder (e.g. target/) is created, never a tree: load_profile has refused paths whose
            # parent's parent is missing or outside the project, so a typo cannot create folders at `/`.
            try:
                Path(self.path).parent.mkdir(exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder of DuckDB database {self.path}: "
                                  f"{exc.strerror or exc}") from None
            if Path(self.path).is_dir():
                raise ConfigError(f"DuckDB database {self.path} is a folder; `path:` must name a file")
        try:
            self._conn = duckdb.connect(self.path)
        except duckdb.Error as exc:
            raise ConfigError(_open_error(self.path, exc)) from None
        self.schema = schema
        self._closed = False
        self._local = threading.local()
        install(self._conn)
        self._conn.execute(f"SET checkpoint_threshold = {_literal(CHECKPOINT_THRESHOLD)}").fetchall()
        if memory_limit:  # DuckDB caches blocks up to 80% of RAM by default; big local jobs may cap it
            self._conn.execute("SET memory_limit = ?", [memory_limit]).fetchall()
        # Python UDFs live on the root connection; its cursors see them. A second adapter on the
        # same file in this process shares DuckDB's instance, and with it the first one's UDFs.
        self._udfs: list[str] = []
        for name, fn, args in (("bf_request_hash", _request_hash_udf, ["VARCHAR", "VARCHAR"]),
                               ("bf_request_problem", _request_problem_udf, ["VARCHAR"])):
            try:
                self._conn.create_function(name, fn, args, "VARCHAR", type="arrow", null_handling="special")
                self._udfs.append(name)
            except duckdb.CatalogException:
                pass
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        # Closing before interpreter exit keeps DuckDB's Python UDF bindings from printing leak noise.
        atexit.register(self.close)
        self.ensure_schema(schema)

    # -- connections -------------------------------------------------------------------------
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor private to the calling thread (a DuckDB connection is not thread-safe)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._conn.cursor()
            self._cursors.append(cur)
            self._local.cursor = cur
        return cur

    def _run(self, duck_sql: str, params: list | None = None) -> list[tuple]:
        """Execute on this thread's cursor and fetch every row (DuckDB 2 refuses new work on a
        cursor with an unfinished result)."""
        try:
            return self._cursor().execute(duck_sql, params or []).fetchall()
        except duckdb.Error as exc:
            raise ExecutionError(f"{type(exc).__name__}: {exc}") from exc

    def _relation(self, cur: duckdb.DuckDBPyConnection, duck_sql: str) -> duckdb.DuckDBPyRelation:
        """A lazy query (Arrow export from a relation avoids DB-API's extra copy of the rows)."""
        try:
            return cur.sql(duck_sql)
        except duckdb.Error as exc:
            raise ExecutionError(f"{type(exc).__name__}: {exc}") from exc

    def _transaction(self, statements: list[str]) -> None:
        """Run DuckDB statements atomically: all of them or none."""
        cur = self._cursor()
        cur.execute("BEGIN TRANSACTION").fetchall()
        try:
            for stmt in statements:
                cur.execute(stmt).fetchall()
        except duckdb.Error as exc:
            cur.execute("ROLLBACK").fetchall()
            raise ExecutionError(f"{type(exc).__name__}: {exc}") from exc
        cur.execute("COMMIT").fetchall()

    # -- protocol ----------------------------------------------------------------------------
    def relation(self, identifier: str, schema: str | None = None) -> Relation:
        return Relation(None, schema or self.schema, identifier)

    def ensure_schema(self, schema: str) -> None:
        self._run(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")

    def execute(self, sql: str) -> None:
        self._run(to_duckdb(sql))

    def query_arrow(self, sql: str) -> pa.Table:
        return _arrow_table(self._relation(self._cursor(), to_duckdb(sql)))

    def iter_batches(self, sql: str, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        # A dedicated cursor: the caller may run other statements on this thread while it streams.
        cur = self._conn.cursor()
        try:
            reader = _arrow_reader(self._relation(cur, to_duckdb(sql)), batch_size)
            yield from reader
        except duckdb.Error as exc:
            raise ExecutionError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            cur.close()

    def kind(self, relation: Relation) -> RelationKind | None:
        row = self._run(
            "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [relation.schema, relation.identifier],
        )
        if not row:
            return None
        return "view" if row[0][0] == "VIEW" else "table"

    def columns(self, relation: Relation) -> list[Column]:
        rows = self._run(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [relation.schema, relation.identifier],
        )
        return [Column(name, bigquery_type(dtype)) for name, dtype in rows]

    def _drop_statement(self, relation: Relation, kind: RelationKind | None) -> list[str]:
        if kind is None:
            return []
        return [f"DROP {'VIEW' if kind == 'view' else 'TABLE'} {_render(relation)}"]

    def create_table_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> int:
        # One transaction: a failing SELECT leaves the previous table untouched.
        kind = self.kind(relation)
        self._transaction(
            ([] if kind == "table" else self._drop_statement(relation, kind))
            + [f"CREATE OR REPLACE TABLE {_render(relation)} AS {to_duckdb(select_sql)}"]
        )
        self._comment(relation, options or NO_OPTIONS, "TABLE")
        return self._count(relation)

    def create_view_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> None:
        kind = self.kind(relation)
        self._transaction(
            ([] if kind == "view" else self._drop_statement(relation, kind))
            + [f"CREATE OR REPLACE VIEW {_render(relation)} AS {to_duckdb(select_sql)}"]
        )
        self._comment(relation, options or NO_OPTIONS, "VIEW")

    def create_table_if_missing(self, relation: Relation, columns_sql: str, options: TableOptions | None = None) -> None:
        # Partitions and clustering have no meaning here: the plain table.
        self.execute(f"CREATE TABLE IF NOT EXISTS {relation.render()} ({columns_sql})")

    def apply_schema_change(self, relation: Relation, select_sql: str, options: TableOptions) -> list[str]:
        if options.on_schema_change == "ignore":
            return []
        selected = self._run(f"DESCRIBE {to_duckdb(select_sql)}")
        duck_types = {name.lower(): dtype for name, dtype, *_ in selected}
        change = schema_change(self.columns(relation),
                               [Column(name, bigquery_type(dtype)) for name, dtype, *_ in selected])
        if not change.any:
            return []
        if options.on_schema_change == "fail":
            raise ExecutionError(change.failure(relation))
        self._transaction(schema_change_statements(relation, change, options.on_schema_change, duck_types))
        return change.lines(options.on_schema_change)

    def insert_overwrite(self, relation: Relation, select_sql: str, options: TableOptions) -> int:
        staged = f"__bf_overwrite_{threading.get_ident()}"
        self._transaction(insert_overwrite_statements(relation, to_duckdb(select_sql), options, staged))
        count = self._run(f"SELECT count(*) FROM {_quote(staged)}")[0][0]
        self._run(f"DROP TABLE IF EXISTS {_quote(staged)}")
        return int(count)

    def apply_table_options(self, relation: Relation, options: TableOptions) -> None:
        self._comment(relation, options, "TABLE")

    def _comment(self, relation: Relation, options: TableOptions, kind: str) -> None:
        """persist_docs as DuckDB comments (COMMENT ON TABLE|VIEW, COMMENT ON COLUMN for columns it has)."""
        if not options.description and not options.column_descriptions:
            return
        have = {c.name.lower(): c.name for c in self.columns(relation)} if options.column_descriptions else {}
        described = [(have[n.lower()], text) for n, text in options.column_descriptions if n.lower() in have]
        self._transaction(comment_statements(relation, options.description, described, kind))

    def insert_into(self, relation: Relation, select_sql: str) -> int:
        before = self._count(relation)
        self._transaction([f"INSERT INTO {_render(relation)} BY NAME {to_duckdb(select_sql)}"])
        return self._count(relation) - before

    def merge_into(self, relation: Relation, select_sql: str, unique_key: list[str]) -> int:
        staged = f"__bf_merge_{threading.get_ident()}"
        keys = ", ".join(_quote(k) for k in unique_key)
        self._transaction(
            [
                f"CREATE OR REPLACE TEMP TABLE {_quote(staged)} AS {to_duckdb(select_sql)}",
                f"DELETE FROM {_render(relation)} WHERE ({keys}) IN (SELECT ({keys}) FROM {_quote(staged)})"
                if len(unique_key) > 1
                else f"DELETE FROM {_render(relation)} WHERE {keys} IN (SELECT {keys} FROM {_quote(staged)})",
                f"INSERT INTO {_render(relation)} BY NAME SELECT * FROM {_quote(staged)}",
            ]
        )
        count = self._run(f"SELECT count(*) FROM {_quote(staged)}")[0][0]
        self._run(f"DROP TABLE IF EXISTS {_quote(staged)}")
        return int(count)

    def drop(self, relation: Relation) -> None:
        for stmt in self._drop_statement(relation, self.kind(relation)):
            self._run(stmt)

    def list_relations(self, schema: str, prefix: str) -> list[Relation]:
        rows = self._run(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND starts_with(table_name, ?) "
            "ORDER BY table_name", [schema, prefix])
        return [self.relation(name, schema) for (name,) in rows]

    def write_arrow(
        self,
        relation: Relation,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        json_columns: Iterable[str] = (),
    ) -> int:
        if self.kind(relation) is not None:
            raise ExecutionError(f"{relation} already exists")
        reader = pa.RecordBatchReader.from_batches(schema, iter(batches))
        self._from_arrow(reader, schema, json_columns, f"CREATE TABLE {_render(relation)} AS SELECT {{select}}")
        return self._count(relation)

    def create_table_from_schema(self, relation: Relation, schema: pa.Schema, json_columns: Iterable[str] = ()) -> None:
        if self.kind(relation) is not None:
            raise ExecutionError(f"{relation} already exists")
        # CREATE TABLE AS over no rows: exactly the column types write_arrow gives the same schema.
        empty = pa.Table.from_batches([], schema)
        self._from_arrow(empty, schema, json_columns, f"CREATE TABLE {_render(relation)} AS SELECT {{select}}")

    def append_arrow(
        self,
        relation: Relation,
        batches: pa.RecordBatch | pa.Table | Iterable[pa.RecordBatch],
        json_columns: Iterable[str] = (),
        checked_json: Iterable[str] = (),
    ) -> int:
        data: pa.Table | pa.RecordBatchReader
        if isinstance(batches, pa.RecordBatchReader):
            data = batches  # streamed: DuckDB reads the batches as the reader yields them
        elif isinstance(batches, pa.RecordBatch):
            data = pa.Table.from_batches([batches])
        elif isinstance(batches, pa.Table):
            data = batches
        else:
            listed = list(batches)
            if not listed:
                return 0
            data = pa.Table.from_batches(listed)
        if isinstance(data, pa.Table) and data.num_rows == 0:
            return 0
        listed_columns = ", ".join(_quote(f.name) for f in data.schema)
        json_set, trusted = set(json_columns), set(checked_json)
        checked = {f.name for f in data.schema if f.name in json_set and f.name in trusted
                   and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))}
        if checked:
            data = _as_arrow_json(data, checked)
        # One autocommitted statement: its own transaction, so a crash keeps all of these rows or none.
        result = self._from_arrow(
            data, data.schema, json_set - checked,
            f"INSERT INTO {_render(relation)} ({listed_columns}) SELECT {{select}}",
        )
        return int(result[0][0]) if result else 0

    def _from_arrow(
        self, data: pa.Table | pa.RecordBatchReader, schema: pa.Schema, json_columns: Iterable[str], statement: str
    ) -> list[tuple]:
        """Run `statement` (``... SELECT {select}``) over Arrow `data` registered on this thread's cursor;
        `{select}` becomes the column list with `json_columns` cast from text to JSON."""
        json_set = set(json_columns)
        select = ", ".join(
            f"CAST({_quote(f.name)} AS JSON) AS {_quote(f.name)}" if f.name in json_set else _quote(f.name)
            for f in schema
        )
        cur = self._cursor()
        view = f"__bf_arrow_{threading.get_ident()}"
        cur.register(view, data)
        try:
            return self._run(statement.format(select=f"{select} FROM {_quote(view)}"))
        finally:
            cur.unregister(view)

    def load_csv(self, relation: Relation, path: Path) -> int:
        # Comma-separated, as dbt reads seeds: left to guess, DuckDB reads a ragged file as one column.
        try:
            described = self._run("DESCRIBE SELECT * FROM read_csv(?, header = true, delim = ',')", [str(path)])
        except ExecutionError as exc:
            raise ConfigError(*_csv_problem(path, exc)) from None
        # BigQuery loads CSV timestamps as TIMESTAMP (UTC), not DATETIME: keep that on DuckDB too.
        select = ", ".join(
            f"CAST({_quote(name)} AS TIMESTAMPTZ) AS {_quote(name)}" if dtype == "TIMESTAMP" else _quote(name)
            for name, dtype, *_ in described
        )
        path_literal = "'" + str(path).replace("'", "''") + "'"
        kind = self.kind(relation)
        self._transaction(
            ([] if kind == "table" else self._drop_statement(relation, kind))
            + [
                f"CREATE OR REPLACE TABLE {_render(relation)} AS "
                f"SELECT {select} FROM read_csv({path_literal}, header = true, delim = ',')"
            ]
        )
        return self._count(relation)

    def request_hash_sql(self, request_sql: str, model: str) -> str:
        model_literal = "'" + model.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"bf_request_hash(CAST({request_sql} AS STRING), {model_literal})"

    def request_problem_sql(self, request_sql: str, hash_sql: str | None = None) -> str:
        check = f"bf_request_problem(CAST({request_sql} AS STRING))"
        # bf_request_hash is NULL for every invalid request: rows with a hash need no second parse.
        return check if hash_sql is None else f"IF({hash_sql} IS NOT NULL, NULL, {check})"

    def dry_run(self, sql: str) -> tuple[int | None, list[Column]]:
        """Bind the query without running it (DESCRIBE); DuckDB does not report bytes."""
        rows = self._run(f"DESCRIBE {to_duckdb(sql)}")
        return None, [Column(name, bigquery_type(dtype)) for name, dtype, *_ in rows]

    def check_batch_location(self) -> None:
        """The local target has no regions."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cur in self._cursors:
            cur.close()
        for udf in self._udfs:
            self._conn.remove_function(udf)
        self._conn.close()
        atexit.unregister(self.close)

    # -- helpers -----------------------------------------------------------------------------
    def _count(self, relation: Relation) -> int:
        return int(self._run(f"SELECT count(*) FROM {_render(relation)}")[0][0])


# -- table configs on DuckDB (pure functions: tests assert the exact SQL) -------------------------------


def comment_statements(relation: Relation, description: str | None, columns: list[tuple[str, str]],
                       kind: str = "TABLE") -> list[str]:
    """persist_docs: COMMENT ON TABLE|VIEW and COMMENT ON COLUMN (DuckDB keeps them in its catalog)."""
    out = [f"COMMENT ON {kind} {_render(relation)} IS {_literal(description)}"] if description else []
    out += [f"COMMENT ON COLUMN {_render(relation)}.{_quote(name)} IS {_literal(text)}" for name, text in columns]
    return out


def schema_change_statements(relation: Relation, change: Any, mode: str, duck_types: dict[str, str]) -> list[str]:
    """on_schema_change on DuckDB: ADD COLUMN (and, for sync_all_columns, DROP COLUMN and ALTER COLUMN
    ... TYPE), one statement each (DuckDB takes one action per ALTER TABLE), with the SELECT's DuckDB types."""
    out = [f"ALTER TABLE {_render(relation)} ADD COLUMN {_quote(c.name)} {duck_types[c.name.lower()]}"
           for c in change.added]
    if mode == "sync_all_columns":
        out += [f"ALTER TABLE {_render(relation)} DROP COLUMN {_quote(c.name)}" for c in change.removed]
        out += [f"ALTER TABLE {_render(relation)} ALTER COLUMN {_quote(old.name)} TYPE {duck_types[new.name.lower()]}"
                for old, new in change.retyped]
    return out


def insert_overwrite_statements(relation: Relation, duck_select: str, options: TableOptions, staged: str) -> list[str]:
    """insert_overwrite on DuckDB (one transaction): stage the SELECT's rows, delete the target's rows in
    the partitions they fall in (or in the `partitions:` listed), insert the staged rows by name. The
    partition expressions are dbt's (BigQuery SQL), transpiled."""
    partition = options.partition_by
    if partition is None:
        raise ExecutionError(f"{relation}: insert_overwrite needs `partition_by`")
    target = _render(relation)
    if options.partitions:
        where = to_duckdb(f"SELECT 1 FROM t WHERE {partition.value()} IN ({', '.join(options.partitions)})")
    else:
        where = to_duckdb(f"SELECT 1 FROM t WHERE {partition.value()} IN "
                          f"(SELECT DISTINCT {partition.value()} FROM `{staged}`)")
    predicate = where[where.upper().index(" WHERE ") + len(" WHERE "):]
    return [
        f"CREATE OR REPLACE TEMP TABLE {_quote(staged)} AS {duck_select}",
        f"DELETE FROM {target} WHERE {predicate}",
        f"INSERT INTO {target} BY NAME SELECT * FROM {_quote(staged)}",
    ]


def _as_arrow_json(data: pa.Table | pa.RecordBatchReader, columns: set[str]) -> pa.Table | pa.RecordBatchReader:
    """`data` with `columns` typed Arrow's JSON extension: DuckDB reads those as JSON values without
    parsing them (a CAST from text parses every value: ~0.5 s per 200k Gemini responses on 2 CPUs)."""
    schema = data.schema
    fields = [pa.field(f.name, pa.json_(f.type), f.nullable) if f.name in columns else f for f in schema]
    wrapped = pa.schema(fields, metadata=schema.metadata)

    def wrap(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [pa.ExtensionArray.from_storage(f.type, a) if f.name in columns else a
                  for f, a in zip(wrapped, batch.columns)]
        return pa.RecordBatch.from_arrays(arrays, schema=wrapped)

    if isinstance(data, pa.RecordBatchReader):
        return pa.RecordBatchReader.from_batches(wrapped, (wrap(b) for b in data))
    return pa.Table.from_batches([wrap(b) for b in data.to_batches()], schema=wrapped)
