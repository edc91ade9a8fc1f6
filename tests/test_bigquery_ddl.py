"""dbt-bigquery's table configs as the BigQuery DDL batchflow emits: the exact SQL of each config alone and
in combination (pure functions, no warehouse), then the same DDL run through the adapter on the BigQuery
emulator (tests/emulators/bigquery.py, local-bigquery) with the table's metadata read back over REST.

Where the emulator cannot run a clause the test says so and asserts what it does instead; the SQL is
asserted exactly either way. Expected strings follow dbt-bigquery's `bigquery__create_table_as`,
`get_table_options`, `bq_insert_overwrite_sql` and `bigquery__get_grant_sql`.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from google.cloud import bigquery

from batchflow import batch_stages as S
from batchflow.errors import ExecutionError
from batchflow.relation import Relation
from batchflow.table_options import table_options
from batchflow.warehouse import bigquery as B
from batchflow.warehouse.base import Column
from batchflow.warehouse.bigquery import BigQueryWarehouse
from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401

T = Relation("p", "d", "t")
T_SQL = "`p`.`d`.`t`"
SELECT = "SELECT 1 AS a"


def ddl(config: dict[str, Any], **kw: Any) -> str:
    return B.create_table_sql(T, SELECT, table_options(config, **kw))


# --- one config at a time -----------------------------------------------------------------------------


def test_no_config_is_the_plain_ctas() -> None:
    assert ddl({}) == f"CREATE OR REPLACE TABLE {T_SQL} AS SELECT 1 AS a"


@pytest.mark.parametrize(("partition_by", "clause"), [
    ({"field": "created_at", "data_type": "timestamp"}, "PARTITION BY TIMESTAMP_TRUNC(`created_at`, DAY)"),
    ({"field": "created_at", "data_type": "TIMESTAMP", "granularity": "HOUR"},
     "PARTITION BY TIMESTAMP_TRUNC(`created_at`, HOUR)"),
    ({"field": "d"}, "PARTITION BY `d`"),  # dbt's default: a date by day, not truncated
    ({"field": "d", "data_type": "date", "granularity": "month"}, "PARTITION BY DATE_TRUNC(`d`, MONTH)"),
    ({"field": "dt", "data_type": "datetime", "granularity": "year"}, "PARTITION BY DATETIME_TRUNC(`dt`, YEAR)"),
    ({"field": "n", "data_type": "int64", "range": {"start": 0, "end": 100, "interval": 10}},
     "PARTITION BY RANGE_BUCKET(`n`, GENERATE_ARRAY(0, 100, 10))"),
])
def test_partition_by(partition_by: dict, clause: str) -> None:
    assert ddl({"partition_by": partition_by}) == f"CREATE OR REPLACE TABLE {T_SQL} {clause} AS SELECT 1 AS a"


def test_cluster_by_string_or_list() -> None:
    assert ddl({"cluster_by": "a"}) == f"CREATE OR REPLACE TABLE {T_SQL} CLUSTER BY `a` AS SELECT 1 AS a"
    assert ddl({"cluster_by": ["a", "b", "c", "d"]}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} CLUSTER BY `a`, `b`, `c`, `d` AS SELECT 1 AS a")


def test_require_partition_filter_only_with_a_partition() -> None:
    # dbt-bigquery's get_table_options sets it only when partition_by is set too
    assert ddl({"require_partition_filter": True}) == f"CREATE OR REPLACE TABLE {T_SQL} AS SELECT 1 AS a"
    assert ddl({"require_partition_filter": True, "partition_by": {"field": "d"}}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY `d` OPTIONS(require_partition_filter=true) AS SELECT 1 AS a")


def test_partition_expiration_days() -> None:
    assert ddl({"partition_by": {"field": "d"}, "partition_expiration_days": 30}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY `d` OPTIONS(partition_expiration_days=30) AS SELECT 1 AS a")
    assert ddl({"partition_by": {"field": "d"}, "partition_expiration_days": 0.5}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY `d` OPTIONS(partition_expiration_days=0.5) AS SELECT 1 AS a")


def test_labels() -> None:
    assert ddl({"labels": {"team": "ml", "cost-center": "c_42"}}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} OPTIONS(labels=[('team', 'ml'), ('cost-center', 'c_42')]) AS SELECT 1 AS a")


def test_persist_docs_relation_sets_the_description() -> None:
    text = 'Orders, one row per "order"\nsee \\docs'
    assert ddl({"persist_docs": {"relation": True}}, description=text) == (
        f'CREATE OR REPLACE TABLE {T_SQL} OPTIONS(description="""Orders, one row per \\"order\\"\nsee \\\\docs""") '
        "AS SELECT 1 AS a")
    # without persist_docs the description stays in the docs only
    assert ddl({}, description=text) == f"CREATE OR REPLACE TABLE {T_SQL} AS SELECT 1 AS a"


def test_persist_docs_columns_alter_each_column() -> None:
    options = table_options({"persist_docs": {"columns": True}},
                            columns={"a": {"name": "a", "description": "the a"}, "b": {"name": "b", "description": ""}})
    assert options.column_descriptions == (("a", "the a"),)  # undocumented columns are left alone
    assert B.column_descriptions_sql(T, [("a", "the a"), ("b", 'the "b"')]) == (
        f'ALTER TABLE {T_SQL} ALTER COLUMN `a` SET OPTIONS(description="""the a""");\n'
        f'ALTER TABLE {T_SQL} ALTER COLUMN `b` SET OPTIONS(description="""the \\"b\\"""")')
    assert B.column_descriptions_sql(T, [("a", "x")], "VIEW") == (
        f'ALTER VIEW {T_SQL} ALTER COLUMN `a` SET OPTIONS(description="""x""")')


def test_kms_key_name() -> None:
    key = "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"
    assert ddl({"kms_key_name": key}) == f"CREATE OR REPLACE TABLE {T_SQL} OPTIONS(kms_key_name='{key}') AS SELECT 1 AS a"


def test_hours_to_expiration() -> None:
    assert ddl({"hours_to_expiration": 6}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} OPTIONS(expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), "
        "INTERVAL 6 hour)) AS SELECT 1 AS a")


def test_grants_one_statement_per_role() -> None:
    options = table_options({"grants": {"roles/bigquery.dataViewer": ["user:a@b.com", "group:g@b.com"],
                                        "roles/bigquery.dataEditor": "serviceAccount:sa@p.iam.gserviceaccount.com"}})
    assert B.grant_sql(T, options) == [
        f'GRANT `roles/bigquery.dataViewer` ON TABLE {T_SQL} TO "user:a@b.com", "group:g@b.com"',
        f'GRANT `roles/bigquery.dataEditor` ON TABLE {T_SQL} TO "serviceAccount:sa@p.iam.gserviceaccount.com"',
    ]
    assert B.grant_sql(T, options, "VIEW")[0].startswith("GRANT `roles/bigquery.dataViewer` ON VIEW ")
    assert ddl({"grants": {"roles/bigquery.dataViewer": ["user:a@b.com"]}}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} AS SELECT 1 AS a")  # grants come after the build, not in it


def test_view_options_are_expiration_description_and_labels() -> None:
    options = table_options({"labels": {"a": "b"}, "hours_to_expiration": 1, "persist_docs": {"relation": True},
                             "kms_key_name": "k"}, description="v")
    assert B.create_view_sql(T, SELECT, options) == (
        f"CREATE OR REPLACE VIEW {T_SQL} OPTIONS(expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), "
        "INTERVAL 1 hour), description=\"\"\"v\"\"\", labels=[('a', 'b')]) AS SELECT 1 AS a")
    assert B.create_view_sql(T, SELECT, table_options({})) == f"CREATE OR REPLACE VIEW {T_SQL} AS SELECT 1 AS a"


def test_an_incremental_run_sets_description_and_labels_on_the_kept_table() -> None:
    options = table_options({"labels": {"a": "b"}, "hours_to_expiration": 1, "persist_docs": {"relation": True}},
                            description="v")
    assert B.alter_table_options_sql(T, options) == (
        f"ALTER TABLE {T_SQL} SET OPTIONS(description=\"\"\"v\"\"\", labels=[('a', 'b')])")
    assert B.alter_table_options_sql(T, table_options({"hours_to_expiration": 1})) is None


# --- incremental strategies and schema changes ------------------------------------------------------------


def test_insert_overwrite_dynamic_is_dbts_script() -> None:
    options = table_options({"partition_by": {"field": "created_at", "data_type": "timestamp"},
                             "incremental_strategy": "insert_overwrite", "cluster_by": "a"})
    assert B.insert_overwrite_sql(T, "SELECT created_at, a FROM src", options, ["created_at", "a"]) == (
        "DECLARE dbt_partitions_for_replacement ARRAY<TIMESTAMP>;\n"
        "CREATE OR REPLACE TABLE `p`.`d`.`t__dbt_tmp` PARTITION BY TIMESTAMP_TRUNC(`created_at`, DAY) CLUSTER BY `a` "
        "OPTIONS(expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)) "
        "AS SELECT created_at, a FROM src;\n"
        "SET dbt_partitions_for_replacement = (SELECT ARRAY_AGG(DISTINCT TIMESTAMP_TRUNC(`created_at`, DAY) "
        "IGNORE NULLS) FROM `p`.`d`.`t__dbt_tmp`);\n"
        f"MERGE INTO {T_SQL} AS DBT_INTERNAL_DEST USING (SELECT * FROM `p`.`d`.`t__dbt_tmp`) AS DBT_INTERNAL_SOURCE "
        "ON FALSE WHEN NOT MATCHED BY SOURCE AND TIMESTAMP_TRUNC(DBT_INTERNAL_DEST.`created_at`, DAY) "
        "IN UNNEST(dbt_partitions_for_replacement) THEN DELETE "
        "WHEN NOT MATCHED THEN INSERT (`created_at`, `a`) VALUES (`created_at`, `a`);\n"
        "DROP TABLE IF EXISTS `p`.`d`.`t__dbt_tmp`")


def test_insert_overwrite_static_partitions_is_one_merge() -> None:
    options = table_options({"partition_by": {"field": "d", "data_type": "date"},
                             "incremental_strategy": "insert_overwrite",
                             "partitions": ["DATE('2024-01-01')", "DATE_SUB(CURRENT_DATE(), INTERVAL 1 DAY)"]})
    assert B.insert_overwrite_sql(T, "SELECT d, v FROM src", options, ["d", "v"]) == (
        f"MERGE INTO {T_SQL} AS DBT_INTERNAL_DEST USING (SELECT d, v FROM src) AS DBT_INTERNAL_SOURCE ON FALSE "
        "WHEN NOT MATCHED BY SOURCE AND DATE(DBT_INTERNAL_DEST.`d`) IN (DATE('2024-01-01'), "
        "DATE_SUB(CURRENT_DATE(), INTERVAL 1 DAY)) THEN DELETE "
        "WHEN NOT MATCHED THEN INSERT (`d`, `v`) VALUES (`d`, `v`)")


def test_on_schema_change_statements() -> None:
    change = B.schema_change([Column("a", "INT64"), Column("gone", "STRING"), Column("n", "INT64")],
                              [Column("a", "INT64"), Column("n", "FLOAT64"), Column("new", "STRING"),
                               Column("tags", "ARRAY<STRING>")])
    assert change.any
    append = table_options({"on_schema_change": "append_new_columns"})
    assert B.schema_change_sql(T, change, append) == [
        f"ALTER TABLE {T_SQL} ADD COLUMN `new` STRING, ADD COLUMN `tags` ARRAY<STRING>"]
    sync = table_options({"on_schema_change": "sync_all_columns", "cluster_by": "a"})
    assert B.schema_change_sql(T, change, sync) == [
        f"ALTER TABLE {T_SQL} ADD COLUMN `new` STRING, ADD COLUMN `tags` ARRAY<STRING>",
        f"ALTER TABLE {T_SQL} DROP COLUMN `gone`",
        f"CREATE OR REPLACE TABLE {T_SQL} CLUSTER BY `a` AS SELECT * REPLACE (CAST(`n` AS FLOAT64) AS `n`) "
        f"FROM {T_SQL}",
    ]
    assert change.failure(T).startswith(
        f"the source and target schemas of incremental model {T} are out of sync (on_schema_change: fail): "
        "new in the SELECT: new STRING, tags ARRAY<STRING>; missing from the SELECT: gone; changed type: n INT64 -> FLOAT64")


# --- combinations -----------------------------------------------------------------------------------------


def test_every_table_option_together_in_dbts_order() -> None:
    key = "projects/p/locations/us/keyRings/r/cryptoKeys/k"
    assert ddl({"partition_by": {"field": "created_at", "data_type": "timestamp", "granularity": "month"},
                "cluster_by": ["customer_id", "order_id"], "require_partition_filter": True,
                "partition_expiration_days": 90, "labels": {"team": "ml"}, "persist_docs": {"relation": True},
                "kms_key_name": key, "hours_to_expiration": 48}, description="orders") == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY TIMESTAMP_TRUNC(`created_at`, MONTH) "
        "CLUSTER BY `customer_id`, `order_id` "
        "OPTIONS(expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 48 hour), "
        "description=\"\"\"orders\"\"\", labels=[('team', 'ml')], "
        f"kms_key_name='{key}', require_partition_filter=true, partition_expiration_days=90) AS SELECT 1 AS a")


def test_range_partition_with_clustering_and_labels() -> None:
    assert ddl({"partition_by": {"field": "customer_id", "data_type": "int64",
                                 "range": {"start": 0, "end": 1000, "interval": 100}},
                "cluster_by": "order_id", "labels": {"env": "prod"}}) == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY RANGE_BUCKET(`customer_id`, GENERATE_ARRAY(0, 1000, 100)) "
        "CLUSTER BY `order_id` OPTIONS(labels=[('env', 'prod')]) AS SELECT 1 AS a")


def test_the_temporary_table_of_insert_overwrite_keeps_labels_and_key_not_partition_options() -> None:
    options = table_options({"partition_by": {"field": "d"}, "require_partition_filter": True,
                             "partition_expiration_days": 3, "labels": {"a": "b"}, "kms_key_name": "k",
                             "hours_to_expiration": 5})
    assert B.create_table_sql(T, SELECT, options, temporary=True) == (
        f"CREATE OR REPLACE TABLE {T_SQL} PARTITION BY `d` OPTIONS(labels=[('a', 'b')], kms_key_name='k', "
        "expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)) AS SELECT 1 AS a")


# --- the batch models' answer store -----------------------------------------------------------------------


def test_the_responses_store_is_clustered_by_hash_and_partitioned_by_landing_month() -> None:
    store = Relation("p", "d", "m__responses")
    assert B.create_table_if_missing_sql(store, S.RESPONSES_COLUMNS, S.RESPONSES_OPTIONS) == (
        "CREATE TABLE IF NOT EXISTS `p`.`d`.`m__responses` (request_hash STRING, request JSON, response JSON, "
        "status STRING, processed_time TIMESTAMP, job_name STRING, model_name STRING, attempt INT64, "
        "landed_at TIMESTAMP, mode STRING) PARTITION BY TIMESTAMP_TRUNC(`landed_at`, MONTH) CLUSTER BY `request_hash`")


# --- on the BigQuery emulator -----------------------------------------------------------------------------

LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


@pytest.fixture
def wh(bigquery_emulator, bq_dataset, monkeypatch):  # noqa: F811
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):  # nothing leaves the machine
        if host is not None and not str(host).startswith(LOOPBACK_PREFIXES):
            raise AssertionError(f"a request tried to leave the machine for {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    w = BigQueryWarehouse(bigquery_emulator.project, bq_dataset, "us-central1", client=bigquery_emulator.client())
    w.ensure_schema(bq_dataset)
    sent: list[str] = []
    query = w.client.query

    def recording(sql, *args, **kwargs):
        sent.append(sql)
        return query(sql, *args, **kwargs)

    monkeypatch.setattr(w.client, "query", recording)
    w.sent = sent  # type: ignore[attr-defined]
    yield w
    w.close()


def _table(wh: BigQueryWarehouse, name: str) -> bigquery.Table:
    return wh.client.get_table(f"{wh.project}.{wh.dataset}.{name}")


def _ddl_sent(wh: BigQueryWarehouse) -> list[str]:
    return [s for s in wh.sent if not s.startswith("SELECT")]  # type: ignore[attr-defined]


@pytest.mark.emulator
def test_emulator_table_with_every_option(wh) -> None:
    rel = wh.relation("orders")
    options = table_options({
        "partition_by": {"field": "created_at", "data_type": "timestamp"}, "cluster_by": ["customer_id", "order_id"],
        "require_partition_filter": True, "partition_expiration_days": 7, "labels": {"team": "ml"},
        "persist_docs": {"relation": True, "columns": True}, "hours_to_expiration": 24,
        "kms_key_name": "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"},
        description="one row per order", columns={"customer_id": {"name": "customer_id", "description": "who"},
                                                  "not_there": {"name": "not_there", "description": "skipped"}})
    select = "SELECT 1 AS customer_id, 2 AS order_id, TIMESTAMP '2024-01-01 10:00:00+00' AS created_at"
    assert wh.create_table_as(rel, select, options) == 1
    ddl_sent = _ddl_sent(wh)
    assert ddl_sent[0] == B.create_table_sql(rel, select, options)
    assert ddl_sent[1] == (f"ALTER TABLE {rel.render()} ALTER COLUMN `customer_id` "
                           'SET OPTIONS(description="""who""")')  # a yml column the table lacks is left out
    table = _table(wh, "orders")
    assert (table.time_partitioning.field, table.time_partitioning.type_) == ("created_at", "DAY")
    assert table.clustering_fields == ["customer_id", "order_id"]
    assert table.require_partition_filter is True
    assert table.labels == {"team": "ml"}
    assert table.description == "one row per order"
    assert table.expires is not None
    assert {f.name: f.description for f in table.schema}["customer_id"] == "who"
    # The emulator accepts kms_key_name and partition_expiration_days but keeps neither: no encryption
    # configuration, no partition expiration in the table's metadata (BigQuery reports both).
    assert table.encryption_configuration is None
    assert table.time_partitioning.expiration_ms is None


@pytest.mark.emulator
def test_emulator_range_partition(wh) -> None:
    rel = wh.relation("ranged")
    options = table_options({"partition_by": {"field": "n", "data_type": "int64",
                                              "range": {"start": 0, "end": 100, "interval": 10}}})
    assert wh.create_table_as(rel, "SELECT 5 AS n UNION ALL SELECT 50", options) == 2
    assert _ddl_sent(wh)[0] == (f"CREATE OR REPLACE TABLE {rel.render()} "
                                "PARTITION BY RANGE_BUCKET(`n`, GENERATE_ARRAY(0, 100, 10)) AS SELECT 5 AS n UNION ALL SELECT 50")
    # The emulator runs RANGE_BUCKET partitioning but reports it as a DAY time partitioning on the column;
    # BigQuery reports range_partitioning (start 0, end 100, interval 10).
    table = _table(wh, "ranged")
    assert table.range_partitioning is None and table.time_partitioning.field == "n"


@pytest.mark.emulator
def test_emulator_changed_partitioning_drops_then_recreates(wh) -> None:
    rel = wh.relation("repart")
    wh.create_table_as(rel, "SELECT DATE '2024-01-01' AS d", table_options({"partition_by": {"field": "d"}}))
    monthly = table_options({"partition_by": {"field": "d", "granularity": "month"}, "cluster_by": "d"})
    assert wh.create_table_as(rel, "SELECT DATE '2024-02-01' AS d", monthly) == 1
    table = _table(wh, "repart")
    assert (table.time_partitioning.type_, table.clustering_fields) == ("MONTH", ["d"])


@pytest.mark.emulator
def test_emulator_view_options_and_grants_refused_by_the_emulator(wh) -> None:
    rel = wh.relation("v")
    options = table_options({"labels": {"team": "ml"}, "persist_docs": {"relation": True},
                             "grants": {"roles/bigquery.dataViewer": ["user:a@b.com"]}}, description="a view")
    # The emulator has no IAM: it refuses GRANT as a syntax error (BigQuery runs it). The view is built first.
    with pytest.raises(ExecutionError, match="Unexpected GRANT"):
        wh.create_view_as(rel, "SELECT 1 AS a", options)
    assert _ddl_sent(wh) == [
        f"CREATE OR REPLACE VIEW {rel.render()} OPTIONS(description=\"\"\"a view\"\"\", labels=[('team', 'ml')]) "
        "AS SELECT 1 AS a",
        f'GRANT `roles/bigquery.dataViewer` ON VIEW {rel.render()} TO "user:a@b.com"',
    ]
    view = _table(wh, "v")
    assert (view.table_type, view.description, view.labels) == ("VIEW", "a view", {"team": "ml"})


@pytest.mark.emulator
def test_emulator_insert_overwrite_dynamic_replaces_only_the_new_rows_partitions(wh) -> None:
    rel = wh.relation("events")
    options = table_options({"partition_by": {"field": "d"}, "incremental_strategy": "insert_overwrite",
                             "persist_docs": {"relation": True}, "labels": {"v": "2"}}, description="events")
    wh.create_table_as(rel, "SELECT DATE '2024-01-01' AS d, 1 AS v UNION ALL SELECT DATE '2024-01-02', 2",
                       table_options({"partition_by": {"field": "d"}}))
    new_rows = "SELECT DATE '2024-01-02' AS d, 20 AS v UNION ALL SELECT DATE '2024-01-03', 30"
    wh.sent.clear()
    assert wh.insert_overwrite(rel, new_rows, options) == 2
    wh.apply_table_options(rel, options)
    assert _ddl_sent(wh) == [B.insert_overwrite_sql(rel, new_rows, options, ["d", "v"]),
                             f"ALTER TABLE {rel.render()} SET OPTIONS(description=\"\"\"events\"\"\", labels=[('v', '2')])"]
    got = wh.query_arrow(f"SELECT CAST(d AS STRING) AS d, v FROM {rel.render()} ORDER BY d").to_pylist()
    assert got == [{"d": "2024-01-01", "v": 1}, {"d": "2024-01-02", "v": 20}, {"d": "2024-01-03", "v": 30}]
    assert wh.kind(wh.relation("events__dbt_tmp")) is None  # the staging table is dropped
    assert (_table(wh, "events").description, _table(wh, "events").labels) == ("events", {"v": "2"})


@pytest.mark.emulator
def test_emulator_insert_overwrite_static_partitions(wh) -> None:
    rel = wh.relation("events_static")
    wh.create_table_as(rel, "SELECT DATE '2024-01-01' AS d, 1 AS v UNION ALL SELECT DATE '2024-01-02', 2",
                       table_options({"partition_by": {"field": "d"}}))
    options = table_options({"partition_by": {"field": "d"}, "incremental_strategy": "insert_overwrite",
                             "partitions": ["DATE '2024-01-01'"]})
    wh.insert_overwrite(rel, "SELECT DATE '2024-01-01' AS d, 10 AS v", options)
    got = wh.query_arrow(f"SELECT CAST(d AS STRING) AS d, v FROM {rel.render()} ORDER BY d").to_pylist()
    assert got == [{"d": "2024-01-01", "v": 10}, {"d": "2024-01-02", "v": 2}]


@pytest.mark.emulator
def test_emulator_on_schema_change(wh) -> None:
    rel = wh.relation("inc")
    wh.create_table_as(rel, "SELECT 1 AS id, 'x' AS gone, 1 AS n")
    newer = "SELECT 2 AS id, 2.5 AS n, 'new' AS added"
    assert wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "ignore"})) == []
    with pytest.raises(ExecutionError, match="out of sync .*new in the SELECT: added STRING; missing from the "
                                             "SELECT: gone; changed type: n INT64 -> FLOAT64"):
        wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "fail"}))
    assert wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "append_new_columns"})) == [
        "added column added STRING"]
    assert [c.name for c in wh.columns(rel)] == ["id", "gone", "n", "added"]
    wh.sent.clear()
    assert wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "sync_all_columns"})) == [
        "dropped column gone", "changed column n to FLOAT64"]
    assert [s for s in _ddl_sent(wh) if not s.startswith("SELECT *")] == [
        f"ALTER TABLE {rel.render()} DROP COLUMN `gone`",
        f"CREATE OR REPLACE TABLE {rel.render()} AS SELECT * REPLACE (CAST(`n` AS FLOAT64) AS `n`) FROM {rel.render()}"]
    assert [(c.name, c.type) for c in wh.columns(rel)] == [("id", "INT64"), ("n", "FLOAT64"), ("added", "STRING")]


@pytest.mark.emulator
def test_emulator_responses_store_layout(wh) -> None:
    store = wh.relation("m__responses")
    wh.create_table_if_missing(store, S.RESPONSES_COLUMNS, S.RESPONSES_OPTIONS)
    wh.create_table_if_missing(store, S.RESPONSES_COLUMNS, S.RESPONSES_OPTIONS)  # a second run keeps it
    assert _ddl_sent(wh) == [B.create_table_if_missing_sql(store, S.RESPONSES_COLUMNS, S.RESPONSES_OPTIONS)] * 2
    table = _table(wh, "m__responses")
    assert (table.time_partitioning.field, table.time_partitioning.type_) == ("landed_at", "MONTH")
    assert table.clustering_fields == ["request_hash"]
