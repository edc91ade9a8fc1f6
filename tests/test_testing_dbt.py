"""Data tests as dbt runs them on the DuckDB target: singular tests, custom and package generic tests,
model-level tests, where / severity / warn_if / error_if / limit / store_failures, and YAML unit tests."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_runner import make_project, write

UTILS = Path(__file__).resolve().parents[2] / "shared" / "dbt" / "packages" / "dbt_utils"
MODELS = {"dupes": "{{ config(materialized='table') }}select n, label from {{ ref('numbers') }} "
                   "union all select 1, cast(null as string)",
          "doubled": "select n, n * {{ var('factor') }} as n10, label from {{ ref('numbers') }}"}


def _results(cli) -> dict[str, tuple[str, int | None]]:  # noqa: ANN001 - the conftest CLI
    data = json.loads((cli.project / "target" / "run_results.json").read_text())
    return {r["unique_id"].split(".")[2 if r["unique_id"].startswith("test.") else 3]: (r["status"], r["failures"])
            for r in data["results"]
            if r["unique_id"].startswith(("test.", "unit_test."))}


def test_configs_where_severity_thresholds_limit(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {"models/schema.yml": """
version: 2
models:
  - name: dupes
    data_tests:
      - is_small: {max_value: 2, config: {severity: warn}}
    columns:
      - name: n
        data_tests:
          - unique: {config: {where: "label is not null"}}
          - is_small: {max_value: 2, name: small_n_errors}
          - is_small: {max_value: 1, name: small_n_thresholds, config: {warn_if: ">1", error_if: ">2"}}
          - is_small: {max_value: 0, name: small_n_limited, config: {limit: 2, warn_if: ">= 3", error_if: ">= 3"}}
      - name: label
        data_tests:
          - not_null: {severity: warn}
""", "tests/generic/is_small.sql": """
{% test is_small(model, column_name=none, max_value=0) %}
select * from {{ model }} where {{ column_name or 'n' }} > {{ max_value }}
{% endtest %}
"""})
    result = cli("build")
    assert result.exit_code == 1, result.output
    got = _results(cli)
    assert got["unique_dupes_n"] == ("pass", 0)  # the duplicate n=1 has a null label: filtered out by `where`
    assert got["not_null_dupes_label"] == ("warn", 1)  # severity warn: a warning, not a failure
    assert got["is_small_dupes_2"] == ("warn", 1)  # model-level test (no column), severity warn
    assert got["small_n_errors"] == ("fail", 1)
    assert got["small_n_thresholds"] == ("warn", 2)  # 2 rows: over warn_if >1, not over error_if >2
    assert got["small_n_limited"] == ("pass", 2)  # 4 rows fail, limit 2 counts 2, error_if >= 3
    assert "WARN not_null_dupes_label  Got 1 result(s), configured to warn if != 0" in result.output
    assert "Got 1 result(s), configured to fail if != 0" in result.output


def test_warn_only_exits_zero_and_store_failures_keeps_the_rows(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {"models/schema.yml": """
version: 2
models:
  - name: dupes
    columns:
      - name: label
        data_tests:
          - not_null: {config: {severity: warn, store_failures: true}}
"""})
    result = cli("build")
    assert result.exit_code == 0, result.output
    assert _results(cli)["not_null_dupes_label"] == ("warn", 1)
    # dbt's audit schema, the test's name as table, the failing rows (every column: should_store_failures)
    assert cli.query("select n, label from analytics_dbt_test__audit.not_null_dupes_label") == [(1, None)]
    result = cli("test")
    assert result.exit_code == 0 and "0 passed, 1 warned, 0 failed" in result.output


def test_singular_tests_and_package_tests(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {
        "packages.yml": f"packages:\n  - local: {UTILS}\n",
        "models/schema.yml": """
version: 2
models:
  - name: doubled
    data_tests:
      - dbt_utils.expression_is_true: {expression: "n10 = n * 10"}
      - dbt_utils.expression_is_true: {expression: "n10 = n * 11"}
    columns:
      - name: n
        data_tests:
          - dbt_utils.accepted_range: {min_value: 1, max_value: 2}
