"""The compile pipeline after rendering (batchflow.compile_steps): each step alone over plain data, the
partial-parse cache as a wrapper around a step, and `sql_for_build` as the one render with execute true."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from batchflow import compile_steps as steps
from batchflow.compile_steps import SqlUnit, cached, run_steps
from batchflow.compiler import Compiler
from batchflow.errors import CompileError, ConfigError
from batchflow.project import load_profile, load_project
from tests.conftest import write


def test_parse_names_the_template_line_of_a_syntax_error() -> None:
    raw = "{{ config(materialized='table') }}\nselect 1 as a\nfrom from\n"
    unit = SqlUnit("\nselect 1 as a\nfrom from\n", path="models/m.sql", raw_sql=raw)
    with pytest.raises(CompileError) as caught:
        steps.parse(unit)
    assert caught.value.location() == "models/m.sql:3"
    assert steps.parse(SqlUnit("select 1 as a;")).tree is not None


def test_parse_reads_the_written_dialect() -> None:
    steps.parse(SqlUnit("select x::numeric(16, 2) as c from t", dialect="duckdb"))
    with pytest.raises(CompileError):
        steps.parse(SqlUnit("select x::numeric(16, 2) as c from t where", dialect="duckdb"))


def test_validate_checks_a_batch_models_columns() -> None:
    good = SqlUnit("select id, '{}' as request from t", materialized="batch", key=("ID",))
    assert steps.validate(good) is good  # BigQuery names are case-insensitive
    with pytest.raises(ConfigError, match=r"`key:` 'idd' is not a column.*did you mean 'id'") as caught:
        steps.validate(dataclasses.replace(good, key=("idd",), path="models/r.sql", key_line=4))
    assert caught.value.location() == "models/r.sql:4"
    with pytest.raises(ConfigError, match="status"):
        steps.validate(SqlUnit("select id, '{}' as request, 1 as status from t", materialized="batch"))
    assert steps.validate(SqlUnit("select * from t", materialized="batch")).sql == "select * from t"
    view = SqlUnit("select 1 as status")  # only batch models have reserved names
    assert steps.validate(view) is view


def test_transpile_goes_from_the_written_dialect_to_what_the_target_takes() -> None:
    bigquery = SqlUnit("select safe_cast(x as int64) from `d`.`t`;")
    assert steps.transpile(bigquery) is bigquery  # BigQuery SQL is what adapters take
    duck_on_duck = steps.transpile(SqlUnit("select x::numeric from t;", dialect="duckdb", writes="duckdb"))
    assert duck_on_duck.sql == "/* batchflow:dialect=duckdb */\nselect x::numeric from t"
    duck_on_bq = steps.transpile(SqlUnit("select x::numeric from t", dialect="duckdb", writes="bigquery"))
    assert duck_on_bq.sql == "SELECT CAST(x AS NUMERIC) FROM t"


def test_inline_ephemerals_prepends_ctes_before_the_querys_own() -> None:
    unit = SqlUnit("with own as (select * from __e) select * from own", ctes=(("__e", "select 1 as a"),))
    assert steps.inline_ephemerals(unit).sql == "WITH __e AS (SELECT 1 AS a), own AS (SELECT * FROM __e) SELECT * FROM own"
    plain = SqlUnit("select 1")
    assert steps.inline_ephemerals(plain) is plain


def test_run_steps_folds_in_order() -> None:
    seen: list[str] = []

    def step(tag: str):
        def run(unit: SqlUnit) -> SqlUnit:
            seen.append(tag)
            return dataclasses.replace(unit, sql=unit.sql + tag)
        return run

    assert run_steps(SqlUnit("s"), (step("a"), step("b"))).sql == "sab" and seen == ["a", "b"]
    full = run_steps(SqlUnit("select x::int as x from t", dialect="duckdb", writes="bigquery",
                              ctes=(("__e", "select 1 as x"),)))
    assert full.sql == "WITH __e AS (SELECT 1 AS x) SELECT CAST(x AS INT64) AS x FROM t"


class Store:
    def __init__(self) -> None:
        self.data: dict[bytes, str] = {}

    def step_result(self, key: bytes) -> str | None:
        return self.data.get(key)

    def add_step_result(self, key: bytes, sql: str) -> None:
        self.data[key] = sql


def test_the_cache_wraps_a_step_from_outside() -> None:
    calls: list[str] = []

    def transpile(unit: SqlUnit) -> SqlUnit:
        calls.append(unit.sql)
        return steps.transpile(unit)

    store = Store()
    wrapped = cached(transpile, store)
    unit = SqlUnit("select x::int from t", dialect="duckdb", writes="bigquery")
    first, second = wrapped(unit), wrapped(dataclasses.replace(unit, path="elsewhere.sql"))
    assert first.sql == second.sql == "SELECT CAST(x AS INT64) FROM t" and len(calls) == 1
    wrapped(dataclasses.replace(unit, writes="duckdb"))  # anything the step reads is part of the key
    assert len(calls) == 2
    broken = cached(steps.parse, store)
    for _ in range(2):  # failures are not remembered: reported every time, with their line
        with pytest.raises(CompileError):
            broken(SqlUnit("select from from"))


def _project(root: Path, files: dict[str, str]) -> Compiler:
    write(root, "dbt_project.yml", "name: steps\nprofile: steps\n")
    write(root, "profiles.yml", "steps:\n  target: dev\n  outputs:\n    dev: {type: duckdb, path: target/s.duckdb, "
                                "schema: main}\n")
    for rel, text in files.items():
        write(root, rel, text)
    project = load_project(root)
    return Compiler(project, load_profile(project, root))


def test_a_warm_compile_runs_no_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"models/a.sql": "select 1 as a", "models/b.sql": "select a from {{ ref('a') }}"}
    cold = _project(tmp_path, files)
    before = {n.name: n.compiled_sql for n in cold.compile().nodes.values()}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a step ran on a warm compile")

    from batchflow import sql as sqlmod

    monkeypatch.setattr(sqlmod, "parse_one", boom)
    warm = _project(tmp_path, files)
    assert {n.name: n.compiled_sql for n in warm.compile().nodes.values()} == before


def test_execute_is_true_exactly_when_the_runner_builds_the_model(tmp_path: Path) -> None:
    from batchflow.adapters import open_warehouse

    compiler = _project(tmp_path, {
        "models/m.sql": "{% if execute %}select 1 as built{% else %}select 0 as parsed{% endif %}",
        "models/plain.sql": "select 2 as p"})
    manifest = compiler.compile()
    node = manifest.nodes["m"]
    assert node.renders_at_build and node.compiled_sql == "select 0 as parsed"
    assert not manifest.nodes["plain"].renders_at_build
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(node.compiled_sql))  # no thread tells them apart
    worker.start()
    worker.join()
    assert seen == ["select 0 as parsed"]
    warehouse = open_warehouse(compiler.target, compiler.project)
    try:
        assert compiler.sql_for_build(node, warehouse) == "select 1 as built"
        assert compiler.sql_for_build(manifest.nodes["plain"], warehouse) == "select 2 as p"
    finally:
        warehouse.close()


def test_sql_for_build_raises_the_error_of_a_model_that_did_not_compile(tmp_path: Path) -> None:
    compiler = _project(tmp_path, {"models/bad.sql": "select {{ nope }}"})
    manifest = compiler.compile(keep_going=True)
    with pytest.raises(CompileError, match="'nope' is undefined") as caught:
        compiler.sql_for_build(manifest.nodes["bad"], None)
    assert caught.value.location() == "models/bad.sql:1"
