"""BigQuery adapter: the warehouse of production targets (google-cloud-bigquery).

Models are already BigQuery SQL, so statements run as given; this module only adds the DDL/DML
around them, maps API errors to `ExecutionError`, and never lets the client open a Storage Read
connection of its own (it would go to Google's host, ignoring `api_endpoint`, e.g. an emulator).
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from batchflow.errors import ConfigError, ExecutionError
from batchflow.relation import Relation, string_literal
from batchflow.table_options import NO_OPTIONS, Partitioning, SchemaChange, TableOptions, schema_change
from batchflow.warehouse.base import Column, RelationKind

if TYPE_CHECKING:
    from batchflow.project import Target

# Legacy REST spellings → Standard SQL spellings (what `Column.type` promises).
_TYPE_NAMES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}
# Vertex batch jobs read and write BigQuery only in their own region; these are not regions.
_MULTI_REGIONS = {"US", "EU"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_TOKEN_URI = "https://oauth2.googleapis.com/token"


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def column_type(field: bigquery.SchemaField) -> str:
    """Standard SQL type name of a REST schema field (REPEATED → ARRAY<...>, RECORD → STRUCT)."""
    base = _TYPE_NAMES.get(field.field_type.upper(), field.field_type.upper())
    if base == "RANGE" and field.range_element_type is not None:
        base = f"RANGE<{field.range_element_type.element_type}>"
    return f"ARRAY<{base}>" if field.mode == "REPEATED" else base


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn google.api_core errors into ExecutionError carrying BigQuery's own message."""
    try:
        yield
    except gexc.GoogleAPIError as exc:
        raise ExecutionError(f"BigQuery {what} failed: {_message(exc)}") from exc


def _message(exc: gexc.GoogleAPIError) -> str:
    """BigQuery's own error text, without the client's URL and job-id decoration."""
    errors = getattr(exc, "errors", None) or []
    texts = list(dict.fromkeys(e["message"] for e in errors if isinstance(e, dict) and e.get("message")))
    return "; ".join(texts) or getattr(exc, "message", None) or str(exc)


