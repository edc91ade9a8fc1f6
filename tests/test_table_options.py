"""Table configs (partition_by, cluster_by, persist_docs, on_schema_change, insert_overwrite, ...): how a bad
value is refused (file:line, did-you-mean, exit 2, before anything runs), how a model's config becomes one
TableOptions value, and what each key does on the DuckDB target (the BigQuery DDL is in
tests/test_bigquery_ddl.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from batchflow.errors import ConfigError, ExecutionError
from batchflow.table_options import NO_OPTIONS, not_applied, table_options
from batchflow.warehouse import duckdb as D
from batchflow.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import CLI, write

MODEL = "models/marts/cfg_model.sql"
BODY = "select 1 as id, date '2024-01-01' as d, 'x' as name\n"


def model(cli: CLI, config: str, body: str = BODY) -> None:
    write(cli.project, MODEL, "{{ config(" + config + ") }}\n" + body)


def run(cli: CLI, *args: str):
    return cli("run", "-s", "cfg_model", *args)


# --- refused before anything runs -------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ("materialized='table', partition_by={'field': 'd', 'data_type': 'strnig'}",
     "`data_type:` must be one of 'TIMESTAMP', 'DATE', 'DATETIME', 'INT64', got 'strnig'"),
    ("materialized='table', partition_by={'field': 'd', 'granularity': 'dya'}", "did you mean 'DAY'?"),
    ("materialized='table', partition_by={'feild': 'd'}", "unknown key 'feild' in `partition_by`; did you mean 'field'?"),
    ("materialized='incremental', on_schema_change='append_new_column'", "did you mean 'append_new_columns'?"),
    ("materialized='incremental', incremental_strategy='insert_overwite'", "did you mean 'insert_overwrite'?"),
    ("materialized='table', persist_docs={'relaton': true}", "did you mean 'relation'?"),
    ("materialized='table', hours_to_expiration=0", "`hours_to_expiration:` must be ≥ 1, got 0"),
])
def test_a_bad_value_is_a_config_error_at_its_line(cli: CLI, config: str, message: str) -> None:
    model(cli, config)
    result = run(cli)
    assert result.exit_code == 2, result.output
    assert "cfg_model.sql:1" in result.output
    assert message in result.output
    assert not (cli.project / "target" / "batchflow.duckdb").exists() or not cli.query(
        "select * from information_schema.tables where table_name = 'cfg_model'")


@pytest.mark.parametrize(("config", "message"), [
    ("materialized='table', partition_by={'field': 'id', 'data_type': 'int64'}",
     "an int64 partition needs `range: {start: ..., end: ..., interval: ...}`"),
    ("materialized='table', partition_by={'field': 'd', 'range': {'start': 0, 'end': 9, 'interval': 1}}",
     "`range:` applies to data_type int64 only"),
    ("materialized='incremental', incremental_strategy='insert_overwrite', partition_by={'field': 'd', "
     "'copy_partitions': true}", "`copy_partitions: true` is not supported"),
    ("materialized='table', partition_by={'field': 'd', 'time_ingestion_partitioning': true}",
     "`time_ingestion_partitioning: true` is not supported"),
    ("materialized='table', cluster_by=['a', 'b', 'c', 'd', 'e']", "BigQuery clusters on at most 4 columns, got 5"),
    ("materialized='table', labels={'Team': 'ml'}", "label key 'Team' must start with a lowercase letter"),
    ("materialized='table', labels={'team': 'Data Science'}", "label team: value 'Data Science'"),
    ("materialized='incremental', incremental_strategy='insert_overwrite'",
     "insert_overwrite replaces whole partitions: it needs `partition_by`"),
    ("materialized='incremental', partitions=['1']", "this model's strategy is merge"),
    ("materialized='table', grants={'roles/bigquery.dataViewer': ['a@b.com']}",
     "grantee 'a@b.com' must be `user:`, `group:`"),
])
def test_a_config_bigquery_would_refuse_stops_the_run_before_anything_is_built(cli: CLI, config: str,
                                                                               message: str) -> None:
    model(cli, "\n    " + config.replace(", ", ",\n    ") + "\n")
    result = run(cli)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "cfg_model.sql:" in result.output
    assert "Traceback" not in result.output


def test_the_error_names_the_line_of_the_key(cli: CLI) -> None:
    model(cli, "\n  materialized='table',\n  cluster_by=['a', 'b', 'c', 'd', 'e']\n")
    result = run(cli)
    assert "cfg_model.sql:3:" in result.output, result.output


# --- the TableOptions value -------------------------------------------------------------------------------


def test_options_are_normalised_as_dbt_bigquery_parses_them() -> None:
    options = table_options({"partition_by": {"field": "ts", "data_type": "TIMESTAMP", "granularity": "Hour"},
                             "cluster_by": "a", "labels": {"team": "ml"}, "persist_docs": {"relation": "true"},
                             "grants": {"roles/x": "user:a@b.com"}, "incremental_strategy": "INSERT_OVERWRITE",
                             "partitions": "DATE '2024-01-01'", "on_schema_change": "FAIL"}, description="d")
    assert (options.partition_by.data_type, options.partition_by.granularity) == ("timestamp", "hour")
    assert options.cluster_by == ("a",)
    assert options.description == "d" and options.column_descriptions == ()
    assert options.grants == (("roles/x", ("user:a@b.com",)),)
    assert (options.incremental_strategy, options.partitions, options.on_schema_change) == (
        "insert_overwrite", ("DATE '2024-01-01'",), "fail")
    assert options.set_keys == ("partition_by", "cluster_by", "labels", "persist_docs", "grants",
                                "incremental_strategy", "partitions", "on_schema_change")
    assert table_options({}).empty and NO_OPTIONS.empty and not options.empty


def test_not_applied_lists_the_set_keys_a_warehouse_ignores() -> None:
    options = table_options({"cluster_by": ["a"], "labels": {"a": "b"}, "persist_docs": {"relation": True}})
    assert not_applied(options, DuckDBWarehouse.TABLE_OPTIONS_IGNORED) == [
        "cluster_by (DuckDB tables have no clustering)", "labels (DuckDB tables have no labels)"]
    assert not_applied(options, {}) == []


def test_a_config_error_carries_path_and_line() -> None:
    with pytest.raises(ConfigError) as exc:
        table_options({"cluster_by": list("abcde")}, path="models/m.sql", raw_sql="{{ config(\n cluster_by=[...]) }}")
    assert (exc.value.path, exc.value.line, exc.value.exit_code) == ("models/m.sql", 2, 2)


# --- on DuckDB ----------------------------------------------------------------------------------------------


@pytest.fixture
def wh():
    w = DuckDBWarehouse(":memory:")
    yield w
    w.close()


def rows(wh: DuckDBWarehouse, sql: str) -> list[tuple]:
    return [tuple(r.values()) for r in wh.query_arrow(sql).to_pylist()]


def test_persist_docs_becomes_comments(wh: DuckDBWarehouse) -> None:
    rel = wh.relation("t")
    options = table_options({"persist_docs": {"relation": True, "columns": True}}, description="it's a table",
                            columns={"ID": {"name": "ID", "description": "the key"},
                                     "missing": {"name": "missing", "description": "not in the table"}})
    assert D.comment_statements(rel, "it's a table", [("id", "the key")]) == [
        """COMMENT ON TABLE "main"."t" IS 'it''s a table'""", """COMMENT ON COLUMN "main"."t"."id" IS 'the key'"""]
    wh.create_table_as(rel, "SELECT 1 AS id, 2 AS v", options)
    assert wh._run("SELECT comment FROM duckdb_tables() WHERE table_name = 't'") == [("it's a table",)]
    assert wh._run("SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 't' ORDER BY 1") == [
        ("id", "the key"), ("v", None)]
    view = wh.relation("v")
    wh.create_view_as(view, "SELECT 1 AS id", options)
    assert wh._run("SELECT comment FROM duckdb_views() WHERE view_name = 'v'") == [("it's a table",)]


def test_without_persist_docs_nothing_is_commented(wh: DuckDBWarehouse) -> None:
    rel = wh.relation("t")
    wh.create_table_as(rel, "SELECT 1 AS id", table_options({}, description="not persisted"))
    assert wh._run("SELECT comment FROM duckdb_tables() WHERE table_name = 't'") == [(None,)]


def test_insert_overwrite_dynamic_replaces_the_partitions_of_the_new_rows(wh: DuckDBWarehouse) -> None:
    rel = wh.relation("events")
    wh.create_table_as(rel, "SELECT TIMESTAMP '2024-01-01 10:00:00+00' AS ts, 1 AS v "
                            "UNION ALL SELECT TIMESTAMP '2024-01-02 10:00:00+00', 2 "
                            "UNION ALL SELECT TIMESTAMP '2024-01-02 23:00:00+00', 3")
    options = table_options({"partition_by": {"field": "ts", "data_type": "timestamp"},
                             "incremental_strategy": "insert_overwrite"})
    assert D.insert_overwrite_statements(rel, "SELECT 1", options, "stg") == [
        'CREATE OR REPLACE TEMP TABLE "stg" AS SELECT 1',
        """DELETE FROM "main"."events" WHERE DATE_TRUNC('DAY', "ts") IN (SELECT DISTINCT DATE_TRUNC('DAY', "ts") """
        'FROM "stg")',
        'INSERT INTO "main"."events" BY NAME SELECT * FROM "stg"']
    assert wh.insert_overwrite(rel, "SELECT TIMESTAMP '2024-01-02 12:00:00+00' AS ts, 20 AS v", options) == 1
    assert rows(wh, f"SELECT v FROM {rel.render()} ORDER BY ts") == [(1,), (20,)]  # both rows of the 2nd went


def test_insert_overwrite_static_partitions(wh: DuckDBWarehouse) -> None:
    rel = wh.relation("events")
    wh.create_table_as(rel, "SELECT DATE '2024-01-01' AS d, 1 AS v UNION ALL SELECT DATE '2024-01-02', 2")
    options = table_options({"partition_by": {"field": "d"}, "incremental_strategy": "insert_overwrite",
                             "partitions": ["DATE '2024-01-02'", "DATE_SUB(DATE '2024-01-04', INTERVAL 1 DAY)"]})
    assert D.insert_overwrite_statements(rel, "SELECT 1", options, "stg")[1] == (
        """DELETE FROM "main"."events" WHERE CAST("d" AS DATE) IN (CAST('2024-01-02' AS DATE), """
        """CAST('2024-01-04' AS DATE) - INTERVAL '1' DAY)""")
    # the listed partitions are emptied even where the new rows do not land (2024-01-02 here)
    wh.insert_overwrite(rel, "SELECT DATE '2024-01-03' AS d, 30 AS v", options)
    assert rows(wh, f"SELECT CAST(d AS STRING), v FROM {rel.render()} ORDER BY d") == [
        ("2024-01-01", 1), ("2024-01-03", 30)]


def test_on_schema_change_on_duckdb(wh: DuckDBWarehouse) -> None:
    rel = wh.relation("inc")
    wh.create_table_as(rel, "SELECT 1 AS id, 'x' AS gone, 1 AS n")
    newer = "SELECT 2 AS id, 2.5 AS n, 'new' AS added"
    assert wh.apply_schema_change(rel, newer, table_options({})) == []  # ignore: dbt's default
    with pytest.raises(ExecutionError, match="out of sync"):
        wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "fail"}))
    assert wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "append_new_columns"})) == [
        "added column added STRING"]
    assert [(c.name, c.type) for c in wh.columns(rel)] == [
        ("id", "INT64"), ("gone", "STRING"), ("n", "INT64"), ("added", "STRING")]
    assert wh.apply_schema_change(rel, newer, table_options({"on_schema_change": "sync_all_columns"})) == [
        "dropped column gone", "changed column n to NUMERIC"]
    assert [(c.name, c.type) for c in wh.columns(rel)] == [("id", "INT64"), ("n", "NUMERIC"), ("added", "STRING")]
    change = D.schema_change([D.Column("a", "INT64"), D.Column("b", "STRING")], [D.Column("a", "FLOAT64")])
    assert D.schema_change_statements(rel, change, "sync_all_columns", {"a": "DOUBLE"}) == [
        'ALTER TABLE "main"."inc" DROP COLUMN "b"', 'ALTER TABLE "main"."inc" ALTER COLUMN "a" TYPE DOUBLE']


# --- through the runner, on the local target ---------------------------------------------------------------


def test_a_table_with_bigquery_only_configs_builds_on_duckdb_with_a_note(cli: CLI) -> None:
    model(cli, "materialized='table', partition_by={'field': 'd'}, cluster_by='id', labels={'team': 'ml'}, "
               "persist_docs={'relation': true, 'columns': true}")
    write(cli.project, "models/marts/cfg_model.yml", "version: 2\nmodels:\n  - name: cfg_model\n"
          "    description: a documented table\n    columns:\n      - name: id\n        description: the key\n")
    result = run(cli)
    assert result.exit_code == 0, result.output
    [res] = [r for r in cli.run_results()["results"] if r["name"] == "cfg_model"]
    assert res["message"] == (
        "not applied on duckdb: partition_by (DuckDB tables have no partitions; insert_overwrite still reads it to "
        "find the rows it replaces), cluster_by (DuckDB tables have no clustering), labels (DuckDB tables have no "
        "labels)")
    assert cli.query("SELECT comment FROM duckdb_tables() WHERE table_name = 'cfg_model'") == [("a documented table",)]
    assert cli.query("SELECT comment FROM duckdb_columns() WHERE table_name = 'cfg_model' AND column_name = 'id'") == [
        ("the key",)]


def test_an_incremental_insert_overwrite_model_on_duckdb(cli: CLI) -> None:
    body = ("select date '2024-01-0{{ var('day', 1) }}' as d, {{ var('v', 1) }} as v, 'x' as name\n"
            "{% if is_incremental() %}union all select date '2024-01-01', 0, 'kept?'{% endif %}\n")
    model(cli, "materialized='incremental', incremental_strategy='insert_overwrite', partition_by={'field': 'd'}, "
               "on_schema_change='append_new_columns'", body)
    assert run(cli).exit_code == 0
    assert run(cli, "--vars", "{day: 2, v: 2}").exit_code == 0
    # the second run's rows fall in 2024-01-02 and 2024-01-01: both partitions are replaced
    assert cli.query("SELECT CAST(d AS VARCHAR), v FROM reviews.cfg_model ORDER BY d, v") == [
        ("2024-01-01", 0), ("2024-01-02", 2)]


def test_seeds_warn_on_table_configs_and_still_load(cli: CLI) -> None:
    seeds = sorted(p.stem for p in (cli.project / "seeds").glob("*.csv"))
    write(cli.project, "seeds/cfg.yml", f"version: 2\nseeds:\n  - name: {seeds[0]}\n    config:\n"
          "      partition_by: {field: x}\n")
    result = cli("seed")
    assert result.exit_code == 0, result.output
    assert "`partition_by` is a dbt setting batchflow does not act on" in result.output


def test_duckdb_comment_on_is_what_duckdb_runs() -> None:
    # guards the statements above against a DuckDB that spells comments otherwise
    con = duckdb.connect()
    con.execute("CREATE SCHEMA s; CREATE TABLE s.t (a INT)")
    for stmt in D.comment_statements(D.Relation(None, "s", "t"), "x", [("a", "y")]):
        con.execute(stmt)
    assert con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 't'").fetchall() == [("y",)]
    con.close()
