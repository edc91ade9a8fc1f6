"""Snapshots as dbt-core 1.11 builds them: timestamp and check strategies over three runs (insert, change a
row, delete a row) with each hard_deletes mode on DuckDB, exact rows and dbt_valid_from/to; the BigQuery SQL
as text; a project whose snapshots are graph nodes (ref, selection, `snapshot` and `build`, run_results ids);
the BigQuery path on the emulator."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from batchflow import api
from batchflow.errors import ConfigError
from batchflow.relation import Relation
from batchflow.snapshots import build_snapshot_sql, merge_sql, run_snapshot, snapshot_spec, staging_sql
from batchflow.warehouse.duckdb import DuckDBWarehouse
from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401
from tests.tools.dbt_snapshots import CASES, normalized
from tests.tools.dbt_snapshots import RUNS as DBT_RUNS

T0, T1, T2 = (datetime(2025, m, 1, tzinfo=timezone.utc) for m in (1, 2, 3))  # the snapshot times of runs 1-3
JAN, FEB = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc)


def _source(rows: list[tuple[int, str, str]]) -> str:
    return " union all ".join(f"select {i} as id, '{v}' as v, timestamp '{t}+00' as updated_at" for i, v, t in rows)


RUNS = [
    _source([(1, "a", "2024-01-01 00:00:00"), (2, "b", "2024-01-01 00:00:00")]),  # run 1: two rows
    _source([(1, "a2", "2024-02-01 00:00:00"), (2, "b", "2024-01-01 00:00:00")]),  # run 2: row 1 changes
    _source([(1, "a2", "2024-02-01 00:00:00")]),  # run 3: row 2 is deleted
]


def _three_runs(strategy: str, hard_deletes: str) -> list[tuple]:
    wh = DuckDBWarehouse(":memory:", schema="ds")
    wh.ensure_schema("ds")
    relation = Relation(None, "ds", "snap")
    config = {"unique_key": "id", "strategy": strategy, "hard_deletes": hard_deletes,
              **({"updated_at": "updated_at"} if strategy == "timestamp" else {"check_cols": ["v"]})}
    spec = snapshot_spec(config)
    for sql, now in zip(RUNS, (T0, T1, T2)):
        run_snapshot(wh, relation, sql, spec, now=now)
    run_snapshot(wh, relation, RUNS[2], spec, now=datetime(2025, 4, 1, tzinfo=timezone.utc))  # nothing changed
    deleted = ", dbt_is_deleted" if hard_deletes == "new_record" else ""
    table = wh.query_arrow(f"select id, v, dbt_valid_from, dbt_valid_to{deleted} from ds.snap "
                           "order by id, dbt_valid_from")
    return [tuple(r.values()) for r in table.to_pylist()]


@pytest.mark.parametrize("hard_deletes", ["ignore", "invalidate", "new_record"])
def test_timestamp_strategy_three_runs(hard_deletes: str) -> None:
    rows = _three_runs("timestamp", hard_deletes)
    # valid_from/to come from updated_at; a delete is closed at the snapshot time (dbt's snapshot_get_time)
    expected = {
        "ignore": [(1, "a", JAN, FEB), (1, "a2", FEB, None), (2, "b", JAN, None)],
        "invalidate": [(1, "a", JAN, FEB), (1, "a2", FEB, None), (2, "b", JAN, T2)],
        "new_record": [(1, "a", JAN, FEB, "False"), (1, "a2", FEB, None, "False"), (2, "b", JAN, T2, "False"),
                       (2, "b", T2, None, "True")],
    }
    assert rows == expected[hard_deletes]


@pytest.mark.parametrize("hard_deletes", ["ignore", "invalidate", "new_record"])
def test_check_strategy_three_runs(hard_deletes: str) -> None:
    rows = _three_runs("check", hard_deletes)
    # the check strategy versions rows by the snapshot time
    expected = {
        "ignore": [(1, "a", T0, T1), (1, "a2", T1, None), (2, "b", T0, None)],
        "invalidate": [(1, "a", T0, T1), (1, "a2", T1, None), (2, "b", T0, T2)],
        "new_record": [(1, "a", T0, T1, "False"), (1, "a2", T1, None, "False"), (2, "b", T0, T2, "False"),
                       (2, "b", T2, None, "True")],
    }
    assert rows == expected[hard_deletes]


def test_a_deleted_row_that_comes_back_is_a_new_version() -> None:
    wh = DuckDBWarehouse(":memory:", schema="ds")
    wh.ensure_schema("ds")
    relation = Relation(None, "ds", "snap")
    spec = snapshot_spec({"unique_key": "id", "strategy": "check", "check_cols": "all", "hard_deletes": "new_record"})
    for sql, now in ((RUNS[1], T0), (RUNS[2], T1), (RUNS[1], T2)):
        run_snapshot(wh, relation, sql, spec, now=now)
    rows = wh.query_arrow("select id, dbt_valid_from, dbt_valid_to, dbt_is_deleted from ds.snap where id = 2 "
                          "order by dbt_valid_from").to_pylist()
    assert [tuple(r.values()) for r in rows] == [(2, T0, T1, "False"), (2, T1, T2, "True"), (2, T2, None, "False")]


def test_the_bigquery_sql_of_a_first_run() -> None:
    spec = snapshot_spec({"unique_key": "id", "strategy": "timestamp", "updated_at": "updated_at"})
    assert build_snapshot_sql("select * from `p`.`raw`.`orders`", spec) == (
        "select *,\n"
        "    to_hex(md5(concat(coalesce(cast(`id` as string), ''), '|', coalesce(cast(`updated_at` as string), ''))))"
        " as `dbt_scd_id`,\n"
        "    `updated_at` as `dbt_updated_at`,\n"
        "    `updated_at` as `dbt_valid_from`,\n"
        "    nullif(`updated_at`, `updated_at`) as `dbt_valid_to`\n"
        "from (\nselect * from `p`.`raw`.`orders`\n) sbq")


def test_the_bigquery_merge_of_a_later_run() -> None:
    spec = snapshot_spec({"unique_key": "id", "strategy": "check", "check_cols": ["v"],
                          "hard_deletes": "invalidate", "dbt_valid_to_current": "timestamp('9999-12-31')"})
    staging = staging_sql("select * from src", "`p`.`s`.`snap`", spec, check_cols=["v"])
    assert ("snapshotted_data as (\n    select *, `id` as dbt_unique_key\n    from `p`.`s`.`snap`\n"
            "    where (`dbt_valid_to` = timestamp('9999-12-31') or `dbt_valid_to` is null)\n)") in staging
    assert ("    where ((snapshotted_data.`v` != source_data.`v` or ((snapshotted_data.`v` is null) and not "
            "(source_data.`v` is null)) or ((not snapshotted_data.`v` is null) and (source_data.`v` is null))))\n)") in staging
    assert "coalesce(nullif(CURRENT_TIMESTAMP(), CURRENT_TIMESTAMP()), timestamp('9999-12-31')) as `dbt_valid_to`" \
        in staging
    assert staging.endswith("select * from insertions\nunion all\nselect * from updates\nunion all\n"
                            "select * from deletes")
    merge = merge_sql("`p`.`s`.`snap`", "STAGING", spec, ["id", "v", "dbt_scd_id"])
    assert merge == (
        "merge into `p`.`s`.`snap` as DBT_INTERNAL_DEST\nusing (\nSTAGING\n) as DBT_INTERNAL_SOURCE\n"
        "on DBT_INTERNAL_SOURCE.`dbt_scd_id` = DBT_INTERNAL_DEST.`dbt_scd_id`\n"
        "when matched\n    and (DBT_INTERNAL_DEST.`dbt_valid_to` = timestamp('9999-12-31') or "
        "DBT_INTERNAL_DEST.`dbt_valid_to` is null)\n"
        "    and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')\n"
        "    then update set `dbt_valid_to` = DBT_INTERNAL_SOURCE.`dbt_valid_to`\n"
        "when not matched\n    and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'\n"
        "    then insert (`id`, `v`, `dbt_scd_id`)\n"
        "    values (DBT_INTERNAL_SOURCE.`id`, DBT_INTERNAL_SOURCE.`v`, DBT_INTERNAL_SOURCE.`dbt_scd_id`)")


def test_meta_column_names_and_legacy_invalidate() -> None:
    spec = snapshot_spec({"unique_key": ["a", "b"], "strategy": "timestamp", "updated_at": "u",
                          "invalidate_hard_deletes": True, "snapshot_meta_column_names": {"dbt_valid_to": "valid_to"}})
    assert spec.hard_deletes == "invalidate" and spec.columns["dbt_valid_to"] == "valid_to"
    staging = staging_sql("select 1", "t", spec)
    assert "`a` as dbt_unique_key_1, `b` as dbt_unique_key_2" in staging and "`valid_to` is null" in staging


@pytest.mark.parametrize("config, message", [
    ({"unique_key": "id", "strategy": "timestamp"}, "needs `updated_at`"),
    ({"unique_key": "id", "strategy": "check"}, "`check_cols` is required"),
    ({"unique_key": "id", "strategy": "latest"}, "is not one of timestamp, check"),
    ({"strategy": "check", "check_cols": "all"}, "`unique_key` is required"),
    ({"unique_key": "id", "strategy": "check", "check_cols": "all", "hard_deletes": "drop"}, "hard_deletes: drop"),
])
def test_bad_configs_are_clear_errors(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        snapshot_spec(config, "snapshots/s.sql", 2)


# --- a project ----------------------------------------------------------------------------------------------


def _project(tmp_path: Path, orders: str) -> Path:
    files = {
        "batchflow_project.yml": "name: shop\n",
        "profiles.yml": "shop:\n  target: local\n  outputs:\n    local:\n      type: duckdb\n"
                        "      path: target/w.duckdb\n      schema: main\n",
        "seeds/orders.csv": orders,
        "snapshots/orders_snap.sql": "-- history of orders\n{% snapshot orders_snap %}\n"
                                     "{{ config(unique_key='id', strategy='timestamp', updated_at='updated_at', "
                                     "target_schema='snaps') }}\nselect * from {{ ref('orders') }}\n{% endsnapshot %}\n",
        "snapshots/snaps.yml": "snapshots:\n  - name: orders_check\n    relation: ref('orders')\n    config:\n"
                               "      unique_key: id\n      strategy: check\n      check_cols: [status]\n"
                               "      hard_deletes: invalidate\n",
        "models/current_orders.sql": "select id, status from {{ ref('orders_snap') }} where dbt_valid_to is null\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def _rows(root: Path, sql: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(root / "target/w.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def test_snapshots_in_a_project(tmp_path: Path) -> None:
    root = _project(tmp_path, "id,status,updated_at\n1,new,2024-01-01 00:00:00\n2,new,2024-01-01 00:00:00\n")
    names = [n.name for n in api.ls(root, profiles_dir=root, select=["resource_type:snapshot"])]
    assert sorted(names) == ["orders_check", "orders_snap"]
    assert sorted(n.name for n in api.ls(root, profiles_dir=root, select=["orders_snap+"])) == ["current_orders",
                                                                                            "orders_snap"]
    report = api.build(root, profiles_dir=root)
    assert report.exit_code == 0, [(r.name, r.message) for r in report.results]
    assert [r.name for r in report.results].index("orders_snap") < [r.name for r in report.results].index(
        "current_orders")
    (root / "seeds/orders.csv").write_text("id,status,updated_at\n1,shipped,2024-02-01 00:00:00\n")
    assert api.seed(root, profiles_dir=root).exit_code == 0
    report = api.snapshot(root, profiles_dir=root)
    assert sorted(r.name for r in report.results) == ["orders_check", "orders_snap"] and report.exit_code == 0
    results = json.loads((root / "target/run_results.json").read_text())["results"]
    assert sorted(r["unique_id"] for r in results) == ["snapshot.shop.orders_check", "snapshot.shop.orders_snap"]
    assert _rows(root, "select id, status, strftime(dbt_valid_from, '%Y-%m'), strftime(dbt_valid_to, '%Y-%m') "
                       "from snaps.orders_snap order by 1, 3") == [
        (1, "new", "2024-01", "2024-02"), (1, "shipped", "2024-02", None), (2, "new", "2024-01", None)]
    # check: versions by the warehouse clock; the old version closes exactly when the new one starts
    check = _rows(root, "select id, status, dbt_valid_from, dbt_valid_to from main.orders_check order by 1, 3")
    assert [(i, s) for i, s, *_ in check] == [(1, "new"), (1, "shipped"), (2, "new")]
    (_, _, first, closed), (_, _, second, current), (_, _, _, deleted) = check
    assert closed == second == deleted and first < second and current is None


def test_a_bad_snapshot_config_names_its_file_and_line(tmp_path: Path) -> None:
    root = _project(tmp_path, "id,status,updated_at\n1,new,2024-01-01 00:00:00\n")
    (root / "snapshots/orders_snap.sql").write_text(
        "{% snapshot orders_snap %}\n{{ config(unique_key='id', strategy='timestamp') }}\nselect 1 as id\n"
        "{% endsnapshot %}\n")
    with pytest.raises(ConfigError) as caught:  # before anything runs
        api.snapshot(root, profiles_dir=root, select=["orders_snap"])
    assert str(caught.value).startswith("snapshots/orders_snap.sql:2: snapshot `strategy: timestamp` needs `updated_at`")


def test_the_manifest_and_run_results_load_with_dbt_artifacts_parser(tmp_path: Path) -> None:
    from dbt_artifacts_parser.parser import parse_manifest, parse_run_results

    root = _project(tmp_path, "id,status,updated_at\n1,new,2024-01-01 00:00:00\n")
    assert api.build(root, profiles_dir=root).exit_code == 0
    manifest = parse_manifest(json.loads((root / "target/manifest.json").read_text()))
    node = manifest.nodes["snapshot.shop.orders_snap"]
    assert node.resource_type == "snapshot" and node.config.strategy == "timestamp"
    assert "select * from" in node.compiled_code
    assert manifest.child_map["snapshot.shop.orders_snap"] == ["model.shop.current_orders"]
    results = parse_run_results(json.loads((root / "target/run_results.json").read_text()))
    assert "snapshot.shop.orders_check" in {r.unique_id for r in results.results}


# --- on the BigQuery emulator -----------------------------------------------------------------------------


@pytest.fixture
def bq(bigquery_emulator, bq_dataset):  # noqa: ANN001, ANN201, F811
    from batchflow.warehouse.bigquery import BigQueryWarehouse

    w = BigQueryWarehouse(bigquery_emulator.project, bq_dataset, "us-central1", client=bigquery_emulator.client())
    w.ensure_schema(bq_dataset)
    sent: list[str] = []
    query = w.client.query

    def recording(sql, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sent.append(sql)
        return query(sql, *args, **kwargs)

    w.client.query = recording  # type: ignore[method-assign]
    w.sent = sent  # type: ignore[attr-defined]
    yield w
    w.close()


@pytest.mark.emulator
@pytest.mark.parametrize("strategy", ["timestamp", "check"])
def test_three_runs_on_the_bigquery_emulator(bq, strategy: str) -> None:  # noqa: ANN001
    relation = bq.relation("snap")
    config = {"unique_key": "id", "strategy": strategy, "hard_deletes": "invalidate",
              **({"updated_at": "updated_at"} if strategy == "timestamp" else {"check_cols": "all"})}
    spec = snapshot_spec(config)
    for sql, now in zip(RUNS, (T0, T1, T2)):
        run_snapshot(bq, relation, sql, spec, now=now)
    assert sum(s.lstrip().lower().startswith("merge into") for s in bq.sent) == 2  # runs 2 and 3: one MERGE each
    rows = bq.query_arrow(f"select id, v, dbt_valid_from, dbt_valid_to from {relation.render()} "
                          "order by id, dbt_valid_from").to_pylist()
    first, second = (JAN, FEB) if strategy == "timestamp" else (T0, T1)
    assert [tuple(r.values()) for r in rows] == [(1, "a", first, second), (1, "a2", second, None),
                                                 (2, "b", first, T2)]


# --- against dbt-core 1.11 + dbt-duckdb (rows recorded by tests/tools/dbt_snapshots.py) ----------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_rows_as_dbt_duckdb(name: str) -> None:
    recorded = json.loads((Path(__file__).parent / "fixtures/dbt/snapshot_rows.json").read_text())
    wh = DuckDBWarehouse(":memory:", schema="main")
    wh.ensure_schema("main")
    relation = Relation(None, "main", name)
    spec = snapshot_spec(CASES[name])
    clocks = (T0, T1, T2)
    for run, now in zip(DBT_RUNS, clocks):
        sql = " union all ".join(f"select {i} as id, '{v}' as v, timestamp '{t}' as updated_at" for i, v, t in run)
        run_snapshot(wh, relation, f"select * from ({sql})", spec, now=now)
    rows = wh.query_arrow(f"select * from main.{name}").to_pylist()
    windows = [(c.replace(tzinfo=None), c.replace(tzinfo=None)) for c in clocks]
    assert normalized(rows, windows) == recorded["snapshots"][name]


def test_fqn_and_folder_configs_as_dbt_has_them(tmp_path: Path) -> None:
    root = _project(tmp_path, "id,status,updated_at\n1,new,2024-01-01 00:00:00\n")
    (root / "batchflow_project.yml").write_text("name: shop\nsnapshots:\n  shop:\n    +tags: [history]\n")
    nodes = {n.name: n for n in api.ls(root, profiles_dir=root, select=["tag:history"])}
    # dbt ls: a {% snapshot %} block's fqn names its file, a yml snapshot's does not
    assert {name: n.fqn for name, n in nodes.items()} == {"orders_snap": ["shop", "orders_snap", "orders_snap"],
                                                          "orders_check": ["shop", "orders_check"]}


def test_a_yml_snapshot_without_relation_documenting_nothing_is_an_error(tmp_path: Path) -> None:
    root = _project(tmp_path, "id,status,updated_at\n1,new,2024-01-01 00:00:00\n")
    (root / "snapshots/more.yml").write_text("snapshots:\n  - name: orders_snp\n    description: typo\n")
    with pytest.raises(ConfigError) as caught:
        api.ls(root, profiles_dir=root)
    assert str(caught.value).endswith("snapshots/more.yml:2: yml snapshot 'orders_snp' has no `relation:` and documents "
                                      "no {% snapshot %} block; did you mean 'orders_snap'?")


def test_dbt_valid_to_current_marks_current_rows() -> None:
    wh = DuckDBWarehouse(":memory:", schema="ds")
    wh.ensure_schema("ds")
    relation = Relation(None, "ds", "snap")
    spec = snapshot_spec({"unique_key": "id", "strategy": "timestamp", "updated_at": "updated_at",
                          "hard_deletes": "invalidate", "dbt_valid_to_current": "timestamp '9999-12-31 00:00:00+00'"})
    for sql, now in zip(RUNS, (T0, T1, T2)):
        run_snapshot(wh, relation, sql, spec, now=now)
    rows = wh.query_arrow("select id, v, dbt_valid_to from ds.snap order by id, dbt_valid_from").to_pylist()
    far = datetime(9999, 12, 31, tzinfo=timezone.utc)
    assert [tuple(r.values()) for r in rows] == [(1, "a", FEB), (1, "a2", far), (2, "b", T2)]


def test_check_all_with_a_new_column_adds_it_and_versions_every_row() -> None:
    wh = DuckDBWarehouse(":memory:", schema="ds")
    wh.ensure_schema("ds")
    relation = Relation(None, "ds", "snap")
    spec = snapshot_spec({"unique_key": "id", "strategy": "check", "check_cols": "all"})
    run_snapshot(wh, relation, RUNS[0], spec, now=T0)
    run_snapshot(wh, relation, f"select *, 'x' as w from ({RUNS[0]})", spec, now=T1)  # dbt: a new column is a change
    rows = wh.query_arrow("select id, w, dbt_valid_from, dbt_valid_to from ds.snap order by id, dbt_valid_from")
    assert [tuple(r.values()) for r in rows.to_pylist()] == [(1, None, T0, T1), (1, "x", T1, None),
                                                             (2, None, T0, T1), (2, "x", T1, None)]