""",
        "tests/assert_three_numbers.sql": "select count(*) as c from {{ ref('numbers') }} having count(*) != 3",
        "tests/assert_no_big_n.sql": "{{ config(severity='warn') }}select * from {{ ref('doubled') }} where n10 > 20",
    })
    assert cli("build").exit_code == 1
    got = _results(cli)
    assert got["dbt_utils_expression_is_true_doubled_n10_n_10"] == ("pass", 0)
    assert got["dbt_utils_expression_is_true_doubled_n10_n_11"] == ("fail", 3)
    assert got["dbt_utils_accepted_range_doubled_n__2__1"] == ("fail", 1)  # n = 3
    assert got["assert_three_numbers"] == ("pass", 0)
    assert got["assert_no_big_n"] == ("warn", 1)  # config() in a singular test
    # `-s` picks tests as dbt does; a singular test follows the models it refs
    result = cli("test", "-s", "numbers")
    assert result.exit_code == 0, result.output
    assert set(_results(cli)) == {"assert_three_numbers"}


def test_an_unknown_package_test_is_an_error_naming_the_file(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {"models/schema.yml": """
version: 2
models:
  - name: doubled
    columns:
      - name: n
        data_tests: [nopkg.is_fine]
"""})
    result = cli("build")
    assert result.exit_code == 1
    assert "no generic test 'is_fine' in package 'nopkg'" in result.output
    assert "models/schema.yml" in result.output


UNIT = """
version: 2
unit_tests:
  - name: doubles_by_the_factor
    model: doubled
    given:
      - input: ref('numbers')
        rows:
          - {n: 2}
          - {n: 5, label: five}
    expect:
      rows:
        - {n: 5, n10: 50}
        - {n: 2, n10: 20}
  - name: doubles_from_csv_with_a_var_override
    model: doubled
    overrides:
      vars: {factor: 3}
    given:
      - input: ref('numbers')
        format: csv
        rows: |
          n,label
          4,four
    expect:
      format: sql
      rows: select 4 as n, 12 as n10, 'four' as label
  - name: wrong_expectation
    model: doubled
    given:
      - input: ref('numbers')
        rows: [{n: 1}]
    expect:
      rows: [{n10: 11}]
"""


def test_unit_tests_pass_fail_and_block_their_model(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {"models/unit.yml": UNIT})
    result = cli("build")
    assert result.exit_code == 1
    got = _results(cli)
    assert got["doubles_by_the_factor"][0] == "pass"
    assert got["doubles_from_csv_with_a_var_override"][0] == "pass"
    assert got["wrong_expectation"][0] == "fail"
    assert "expected, not returned: (11.0,)" in result.output and "returned, not expected: (10.0,)" in result.output
    # a failing unit test skips its model in a build, as in dbt
    data = json.loads((cli.project / "target" / "run_results.json").read_text())
    assert next(r["status"] for r in data["results"] if r["unique_id"] == "model.tiny.doubled") == "skipped"
    assert cli.query("select count(*) from information_schema.tables where table_name = 'doubled'") == [(0,)]


def test_unit_test_input_missing_and_unknown_column_are_clear_errors(tmp_path: Path) -> None:
    cli = make_project(tmp_path, {**MODELS, "joined": "select d.n from {{ ref('dupes') }} d join {{ ref('numbers') }} "
                                  "using (n)"}, {"models/unit.yml": """
version: 2
unit_tests:
  - name: misses_an_input
    model: joined
    given:
      - input: ref('dupes')
        rows: [{n: 1}]
    expect:
      rows: [{n: 1}]
  - name: names_a_column_the_input_lacks
    model: doubled
    given:
      - input: ref('numbers')
        rows: [{n: 1, nope: 2}]
    expect:
      rows: [{n: 1}]
"""})
    assert cli("build").exit_code == 1
    data = json.loads((cli.project / "target" / "run_results.json").read_text())
    messages = {r["unique_id"].split(".")[-1]: r["message"] for r in data["results"]}
    assert "reads ref('numbers'), which is not a `given:` input" in messages["misses_an_input"]
    assert "column(s) nope that the relation does not have" in messages["names_a_column_the_input_lacks"]


def test_unit_test_format_errors_name_file_and_line(tmp_path: Path) -> None:
    cli = make_project(tmp_path, MODELS, {"models/unit.yml": UNIT.replace("format: csv", "format: tsv")})
    result = cli("build")
    assert result.exit_code == 2
    assert "models/unit.yml:21: unit test 'doubles_from_csv_with_a_var_override': `format: tsv` must be one of " \
           "dict, csv, sql" in result.output
    write(tmp_path, "models/unit.yml", UNIT.replace("input: ref('numbers')", "input: ref('numbrs')", 1))
    result = cli("build")
    assert result.exit_code == 2 and "input ref('numbrs') names no enabled model or seed" in result.output