class BigQueryWarehouse:
    """One BigQuery dataset (the target's), in one project and location."""

    name = "bigquery"
    TABLE_OPTIONS_IGNORED: dict[str, str] = {}  # BigQuery applies every table config

    def __init__(
        self,
        project: str | None,
        dataset: str,
        location: str | None,
        *,
        client: bigquery.Client | None = None,
        credentials: Any = None,
        keyfile: str | None = None,
        api_endpoint: str | None = None,
        bqstorage_client: Any = None,
        use_storage_api: bool = False,
        job_labels: dict[str, str] | None = None,
    ):
        if client is None:
            client = _make_client(project, location, credentials, keyfile, api_endpoint)
        self.client = client
        self.project: str = project or client.project
        self.dataset = dataset
        self.location = location
        self.job_labels = {**(job_labels or {}), "batchflow": "true"}
        if use_storage_api and bqstorage_client is None:
            bqstorage_client = _make_bqstorage_client(client, api_endpoint)
        # None means "REST only": every download passes create_bqstorage_client=False.
        self.bqstorage_client = bqstorage_client

    @classmethod
    def from_target(cls, target: Target) -> BigQueryWarehouse:
        """The adapter of a `type: bigquery` target in profiles.yml."""
        s = target.settings
        method = str(s.get("method", "oauth"))
        keyfile = s.get("keyfile")
        where = target.profiles_file
        credentials: Any = None
        if method == "service-account":
            if not keyfile:
                raise ConfigError(f"target {target.name!r}: method service-account needs `keyfile:`", where)
        elif method == "service-account-json":
            keyfile = None
            info = s.get("keyfile_json")
            if not isinstance(info, dict):
                raise ConfigError(f"target {target.name!r}: method service-account-json needs `keyfile_json:`", where)
            from google.oauth2 import service_account

            try:
                credentials = service_account.Credentials.from_service_account_info(
                    info, scopes=list(s.get("scopes") or _SCOPES))
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"target {target.name!r}: bad `keyfile_json:`: {exc}", where) from None
        elif method == "oauth-secrets":
            keyfile = None
            from google.oauth2.credentials import Credentials

            if not s.get("token") and not s.get("refresh_token"):
                raise ConfigError(f"target {target.name!r}: method oauth-secrets needs `token:` or `refresh_token:`",
                                  where)
            credentials = Credentials(
                token=s.get("token"), refresh_token=s.get("refresh_token"), client_id=s.get("client_id"),
                client_secret=s.get("client_secret"), token_uri=s.get("token_uri") or _TOKEN_URI,
                scopes=list(s.get("scopes") or _SCOPES),
            )
        elif method == "none":
            # Explicitly anonymous: for an emulator. Never chosen from the endpoint's host, so a proxy on
            # localhost does not get anonymous calls unless the profile asks for them.
            keyfile = None
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        elif method == "oauth":
            keyfile = None  # application default credentials
            if s.get("api_endpoint"):
                # Looked up here: left to the client, a loopback endpoint would fall back to anonymous calls.
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError

                try:
                    credentials, _ = google.auth.default(scopes=list(s.get("scopes") or _SCOPES))
                except DefaultCredentialsError as exc:
                    raise ConfigError(
                        f"target {target.name!r}: method oauth found no application default credentials "
                        f"({str(exc).splitlines()[0]}); for an emulator set `method: none`", where) from None
        else:
            raise ConfigError(
                f"target {target.name!r}: `method:` must be one of oauth, service-account, service-account-json, "
                f"oauth-secrets, none; got {method!r}",
                where,
            )
        labels = s.get("labels") or {}
        if not isinstance(labels, dict):
            raise ConfigError(f"target {target.name!r}: `labels:` must be a mapping", target.profiles_file)
        project = target.database or s.get("project") or s.get("database")
        return cls(
            None if project is None else str(project),
            str(s.get("dataset") or s.get("schema") or target.schema),
            None if s.get("location") is None else str(s["location"]),
            credentials=credentials,
            keyfile=None if keyfile is None else str(keyfile),
            api_endpoint=s.get("api_endpoint"),
            use_storage_api=bool(s.get("use_storage_api", False)),
            job_labels={str(k): str(v) for k, v in labels.items()},
        )

    # -- jobs ----------------------------------------------------------------------------------
    def job_config(self, **kwargs: Any) -> bigquery.QueryJobConfig:
        """The QueryJobConfig of every query this adapter runs (carries `job_labels`)."""
        return bigquery.QueryJobConfig(labels=dict(self.job_labels), **kwargs)

    def _query(self, sql: str, **config: Any) -> bigquery.QueryJob:
        """Run a query job to completion."""
        with _errors("query"):
            job = self.client.query(sql, job_config=self.job_config(**config), location=self.location)
            job.result()
        return job

    def _ref(self, relation: Relation) -> bigquery.TableReference:
        dataset = bigquery.DatasetReference(relation.database or self.project, relation.schema)
        return bigquery.TableReference(dataset, relation.identifier)

    def _table(self, relation: Relation) -> bigquery.Table | None:
        try:
            return self.client.get_table(self._ref(relation))
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as exc:
            raise ExecutionError(f"BigQuery get_table {relation} failed: {_message(exc)}") from exc

    # -- protocol ------------------------------------------------------------------------------
    def relation(self, identifier: str, schema: str | None = None) -> Relation:
        return Relation(self.project, schema or self.dataset, identifier)

    def ensure_schema(self, schema: str) -> None:
        ds = bigquery.Dataset(bigquery.DatasetReference(self.project, schema))
        if self.location:
            ds.location = self.location
        with _errors(f"create dataset {schema}"):
            self.client.create_dataset(ds, exists_ok=True)

    def execute(self, sql: str) -> None:
        self._query(sql)

    def query_arrow(self, sql: str) -> pa.Table:
        job = self._query(sql)
        with _errors("download"):
            return job.result().to_arrow(bqstorage_client=self.bqstorage_client, create_bqstorage_client=False)

    def iter_batches(self, sql: str, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        job = self._query(sql)
        with _errors("download"):
            # Over REST each page becomes one batch; `page_size` caps it at batch_size rows.
            rows = job.result(page_size=batch_size)
            for batch in rows.to_arrow_iterable(bqstorage_client=self.bqstorage_client):
                if batch.num_rows > batch_size:  # the Storage API picks its own batch sizes
                    yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=batch_size)
                elif batch.num_rows:
                    yield batch

    def kind(self, relation: Relation) -> RelationKind | None:
        table = self._table(relation)
        if table is None:
            return None
        return "view" if table.table_type in ("VIEW", "MATERIALIZED_VIEW") else "table"

    def columns(self, relation: Relation) -> list[Column]:
        table = self._table(relation)
        if table is None:
            raise ExecutionError(f"relation {relation} does not exist")
        return [Column(f.name, column_type(f)) for f in table.schema]

    def create_table_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> int:
        # CREATE OR REPLACE is one atomic job: a failing SELECT leaves the old table in place.
        # BigQuery refuses to replace a view with a table, so a view of that name goes first; nor does it
        # replace a table partitioned or clustered otherwise (dbt's is_replaceable): that one is dropped too.
        options = options or NO_OPTIONS
        table = self._table(relation)
        if table is not None and (table.table_type in ("VIEW", "MATERIALIZED_VIEW") or not _replaceable(table, options)):
            self.drop(relation)
        self._query(create_table_sql(relation, select_sql, options))
        self._after_build(relation, options, "TABLE")
        return self._count(relation)

    def create_view_as(self, relation: Relation, select_sql: str, options: TableOptions | None = None) -> None:
        options = options or NO_OPTIONS
        if self.kind(relation) == "table":
            self.drop(relation)
        self._query(create_view_sql(relation, select_sql, options))
        self._after_build(relation, options, "VIEW")

    def create_table_if_missing(self, relation: Relation, columns_sql: str, options: TableOptions | None = None) -> None:
        self._query(create_table_if_missing_sql(relation, columns_sql, options or NO_OPTIONS))

    def apply_schema_change(self, relation: Relation, select_sql: str, options: TableOptions) -> list[str]:
        if options.on_schema_change == "ignore":
            return []
        _, selected = self.dry_run(f"SELECT * FROM ({select_sql})")
        change = schema_change(self.columns(relation), selected)
        if not change.any:
            return []
        if options.on_schema_change == "fail":
            raise ExecutionError(change.failure(relation))
        for sql in schema_change_sql(relation, change, options):
            self._query(sql)
        return change.lines(options.on_schema_change)

    def insert_overwrite(self, relation: Relation, select_sql: str, options: TableOptions) -> int:
        columns = [c.name for c in self.columns(relation)]
        job = self._query(insert_overwrite_sql(relation, select_sql, options, columns))
        return self._script_rows(job)

    def apply_table_options(self, relation: Relation, options: TableOptions) -> None:
        altered = alter_table_options_sql(relation, options)
        if altered:
            self._query(altered)
        self._after_build(relation, options, "TABLE")

    def _after_build(self, relation: Relation, options: TableOptions, kind: str) -> None:
        """Column descriptions (columns the relation has, matched as BigQuery does: any case) and grants."""
        if options.column_descriptions:
            have = {c.name.lower(): c.name for c in self.columns(relation)}
            described = [(have[n.lower()], text) for n, text in options.column_descriptions if n.lower() in have]
            script = column_descriptions_sql(relation, described, kind)
            if script:
                self._query(script)
        for grant in grant_sql(relation, options, kind):
            self._query(grant)

    def _script_rows(self, job: bigquery.QueryJob) -> int:
        """Rows a script's INSERTs and MERGEs inserted (its child jobs'), else the job's own DML count."""
        if job.statement_type != "SCRIPT":  # one MERGE: its inserts (its affected rows count the deletes too)
            stats = getattr(job, "dml_stats", None)
            if stats is not None and stats.inserted_row_count is not None:
                return int(stats.inserted_row_count)
            return int(job.num_dml_affected_rows or 0)
        with _errors("list script jobs"):
            children = list(self.client.list_jobs(parent_job=job.job_id))
        inserted = [c.dml_stats.inserted_row_count for c in children
                    if getattr(c, "dml_stats", None) is not None and c.dml_stats.inserted_row_count is not None]
        if inserted:
            return int(sum(inserted))
        return int(job.num_dml_affected_rows or 0)

    def insert_into(self, relation: Relation, select_sql: str) -> int:
        cols = self._shared_columns(relation, select_sql)
        listed = ", ".join(_quote(c) for c in cols)
        job = self._query(f"INSERT INTO {relation.render()} ({listed}) SELECT {listed} FROM ({select_sql})")
        return int(job.num_dml_affected_rows or 0)

    def merge_into(self, relation: Relation, select_sql: str, unique_key: list[str]) -> int:
        job = self._query(self.merge_sql(relation, select_sql, unique_key, self._shared_columns(relation, select_sql)))
        return int(job.num_dml_affected_rows or 0)

    def merge_sql(self, relation: Relation, select_sql: str, unique_key: list[str], columns: list[str]) -> str:
        """One MERGE (atomic): update rows whose key matches, insert the others."""
        on = " AND ".join(f"T.{_quote(k)} = S.{_quote(k)}" for k in unique_key)
        keys = {k.lower() for k in unique_key}
        updates = ", ".join(f"{_quote(c)} = S.{_quote(c)}" for c in columns if c.lower() not in keys)
        listed = ", ".join(_quote(c) for c in columns)
        values = ", ".join(f"S.{_quote(c)}" for c in columns)
        return (
            f"MERGE {relation.render()} T USING ({select_sql}) S ON {on}"
            + (f" WHEN MATCHED THEN UPDATE SET {updates}" if updates else "")
            + f" WHEN NOT MATCHED THEN INSERT ({listed}) VALUES ({values})"
        )

    def drop(self, relation: Relation) -> None:
        with _errors(f"drop {relation}"):
            self.client.delete_table(self._ref(relation), not_found_ok=True)

    def list_relations(self, schema: str, prefix: str) -> list[Relation]:
        from google.api_core.exceptions import NotFound

        with _errors(f"list tables of {schema}"):
            try:
                tables = list(self.client.list_tables(f"{self.project}.{schema}"))
            except NotFound:
                return []
        return [self.relation(t.table_id, schema) for t in tables if t.table_id.startswith(prefix)]

    def write_arrow(
        self,
        relation: Relation,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        json_columns: Iterable[str] = (),
    ) -> int:
        if self.kind(relation) is not None:
            raise ExecutionError(f"{relation} already exists")
        # Load jobs cannot make JSON columns from Parquet strings: stage, then CTAS with PARSE_JSON.
        staging = self._stage_arrow(relation, batches, schema)
        try:
            select = _json_select(schema, json_columns)
            self._query(f"CREATE TABLE {relation.render()} AS SELECT {select} FROM {staging.render()}")
        finally:
            self.drop(staging)
        return self._count(relation)

    def create_table_from_schema(self, relation: Relation, schema: pa.Schema, json_columns: Iterable[str] = ()) -> None:
        if self.kind(relation) is not None:
            raise ExecutionError(f"{relation} already exists")
        # The same staging + CTAS as write_arrow over no rows: exactly the column types it would give.
        staging = self._stage_arrow(relation, (), schema)
        try:
            select = _json_select(schema, json_columns)
            self._query(f"CREATE TABLE {relation.render()} AS SELECT {select} FROM {staging.render()}")
        finally:
            self.drop(staging)

    def append_arrow(
        self,
        relation: Relation,
        batches: pa.RecordBatch | pa.Table | Iterable[pa.RecordBatch],
        json_columns: Iterable[str] = (),
        checked_json: Iterable[str] = (),
    ) -> int:
        if isinstance(batches, pa.RecordBatch):
            listed = [batches]
        elif isinstance(batches, pa.Table):
            listed = batches.to_batches()
        else:
            listed = list(batches)
        listed = [b for b in listed if b.num_rows]
        if not listed:
            return 0
        schema = listed[0].schema
        # A load job cannot append JSON from Parquet strings either: stage, then one INSERT (a DML
        # statement is atomic: the table gets all of these rows or none).
        staging = self._stage_arrow(relation, listed, schema)
        try:
            columns = ", ".join(_quote(f.name) for f in schema)
            select = _json_select(schema, json_columns)
            job = self._query(f"INSERT INTO {relation.render()} ({columns}) SELECT {select} FROM {staging.render()}")
        finally:
            self.drop(staging)
        affected = job.num_dml_affected_rows
        return sum(b.num_rows for b in listed) if affected is None else int(affected)

    def _stage_arrow(self, relation: Relation, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Relation:
        """Load Arrow batches into a fresh staging table next to `relation` (a Parquet load job);
        the caller drops it."""
        staging = relation.with_identifier(f"{relation.identifier}__bf_stage_{uuid.uuid4().hex[:8]}")
        with tempfile.TemporaryDirectory(prefix="bf-bq-") as tmp:
            path = Path(tmp) / "rows.parquet"
            with pq.ParquetWriter(path, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.PARQUET,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                labels=dict(self.job_labels),
            )
            options = bigquery.ParquetOptions()
            options.enable_list_inference = True  # lists load as REPEATED, not as a `list.element` record
            config.parquet_options = options
            self._load(path, staging, config)
        return staging

    def load_csv(self, relation: Relation, path: Path) -> int:
        if self.kind(relation) == "view":
            self.drop(relation)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            autodetect=True,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            labels=dict(self.job_labels),
        )
        self._load(Path(path), relation, config)
        return self._count(relation)

    def request_hash_sql(self, request_sql: str, model: str) -> str:
        """SHA-256 hex of BigQuery's JSON text of the request, a newline and the model name.

        Stable within a target (same request text and model → same hash), but not equal to the
        DuckDB/Python hash: BigQuery's JSON serialisation (key order, number and escape spelling)
        is not `batchflow.requests.canonical_json`. NULL for a NULL or unparsable request.
        """
        parsed = _parsed_json(request_sql)
        return (
            f"IF(({request_sql}) IS NULL OR {parsed} IS NULL, NULL, "
            f"TO_HEX(SHA256(CONCAT(TO_JSON_STRING({parsed}), '\\n', {string_literal(model)}))))"
        )

    def request_problem_sql(self, request_sql: str, hash_sql: str | None = None) -> str:
        """`batchflow.requests.request_problem` in BigQuery SQL: NULL for a valid request.

        Works for a JSON or a STRING `request`: FORMAT('%t', x) is the text of either, so a JSON
        column holding a JSON *string* is "not a JSON object", as in Python.
        """
        item_problem = (
            "CASE WHEN JSON_TYPE(item) != 'object' THEN CONCAT('is not an object (got ', JSON_TYPE(item), ')') "
            "WHEN JSON_QUERY(item, '$.role') IS NULL OR JSON_TYPE(JSON_QUERY(item, '$.role')) = 'null' "
            "THEN 'has no `role`; Vertex requires user or model' "
            "WHEN JSON_TYPE(JSON_QUERY(item, '$.role')) != 'string' "
            "OR JSON_VALUE(item, '$.role') NOT IN ('user', 'model') "
            "THEN CONCAT('has role ', TO_JSON_STRING(JSON_QUERY(item, '$.role')), "
            "'; Vertex accepts only user or model') "
            # Python's `not parts`: missing, null, [], {}, "", 0 and false are all "no parts".
            "WHEN JSON_QUERY(item, '$.parts') IS NULL "
            "OR JSON_TYPE(JSON_QUERY(item, '$.parts')) NOT IN ('array', 'object') "
            "OR TO_JSON_STRING(JSON_QUERY(item, '$.parts')) IN ('[]', '{}') THEN 'has no `parts`' END"
        )
        # Guarded: a JSON_QUERY_ARRAY of a non-array is NULL in BigQuery but an error on some engines.
        items = "JSON_QUERY_ARRAY(IF(JSON_TYPE(c) = 'array', c, PARSE_JSON('[]')))"
        # One flat correlated subquery (the rule is repeated in WHERE rather than nested in a derived table).
        first_bad_item = (
            f"(SELECT CONCAT('contents[', CAST(i AS STRING), '] ', {item_problem}) "
            f"FROM UNNEST({items}) AS item WITH OFFSET AS i WHERE ({item_problem}) IS NOT NULL ORDER BY i LIMIT 1)"
        )
        return (
            f"(SELECT CASE WHEN ({request_sql}) IS NULL THEN 'request is NULL' "
            "WHEN j IS NULL THEN 'request is not valid JSON' "
            "WHEN JSON_TYPE(j) != 'object' THEN CONCAT('request is not a JSON object (got ', JSON_TYPE(j), ')') "
            "WHEN c IS NULL OR JSON_TYPE(c) = 'null' THEN 'request has no `contents` array' "
            "WHEN JSON_TYPE(c) != 'array' THEN CONCAT('`contents` is not an array (got ', JSON_TYPE(c), ')') "
            f"WHEN ARRAY_LENGTH({items}) = 0 THEN '`contents` is empty' "
            f"ELSE {first_bad_item} END "
            f"FROM UNNEST([{_parsed_json(request_sql)}]) AS j, UNNEST([JSON_QUERY(j, '$.contents')]) AS c)"
        )

    def close(self) -> None:
        self.client.close()

    # -- BigQuery only -------------------------------------------------------------------------
    def dry_run(self, sql: str) -> tuple[int, list[Column]]:
        """Bytes a query would process and its output columns, without running it."""
        job = self._query(sql, dry_run=True, use_query_cache=False)
        return int(job.total_bytes_processed or 0), [Column(f.name, column_type(f)) for f in job.schema or []]

    def check_batch_location(self) -> None:
        """Refuse a target Vertex batch jobs cannot use: they read and write BigQuery only in the
        job's own region, so the dataset must be regional (e.g. us-central1), not US/EU/global."""
        loc = (self.location or "").strip()
        fix = "set `location:` to a region such as us-central1 and use a dataset created in that region"
        if not loc:
            raise ConfigError(f"BigQuery target has no `location:`; Vertex batch jobs need one region: {fix}")
        if loc.lower() == "global" or loc.upper() in _MULTI_REGIONS:
            raise ConfigError(
                f"BigQuery location {loc!r} is not a region: Vertex batch jobs need their input and output "
                f"datasets in the job's region, and multi-regions (US, EU) and global are refused; {fix}"
            )
        with _errors(f"get dataset {self.dataset}"):
            try:
                ds = self.client.get_dataset(bigquery.DatasetReference(self.project, self.dataset))
            except gexc.NotFound:
                return  # ensure_schema will create it in `location`
        ds_loc = (ds.location or "").strip()
        if ds_loc.upper() in _MULTI_REGIONS or ds_loc.lower() == "global":
            raise ConfigError(
                f"dataset {self.project}.{self.dataset} is in the multi-region {ds_loc}: Vertex batch jobs need "
                f"their input and output datasets in the job's region; {fix} (a dataset cannot be moved: "
                "create a new one or point `dataset:` elsewhere)"
            )
        if ds_loc and ds_loc.lower() != loc.lower():
            raise ConfigError(
                f"dataset {self.project}.{self.dataset} is in {ds_loc} but the target's location is {loc}: "
                "Vertex batch jobs need their input and output datasets in the job's region; "
                "make them the same"
            )

    # -- helpers -------------------------------------------------------------------------------
    def _shared_columns(self, relation: Relation, select_sql: str) -> list[str]:
        """The target's columns the SELECT also yields, in the target's order (case-insensitive, as BigQuery)."""
        _, selected = self.dry_run(f"SELECT * FROM ({select_sql})")
        have = {c.name.lower() for c in selected}
        cols = [c.name for c in self.columns(relation) if c.name.lower() in have]
        if not cols:
            raise ExecutionError(f"the SELECT shares no column with {relation}")
        return cols

    def _load(self, path: Path, relation: Relation, config: bigquery.LoadJobConfig) -> None:
        with _errors(f"load into {relation}"), open(path, "rb") as f:
            job = self.client.load_table_from_file(f, self._ref(relation), job_config=config, location=self.location)
            job.result()

    def _count(self, relation: Relation) -> int:
        table = self._table(relation)
        if table is not None and table.num_rows is not None:
            return int(table.num_rows)
        return int(self.query_arrow(f"SELECT COUNT(*) AS n FROM {relation.render()}").column("n")[0].as_py())


