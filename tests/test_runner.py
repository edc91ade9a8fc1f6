"""Materializations on the local target, through the CLI on small projects built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CLI, write

PROFILE = """
tiny:
  target: local
  outputs:
    local:
      type: duckdb
      path: target/batchflow.duckdb
      schema: analytics
      threads: 2
"""


def make_project(root: Path, models: dict[str, str], extra: dict[str, str] | None = None) -> CLI:
    write(root, "batchflow_project.yml", "name: tiny\nprofile: tiny\nvars:\n  factor: 10\n")
    write(root, "profiles.yml", PROFILE)
    write(root, "seeds/numbers.csv", "n,label\n1,one\n2,two\n3,three\n")
    for name, sql in models.items():
        write(root, f"models/{name}.sql", sql)
    for rel, text in (extra or {}).items():
        write(root, rel, text)
    return CLI(root)


def test_table_view_ephemeral_and_vars(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {
        "base": "{{ config(materialized='ephemeral') }}select n * {{ var('factor') }} as n10, label from {{ ref('numbers') }}",
        "mid": "{{ config(materialized='ephemeral') }}select n10 + 1 as n11, label from {{ ref('base') }}",
        "final": "{{ config(materialized='table') }}select label, n11 from {{ ref('mid') }} order by n11",
        "as_view": "select count(*) as c from {{ ref('final') }}",
    })
    result = cli("build")
    assert result.exit_code == 0, result.output
    assert cli.query("select label, n11 from analytics.final order by n11") == [("one", 11), ("two", 21), ("three", 31)]
    assert cli.query("select table_type from information_schema.tables where table_name = 'as_view'") == [("VIEW",)]
    assert cli.query("select c from analytics.as_view") == [(3,)]
    # Ephemeral models exist only inlined, never as relations.
    assert cli.query("select count(*) from information_schema.tables where table_name in ('base', 'mid')") == [(0,)]
    result = cli("build", "--vars", "{factor: 100}")
    assert result.exit_code == 0
    assert cli.query("select max(n11) from analytics.final") == [(301,)]


def test_incremental_append_and_merge(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {
        "events": "{{ config(materialized='incremental') }}\n"
                  "select n, label from {{ ref('numbers') }}\n"
                  "{% if is_incremental() %}where n > (select max(n) from {{ this }}){% endif %}",
        "latest": "{{ config(materialized='incremental', unique_key='n') }}\n"
                  "select n, label from {{ ref('numbers') }}",
    })
    assert cli("build").exit_code == 0
    write(tmp_path, "seeds/numbers.csv", "n,label\n1,uno\n2,two\n3,three\n4,four\n")
    assert cli("build").exit_code == 0
    # append: only the new row (n > max) is added; merge: n=1 updated in place, n=4 inserted.
    assert cli.query("select n, label from analytics.events order by n") == [
        (1, "one"), (2, "two"), (3, "three"), (4, "four")]
    assert cli.query("select n, label from analytics.latest order by n") == [
        (1, "uno"), (2, "two"), (3, "three"), (4, "four")]
    assert cli("build", "--full-refresh").exit_code == 0
    assert cli.query("select count(*) from analytics.events") == [(4,)]


def test_failing_model_keeps_old_table_and_skips_downstream(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {
        "t": "{{ config(materialized='table') }}select n from {{ ref('numbers') }}",
        "child": "{{ config(materialized='table') }}select n from {{ ref('t') }}",
        "other": "{{ config(materialized='table') }}select 1 as x",
    })
    assert cli("build").exit_code == 0
    # Now make `t` fail at run time (valid syntax, bad cast): the old table must survive.
    write(tmp_path, "models/t.sql", "{{ config(materialized='table') }}select cast(label as int64) as n from {{ ref('numbers') }}")
    result = cli("build")
    assert result.exit_code == 1
    statuses = {r["name"]: r["status"] for r in cli.run_results()["results"]}
    assert statuses == {"numbers": "success", "t": "error", "child": "skipped", "other": "success"}
    assert cli.query("select count(*) from analytics.t") == [(3,)]


def test_project_macro_overrides_builtin_and_this(tmp_path: Path) -> None:
    cli = make_project(
        tmp_path,
        {"m": "{{ config(materialized='table', alias='renamed') }}select '{{ this }}' as me, {{ finish_reason('x') }} as fr"},
        {"macros/override.sql": "{% macro finish_reason(response) %}'overridden'{% endmacro %}"},
    )
    assert cli("build").exit_code == 0
    assert cli.query("select me, fr from analytics.renamed") == [("`analytics`.`renamed`", "overridden")]


@pytest.mark.parametrize(
    "template, expected",
    [
        ("select {{ undefined_thing }}", "models/m.sql:1"),
        ("\n\n{% if %}select 1{% endif %}", "models/m.sql:3"),
        ("select {{ var('nope') }}", "var('nope')"),
        ("{{ config(materialized='tabel') }}select 1", "did you mean 'table'"),
    ],
)
def test_render_errors_name_file_and_line(tmp_path: Path, template: str, expected: str) -> None:
    cli = make_project(tmp_path, {"m": template})
    result = cli("compile")
    assert result.exit_code in (1, 2)
    assert expected in result.output


def test_macro_syntax_error_names_macro_file(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {"m": "select 1"}, {"macros/bad.sql": "{% macro ok() %}1{% endmacro %}\n{% macro bad( %}\n"})
    result = cli("compile")
    assert result.exit_code == 1
    assert "macros/bad.sql:2" in result.output


def test_data_tests_pass_fail_and_report_counts(tmp_path: Path) -> None:
    cli = make_project(
        tmp_path,
        {"dupes": "{{ config(materialized='table') }}select n, label from {{ ref('numbers') }} "
                  "union all select 1, cast(null as string)",
         "parent": "{{ config(materialized='table') }}select 1 as n"},
        {"models/schema.yml": """
version: 2
models:
  - name: dupes
    columns:
      - name: n
        tests:
          - unique
          - relationships: {to: "ref('parent')", field: n}
      - name: label
        tests:
          - not_null
          - accepted_values: {values: [one, two, three]}
"""},
    )
    result = cli("build")
    assert result.exit_code == 1
    tests = {r["name"]: (r["status"], r["rows"]) for r in cli.run_results()["results"] if r["resource_type"] == "test"}
    assert tests == {  # dbt's names and statuses
        "unique_dupes_n": ("fail", 1),  # n=1 twice
        "relationships_dupes_n__n__ref_parent_": ("fail", 2),  # n=2 and n=3 have no parent row
        "not_null_dupes_label": ("fail", 1),
        "accepted_values_dupes_label__one__two__three": ("pass", 0),
    }
    # as in dbt, selecting `parent` selects the tests that depend on it: the relationships test reads it too
    result = cli("test", "-s", "parent")
    assert result.exit_code == 1 and "0 passed, 1 failed" in result.output


def test_duckdb_file_named_like_the_schema_is_a_config_error(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {"m": "select 1 as x"})
    profile = tmp_path / "profiles.yml"
    profile.write_text(profile.read_text().replace("target/batchflow.duckdb", "target/analytics.duckdb"))
    result = cli("build")
    assert result.exit_code == 2 and "same name as schema 'analytics'" in result.output
