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

    def create_table_as(self, relation: Relation, select_sql: str) -> int:
        # CREATE OR REPLACE is one atomic job: a failing SELECT leaves the old table in place.
        # BigQuery refuses to replace a view with a table, so a view of that name goes first.
        if self.kind(relation) == "view":
            self.drop(relation)
        self._query(f"CREATE OR REPLACE TABLE {relation.render()} AS {select_sql}")
        return self._count(relation)

    def create_view_as(self, relation: Relation, select_sql: str) -> None:
        if self.kind(relation) == "table":
            self.drop(relation)
        self._query(f"CREATE OR REPLACE VIEW {relation.render()} AS {select_sql}")

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