# -- table configs as DDL (pure functions: tests assert the exact SQL) ---------------------------------
# The clause order, option order and spellings follow dbt-bigquery's `bigquery__create_table_as` and
# `get_table_options`; identifiers are backtick-quoted here, where dbt writes the field names bare.


def partition_clause(partition: Partitioning) -> str:
    """`PARTITION BY ...` of a CREATE TABLE."""
    if partition.data_type == "int64" and partition.range is not None:
        r = partition.range
        return f"PARTITION BY RANGE_BUCKET({_quote(partition.field)}, GENERATE_ARRAY({r.start}, {r.end}, {r.interval}))"
    return f"PARTITION BY {partition.expression()}"


def description_literal(text: str) -> str:
    """A triple-quoted BigQuery string, as dbt writes descriptions (newlines kept as written)."""
    return '"""' + text.replace("\\", "\\\\").replace('"', '\\"') + '"""'


def table_option_list(options: TableOptions, *, temporary: bool = False, view: bool = False) -> list[tuple[str, str]]:
    """(name, value SQL) of OPTIONS(...), in dbt-bigquery's order: expiration, description, labels, KMS key,
    then the partition options (not on a temporary table, whose expiration is 12 hours, as dbt's)."""
    opts: list[tuple[str, str]] = []
    if options.hours_to_expiration is not None and not temporary:
        opts.append(("expiration_timestamp",
                     f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {options.hours_to_expiration} hour)"))
    if options.description:
        opts.append(("description", description_literal(options.description)))
    if options.labels:
        opts.append(("labels", "[" + ", ".join(f"({string_literal(k)}, {string_literal(v)})"
                                              for k, v in options.labels) + "]"))
    if view:
        return opts
    if options.kms_key_name:
        opts.append(("kms_key_name", string_literal(options.kms_key_name)))
    if temporary:
        opts.append(("expiration_timestamp", "TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)"))
    else:
        if options.require_partition_filter is not None and options.partition_by is not None:
            opts.append(("require_partition_filter", "true" if options.require_partition_filter else "false"))
        if options.partition_expiration_days is not None:
            days = options.partition_expiration_days
            opts.append(("partition_expiration_days", str(int(days)) if float(days).is_integer() else repr(days)))
    return opts


def _options_clause(opts: list[tuple[str, str]]) -> str:
    return "OPTIONS(" + ", ".join(f"{k}={v}" for k, v in opts) + ")" if opts else ""


def create_table_sql(relation: Relation, select_sql: str, options: TableOptions = NO_OPTIONS, *,
                     temporary: bool = False) -> str:
    """CREATE OR REPLACE TABLE ... PARTITION BY ... CLUSTER BY ... OPTIONS(...) AS SELECT ..."""
    parts = [f"CREATE OR REPLACE TABLE {relation.render()}"]
    if options.partition_by is not None:
        parts.append(partition_clause(options.partition_by))
    if options.cluster_by:
        parts.append("CLUSTER BY " + ", ".join(_quote(c) for c in options.cluster_by))
    clause = _options_clause(table_option_list(options, temporary=temporary))
    if clause:
        parts.append(clause)
    parts.append(f"AS {select_sql}")
    return " ".join(parts)


def create_table_if_missing_sql(relation: Relation, columns_sql: str, options: TableOptions = NO_OPTIONS) -> str:
    """CREATE TABLE IF NOT EXISTS ... (columns) PARTITION BY ... CLUSTER BY ... OPTIONS(...)."""
    parts = [f"CREATE TABLE IF NOT EXISTS {relation.render()} ({columns_sql})"]
    if options.partition_by is not None:
        parts.append(partition_clause(options.partition_by))
    if options.cluster_by:
        parts.append("CLUSTER BY " + ", ".join(_quote(c) for c in options.cluster_by))
    clause = _options_clause(table_option_list(options))
    if clause:
        parts.append(clause)
    return " ".join(parts)


def create_view_sql(relation: Relation, select_sql: str, options: TableOptions = NO_OPTIONS) -> str:
    """CREATE OR REPLACE VIEW ... OPTIONS(expiration, description, labels) AS SELECT ... (dbt's view options)."""
    clause = _options_clause(table_option_list(options, view=True))
    return f"CREATE OR REPLACE VIEW {relation.render()} " + (f"{clause} " if clause else "") + f"AS {select_sql}"


def alter_table_options_sql(relation: Relation, options: TableOptions) -> str | None:
    """ALTER TABLE ... SET OPTIONS(description, labels) for a table an incremental run kept (None: nothing
    to set). The expiration and partition options stay as the table was created with them."""
    opts = [(k, v) for k, v in table_option_list(options, view=True) if k != "expiration_timestamp"]
    return f"ALTER TABLE {relation.render()} SET {_options_clause(opts)}" if opts else None


def column_descriptions_sql(relation: Relation, described: list[tuple[str, str]], kind: str = "TABLE") -> str | None:
    """One script (one job) of ALTER ... ALTER COLUMN ... SET OPTIONS(description=...), a statement per
    column: BigQuery (and the emulator) take one ALTER COLUMN action per statement."""
    statements = [f"ALTER {kind} {relation.render()} ALTER COLUMN {_quote(name)} "
                  f"SET OPTIONS(description={description_literal(text)})" for name, text in described]
    return ";\n".join(statements) if statements else None


def grant_sql(relation: Relation, options: TableOptions, kind: str = "TABLE") -> list[str]:
    """dbt-bigquery's `get_grant_sql`: GRANT `role` ON TABLE|VIEW ... TO "grantee", ... (one per role)."""
    return [f"GRANT {_quote(role)} ON {kind} {relation.render()} TO " + ", ".join(f'"{g}"' for g in grantees)
            for role, grantees in options.grants]


def temp_relation(relation: Relation) -> Relation:
    """dbt's `make_temp_relation`: the model's name plus `__dbt_tmp`, in its dataset."""
    return relation.with_identifier(f"{relation.identifier}__dbt_tmp")


def insert_overwrite_sql(relation: Relation, select_sql: str, options: TableOptions, columns: list[str]) -> str:
    """dbt-bigquery's insert_overwrite: a MERGE ON FALSE that deletes the replaced partitions and inserts the
    SELECT's rows. Static (`partitions:` listed): one statement. Dynamic: a script that stages the rows in
    `<model>__dbt_tmp`, collects their partitions, merges, and drops the staging table."""
    partition = options.partition_by
    if partition is None:
        raise ExecutionError(f"{relation}: insert_overwrite needs `partition_by`")
    listed = ", ".join(_quote(c) for c in columns)
    merge = (f"MERGE INTO {relation.render()} AS DBT_INTERNAL_DEST USING ({{source}}) AS DBT_INTERNAL_SOURCE "
             f"ON FALSE WHEN NOT MATCHED BY SOURCE AND {partition.value('DBT_INTERNAL_DEST')} {{where}} "
             f"THEN DELETE WHEN NOT MATCHED THEN INSERT ({listed}) VALUES ({listed})")
    if options.partitions:
        return merge.format(source=select_sql, where="IN (" + ", ".join(options.partitions) + ")")
    tmp = temp_relation(relation)
    return ";\n".join([
        f"DECLARE dbt_partitions_for_replacement ARRAY<{partition.data_type.upper()}>",
        create_table_sql(tmp, select_sql, options, temporary=True),
        # dbt writes `SET (v) = (SELECT AS STRUCT ARRAY_AGG(...))`; the plain form is the same assignment
        # (and the one the emulator runs).
        "SET dbt_partitions_for_replacement = (SELECT ARRAY_AGG(DISTINCT "
        f"{partition.value()} IGNORE NULLS) FROM {tmp.render()})",
        merge.format(source=f"SELECT * FROM {tmp.render()}", where="IN UNNEST(dbt_partitions_for_replacement)"),
        f"DROP TABLE IF EXISTS {tmp.render()}",
    ])


def schema_change_sql(relation: Relation, change: SchemaChange, options: TableOptions) -> list[str]:
    """What `on_schema_change` runs (dbt's `alter_relation_add_remove_columns`, `alter_column_type`):
    ADD COLUMN for new columns; with sync_all_columns also DROP COLUMN for columns the SELECT lost and a
    rebuild with CAST for changed types (BigQuery changes a column's type in place only to widen it)."""
    statements: list[str] = []
    nested = [c.name for c in change.added if c.type in ("STRUCT", "ARRAY<STRUCT>")]
    if nested:
        raise ExecutionError(f"on_schema_change cannot add the STRUCT column(s) {', '.join(nested)} to {relation}: "
                             "rebuild it with --full-refresh")
    if change.added:
        statements.append(f"ALTER TABLE {relation.render()} "
                          + ", ".join(f"ADD COLUMN {_quote(c.name)} {c.type}" for c in change.added))
    if options.on_schema_change == "sync_all_columns":
        if change.removed:
            statements.append(f"ALTER TABLE {relation.render()} "
                              + ", ".join(f"DROP COLUMN {_quote(c.name)}" for c in change.removed))
        if change.retyped:
            casts = ", ".join(f"CAST({_quote(new.name)} AS {new.type}) AS {_quote(new.name)}"
                              for _, new in change.retyped)
            statements.append(create_table_sql(relation, f"SELECT * REPLACE ({casts}) FROM {relation.render()}",
                                               options))
    return statements


def _replaceable(table: bigquery.Table, options: TableOptions) -> bool:
    """dbt's `is_replaceable`: BigQuery replaces a table in place only with the same partitioning and
    clustering spec."""
    wanted = options.partition_by
    if table.range_partitioning is not None:
        r = table.range_partitioning
        if wanted is None or wanted.range is None:
            return False
        if (r.field, r.range_.start, r.range_.end, r.range_.interval) != (
                wanted.field, wanted.range.start, wanted.range.end, wanted.range.interval):
            return False
    elif table.time_partitioning is not None:
        t = table.time_partitioning
        if wanted is None or wanted.range is not None:
            return False
        if (t.field or "").lower() != wanted.field.lower() or (t.type_ or "").upper() != wanted.granularity.upper():
            return False
    elif wanted is not None:
        return False
    return list(table.clustering_fields or []) == list(options.cluster_by)


def _json_select(schema: pa.Schema, json_columns: Iterable[str]) -> str:
    """The select list reading a staged table: `json_columns` parsed from their text to JSON."""
    json_set = set(json_columns)
    return ", ".join(
        f"PARSE_JSON({_quote(f.name)}, wide_number_mode => 'round') AS {_quote(f.name)}"
        if f.name in json_set
        else _quote(f.name)
        for f in schema
    )


def _parsed_json(request_sql: str) -> str:
    """The request as a JSON value, whether `request_sql` is JSON or STRING typed (NULL if unparsable)."""
    return f"SAFE.PARSE_JSON(FORMAT('%t', {request_sql}), wide_number_mode => 'round')"


def _make_client(
    project: str | None, location: str | None, credentials: Any, keyfile: str | None, api_endpoint: str | None
) -> bigquery.Client:
    options: dict[str, Any] = {}
    if api_endpoint:
        options["client_options"] = {"api_endpoint": api_endpoint}
    if credentials is None and keyfile:
        from google.oauth2 import service_account

        try:
            credentials = service_account.Credentials.from_service_account_file(
                str(Path(keyfile).expanduser()), scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the service-account keyfile {keyfile}: {exc}") from exc
    if credentials is None and api_endpoint and urlparse(api_endpoint).hostname in _LOOPBACK:
        # An emulator on this machine: no Google credentials to find, and none are needed.
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    try:
        return bigquery.Client(project=project, credentials=credentials, location=location, **options)
    except Exception as exc:  # DefaultCredentialsError, or a missing project
        raise ConfigError(f"cannot open a BigQuery client: {exc}") from exc


def _make_bqstorage_client(client: bigquery.Client, api_endpoint: str | None) -> Any:
    """A Storage Read client with the BigQuery client's credentials (only for Google's own API)."""
    if api_endpoint:
        raise ConfigError(
            "use_storage_api with a custom api_endpoint needs an explicit bqstorage_client aimed at the same "
            "host; a default one would talk to Google's Storage API instead"
        )
    try:
        from google.cloud import bigquery_storage
    except ImportError as exc:
        raise ConfigError("use_storage_api needs the google-cloud-bigquery-storage package") from exc
    return bigquery_storage.BigQueryReadClient(credentials=client._credentials)
