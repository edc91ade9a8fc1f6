"""dbt's Jinja context beyond the golden fixtures: run_query / statement really run during `build`,
errors of dbt's exceptions and dispatch, rendered descriptions, materialization blocks, deps."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchflow.compiler import Compiler
from batchflow.errors import BatchflowError, ConfigError
from batchflow.packages import install, load_packages
from batchflow.project import load_profile, load_project

CASES = Path(__file__).parent / "fixtures" / "compile"


def make(root: Path, files: dict[str, str], dialect: str | None = "duckdb") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {"dbt_project.yml": "name: ctx\nprofile: ctx\n", **files}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "profiles.yml").write_text(
        "ctx:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: target/ctx.duckdb\n"
        f"      schema: main\n{'      dialect: ' + dialect if dialect else ''}\n")
    return root


def compile_root(root: Path, cli_vars: dict | None = None):
    project = load_project(root, cli_vars)
    return Compiler(project, load_profile(project, root), partial_parse=False).compile()


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchflow.cli", *args, "--project-dir", str(root)],
                          capture_output=True, text=True, timeout=120, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})


@pytest.mark.e2e
def test_run_query_and_statement_execute_against_the_target_when_built(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {
        "models/up.sql": "{{ config(materialized='table') }} select 41 as v union all select 7",
        "models/down.sql": (
            "{{ config(materialized='table') }}\n"
            "{% set top = run_query('select max(v) from ' ~ ref('up')) %}\n"
            "{% call statement('n', fetch_result=True) %}select count(*) from {{ ref('up') }}{% endcall %}\n"
            "{% set cols = adapter.get_columns_in_relation(ref('up')) %}\n"
            "{% if execute %}select {{ top.columns[0].values()[0] + 1 }} as top, "
            "{{ load_result('n')['data'][0][0] }} as n, '{{ cols | map(attribute='name') | join(',') }}' as cols"
            "{% else %}select 0 as top, 0 as n, '' as cols{% endif %}"),
    })
    result = cli(root, "build")
    assert result.returncode == 0, result.stdout + result.stderr
    import duckdb

    con = duckdb.connect(str(root / "target/ctx.duckdb"), read_only=True)
    assert con.execute("select * from main.down").fetchall() == [(42, 2, "v")]
    # the compiled artifact is the parse-time render (execute false)
    assert "select 0 as top" in next((root / "target/compiled").rglob("down.sql")).read_text()


def test_raise_compiler_error_names_the_model(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"models/m.sql": "{{ exceptions.raise_compiler_error('no good') }}"})
    with pytest.raises(BatchflowError, match="Compilation Error: no good") as exc:
        compile_root(root)
    assert exc.value.path == "models/m.sql"


def test_dispatch_without_a_candidate_lists_what_it_searched(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"models/m.sql": "select {{ adapter.dispatch('nothing_here', 'dbt')() }}"})
    with pytest.raises(BatchflowError, match=r"No macro named 'nothing_here'.*dbt\.duckdb__nothing_here, "
                                             r"dbt\.default__nothing_here"):
        compile_root(root)


def test_macro_error_names_the_macro_file_and_line(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"macros/m.sql": "\n\n{% macro boom() %}\n{{ undefined_name.x }}\n{% endmacro %}\n",
                                 "models/m.sql": "select {{ boom() }}"})
    with pytest.raises(BatchflowError) as exc:
        compile_root(root)
    assert (exc.value.path, exc.value.line) == ("macros/m.sql", 4)


def test_custom_materialization_is_refused_clearly(tmp_path: Path) -> None:
    shutil.copytree(CASES / "blocks" / "macros", tmp_path / "p" / "macros")
    root = make(tmp_path / "p", {"models/m.sql": "{{ config(materialized='my_mat') }} select 1"})
    with pytest.raises(ConfigError, match="custom materialization 'my_mat'.*macros/blocks.sql"):
        compile_root(root)


def test_doc_blocks_render_in_descriptions_and_jinja_in_yml(tmp_path: Path) -> None:
    shutil.copytree(CASES / "rendering", tmp_path / "r")
    (tmp_path / "r" / "profiles.yml").write_text(
        "rendering:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: ':memory:'\n")
    manifest = compile_root(tmp_path / "r")
    assert manifest.nodes["r"].description == "The r model, documented in a docs block."
    assert "skip_me" not in manifest.nodes and "s" not in manifest.nodes  # +enabled rendered from vars
    assert str(manifest.nodes["source:raw.events"].relation) == "landing.events_dev"
    enabled = compile_root(tmp_path / "r", {"build_optional": True, "load_seeds": True})
    assert "skip_me" in enabled.nodes and "s" in enabled.nodes


def test_templated_model_paths_are_rendered(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {
        "dbt_project.yml": "name: ctx\nprofile: ctx\nvars: {where: sql}\nmodel-paths: [\"{{ var('where') }}\"]\n",
        "sql/m.sql": "select 1 as x"})
    assert "m" in compile_root(root).nodes


def test_deps_links_local_packages_and_loading_finds_them(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "macros").mkdir(parents=True)
    (pkg / "dbt_project.yml").write_text("name: pkg\n")
    (pkg / "macros" / "m.sql").write_text("{% macro hi() %}'hi'{% endmacro %}")
    root = make(tmp_path / "p", {"packages.yml": f"packages:\n  - local: {pkg}\n",
                                 "models/m.sql": "select {{ pkg.hi() }} as h"})
    done = install(root)
    assert [(d.name, d.how) for d in done] == [("pkg", "linked")]
    assert (root / "dbt_packages" / "pkg" / "dbt_project.yml").is_file()
    assert "'hi'" in compile_root(root).nodes["m"].compiled_sql


def test_deps_git_url_that_cannot_be_reached_fails_clearly(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"packages.yml": f"packages:\n  - git: file://{tmp_path}/nowhere.git\n"
                                                 "    revision: main\n"})
    with pytest.raises(ConfigError, match="could not be cloned at main") as exc:
        install(root)
    assert exc.value.line == 2 and not (root / "dbt_packages" / "nowhere").exists()


def test_hub_package_not_installed_says_to_run_deps(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"packages.yml": "packages:\n  - package: dbt-labs/dbt_utils\n    version: 1.3.3\n"})
    with pytest.raises(ConfigError, match="'dbt-labs/dbt_utils' is not installed in dbt_packages/; run `batchflow deps`"):
        load_packages(root)
    with pytest.raises(ConfigError, match="deps installs `local:` and `git:` entries only"):
        install(root)


def test_a_source_reading_a_seed_table_waits_for_the_seed(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {
        "dbt_project.yml": "name: ctx\nprofile: ctx\nseeds:\n  ctx:\n    +schema: raw\n",
        "macros/names.sql": ("{% macro generate_schema_name(custom_schema_name, node) %}"
                             "{{ custom_schema_name or target.schema }}{% endmacro %}"),
        "seeds/raw_s.csv": "a\n1\n",
        "models/src.yml": "version: 2\nsources:\n  - name: raw\n    tables:\n      - name: raw_s\n",
        "models/m.sql": "select * from {{ source('raw', 'raw_s') }}"})
    manifest = compile_root(root)
    assert str(manifest.nodes["raw_s"].relation) == "raw.raw_s"
    assert manifest.nodes["source:raw.raw_s"].depends_on == ["raw_s"]


@pytest.mark.e2e
def test_deps_command_installs_and_reports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "dbt_project.yml").write_text("name: pkg\n")
    root = make(tmp_path / "p", {"packages.yml": f"packages:\n  - local: {pkg}\n"})
    result = cli(root, "deps")
    assert result.returncode == 0 and "linked pkg" in result.stdout, result.stdout + result.stderr
    broken = make(tmp_path / "q", {"packages.yml": f"packages:\n  - git: file://{tmp_path}/none.git\n"})
    result = cli(broken, "deps")
    assert result.returncode == 2 and "could not be cloned" in result.stderr


def test_failures_stay_with_their_model_when_keep_going(tmp_path: Path) -> None:
    from batchflow.adapters import open_warehouse
    from batchflow.runner import RunOptions, Runner, SilentReporter

    root = make(tmp_path / "p", {
        "models/bad.sql": "select {{ not_a_macro() }}",
        "models/unparsable.sql": "select from from",
        "models/child.sql": "select * from {{ ref('bad') }}",
        "models/good.sql": "{{ config(materialized='table') }} select 1 as x"})
    project = load_project(root)
    target = load_profile(project, root)
    with pytest.raises(BatchflowError, match="bad.sql"):  # the default stays strict
        Compiler(project, target, partial_parse=False).compile()
    compiler = Compiler(project, target, partial_parse=False)
    manifest = compiler.compile(keep_going=True)
    assert sorted(manifest.errors) == ["bad", "unparsable"]
    assert manifest.errors["unparsable"].path == "models/unparsable.sql"
    assert manifest.nodes["child"].depends_on == ["bad"] and "not compiled" in manifest.nodes["bad"].compiled_sql
    warehouse = open_warehouse(target, project)
    try:
        results = Runner(manifest, compiler, warehouse, lambda: None, SilentReporter(),  # type: ignore[arg-type]
                         RunOptions(threads=2)).run(set(project.models))
    finally:
        warehouse.close()
    status = {r.name: r.status for r in results}
    assert status == {"bad": "error", "unparsable": "error", "child": "skipped", "good": "success"}


def test_dbt_utils_relation_macros_take_ref_and_query_at_build(tmp_path: Path) -> None:
    """dbt_utils.star / get_column_values check `ref()` is a Relation (a mapping with metadata), read its
    columns and values from the warehouse when built, and pivot on them."""
    from tests.tools.dbt_figures import SHARED

    from batchflow import api

    root = make(tmp_path / "p", {
        "packages.yml": f"packages:\n  - local: {SHARED / 'packages' / 'dbt_utils'}\n",
        "models/base.sql": "{{ config(materialized='table') }} select 'a' as k, 1 as v union all select 'b', 2",
        "models/pivot.sql": (
            "{% set ks = dbt_utils.get_column_values(table=ref('base'), column='k', order_by='k') %}\n"
            "{{ config(materialized='table') }}\n"
            "select {{ dbt_utils.star(from=ref('base'), except=['v']) }}, "
            "{{ dbt_utils.pivot('k', ks, agg='sum', then_value='v') }} from {{ ref('base') }} group by 1")})
    report = api.build(root)
    assert report.exit_code == 0, [(r.name, r.message) for r in report.results]
    import duckdb

    con = duckdb.connect(str(root / "target/ctx.duckdb"), read_only=True)
    try:
        assert con.execute("select * from main.pivot order by k").fetchall() == [("a", 1, 0), ("b", 0, 2)]
    finally:
        con.close()
