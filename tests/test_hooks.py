"""dbt's hooks (model pre_hook/post_hook, on-run-start/on-run-end), analyses (compiled, never run) and
seed column_types on the DuckDB target."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_runner import make_project, write

PROJECT = """name: tiny
profile: tiny
vars:
  factor: 10
on-run-start:
  - "create table if not exists {{ target.schema }}.audit (event varchar, at_var int)"
  - "insert into {{ target.schema }}.audit values ('start', {{ var('factor') }})"
on-run-end: "insert into {{ target.schema }}.audit select 'end:' || '{{ results | length }}', {{ schemas | length }}"
models:
  tiny:
    +post-hook: "insert into {{ target.schema }}.audit values ('post ' || '{{ this.name }}', 0)"
seeds:
  tiny:
    numbers:
      +column_types: {n: varchar}
"""


def test_hooks_run_in_dbts_order_with_their_context(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {
        "doubled": "{{ config(materialized='table', pre_hook=\"insert into {{ target.schema }}.audit values "
                   "('pre ' || '{{ this.name }}', 1)\") }}select cast(n as int) * 2 as n2 from {{ ref('numbers') }}",
    }, {"batchflow_project.yml": PROJECT})
    result = cli("build")
    assert result.exit_code == 0, result.output
    assert cli.query("select event, at_var from analytics.audit") == [
        ("start", 10), ("pre doubled", 1), ("post doubled", 0), ("end:2", 1)]  # 2 results: the seed, the model
    assert "OK hook tiny-on-run-start-0" in result.output
    data = json.loads((cli.project / "target" / "run_results.json").read_text())
    assert [r["unique_id"] for r in data["results"]][:2] == ["operation.tiny.tiny-on-run-start-0",
                                                             "operation.tiny.tiny-on-run-start-1"]
    # seed column_types: the CSV's integers are cast to the type named
    assert cli.query("select data_type from information_schema.columns where table_name = 'numbers' "
                     "and column_name = 'n'") == [("VARCHAR",)]


def test_a_failing_hook_fails_its_model_and_a_failing_on_run_start_stops_the_run(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {
        "m": "{{ config(materialized='table', post_hook='select * from no_such_table') }}select 1 as x",
        "after": "select x from {{ ref('m') }}",
    })
    result = cli("build")
    assert result.exit_code == 1
    assert "post-hook 1 of m" in result.output and "no_such_table" in result.output
    assert "SKIP view after" in result.output
    write(tmp_path, "batchflow_project.yml", "name: tiny\nprofile: tiny\non-run-start: select * from nowhere\n")
    result = cli("run")
    assert result.exit_code == 1 and "ERROR hook tiny-on-run-start-0" in result.output
    assert cli.query("select count(*) from information_schema.tables where table_name = 'after'") == [(0,)]


def test_analyses_compile_to_target_and_never_run(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {"m": "select 1 as x"}, {
        "analyses/report.sql": "select count(*) from {{ ref('m') }} where x > {{ var('factor') }}",
        "analyses/broken.sql": "select {{ ref('nope') }}",
    })
    result = cli("compile")
    assert result.exit_code == 0, result.output
    compiled = (cli.project / "target" / "compiled" / "tiny" / "analyses" / "report.sql").read_text()
    assert "from `analytics`.`m` where x > 10" in compiled.replace('"', "`")
    assert "analysis 'broken' did not compile" in result.output
    assert cli("run").exit_code == 0
    assert cli.query("select count(*) from information_schema.tables where table_name = 'report'") == [(0,)]


def test_column_types_naming_a_missing_column_is_a_config_error(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {"m": "select 1 as x"}, {
        "batchflow_project.yml": "name: tiny\nprofile: tiny\nseeds:\n  tiny:\n    +column_types: {nn: varchar}\n"})
    result = cli("seed")
    assert result.exit_code == 1
    assert "`column_types` names nn, not a column of seeds/numbers.csv (columns: n, label)" in result.output


def test_a_snapshot_without_its_config_is_an_error_naming_its_file_and_line(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {"m": "select 1 as x"}, {
        "snapshots/orders_snap.sql": "-- history\n{% snapshot orders_snap %}\nselect 1 as id\n{% endsnapshot %}\n"})
    result = cli("run")
    assert result.exit_code == 2
    assert "snapshots/orders_snap.sql:3: snapshot config `strategy` is required" in result.output
