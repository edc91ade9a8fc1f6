"""Failures stay local, as in dbt: a model that fails to render or parse fails alone, what reads it is
skipped, unrelated models build; configuration errors of the project still stop everything (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchflow import api
from batchflow.errors import CompileError, ConfigError
from tests.conftest import CLI, write

MODELS = {
    "models/bad.sql": "select 1 as a,\n  {{ not_a_macro() }} as b\n",  # fails to render (line 2)
    "models/unparsable.sql": "{{ config(materialized='table') }}\nselect 1 as a\nfrom from\n",  # fails to parse
    "models/child.sql": "select * from {{ ref('bad') }}",
    "models/grandchild.sql": "select * from {{ ref('child') }}",
    "models/broken_eph.sql": "select {{ nope }} as v",  # ephemeral (models/eph.yml): inlined, not built
    "models/eph.yml": "version: 2\nmodels:\n  - name: broken_eph\n    config: {materialized: ephemeral}\n",
    "models/reads_eph.sql": "select * from {{ ref('broken_eph') }}",
    "models/good.sql": "{{ config(materialized='table') }} select 1 as x",
    "models/good_child.sql": "select x + 1 as y from {{ ref('good') }}",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    write(root, "dbt_project.yml", "name: fails\nprofile: fails\n")
    write(root, "profiles.yml", "fails:\n  target: dev\n  outputs:\n    dev: {type: duckdb, path: target/f.duckdb, "
                                "schema: main}\n")
    for rel, text in MODELS.items():
        write(root, rel, text)
    return root


def _status(report: api.RunReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_ls_lists_every_model_and_warns_with_file_and_line(project: Path) -> None:
    warnings: list = []
    names = [n.name for n in api.ls(project, on_warnings=warnings.extend)]
    assert set(names) == {Path(p).stem for p in MODELS if p.endswith(".sql")}
    texts = [str(w) for w in warnings]
    assert any(t.startswith("models/bad.sql:2: model 'bad' did not compile") and "not_a_macro" in t for t in texts)
    assert any(t.startswith("models/unparsable.sql:3: model 'unparsable' did not compile") for t in texts)
    assert any(t.startswith("models/broken_eph.sql:1:") for t in texts)


def test_run_of_unrelated_models_succeeds(project: Path) -> None:
    warnings: list = []
    report = api.run(project, select=["good+"], on_warnings=warnings.extend)
    assert _status(report) == {"good": "success", "good_child": "success"}
    assert report.exit_code == 0
    assert any("models/bad.sql:2" in str(w) for w in warnings)  # not selected: a warning, not an error


def test_build_everything_fails_the_broken_models_alone(project: Path) -> None:
    warnings: list = []
    report = api.build(project, on_warnings=warnings.extend)
    assert _status(report) == {
        "bad": "error", "unparsable": "error", "broken_eph": "error", "reads_eph": "skipped",
        "child": "skipped", "grandchild": "skipped", "good": "success", "good_child": "success"}
    assert report.exit_code == 1
    by_name = {r.name: r for r in report.results}
    assert (by_name["bad"].path, by_name["bad"].line) == ("models/bad.sql", 2)
    assert "'not_a_macro' is undefined" in by_name["bad"].message and "Traceback" not in by_name["bad"].message
    assert (by_name["unparsable"].path, by_name["unparsable"].line) == ("models/unparsable.sql", 3)
    assert "'nope' is undefined" in by_name["broken_eph"].message
    assert by_name["reads_eph"].message == "skipped: upstream broken_eph did not succeed"
    assert by_name["child"].message == "skipped: upstream bad did not succeed"
    assert not any("'bad' did not compile" in str(w) for w in warnings)  # selected: reported once, as its error
    assert not (project / "target" / "run_results.json").read_text().count("Traceback")


def test_compile_reports_the_broken_models_and_writes_the_rest(project: Path) -> None:
    report = api.compile_project(project)
    assert {name for name, _ in report.errors} == {"bad", "broken_eph", "unparsable", "reads_eph"}
    assert not report.ok
    assert {n.name for n in report.nodes} == {"child", "grandchild", "good", "good_child"}
    assert "good_child" in {p.stem for p in (project / "target" / "compiled").rglob("*.sql")}
    errors = dict(report.errors)
    assert "inlines ephemeral model(s) that failed to compile: broken_eph" in errors["reads_eph"].message
    assert isinstance(errors["bad"], CompileError) and errors["bad"].location() == "models/bad.sql:2"
    selected = api.compile_project(project, select=["good+"])
    assert selected.ok and [n.name for n in selected.nodes] == ["good", "good_child"]


def test_show_of_a_broken_model_is_its_error(project: Path) -> None:
    with pytest.raises(CompileError, match="not_a_macro"):
        api.show("bad", project)


@pytest.mark.parametrize("rel, text, where", [
    ("dbt_project.yml", "name: fails\nprofile: fails\nmodels:\n  fails:\n    +materialzed: table\n",
     "dbt_project.yml:5"),
    ("models/s.yml", "version: 2\nmodels:\n  - name: good\n    colums: []\n", "models/s.yml:4"),
    ("models/good.sql", "{{ config(materialzed='table') }} select 1 as x", "models/good.sql:1"),
], ids=["project-file", "schema-yml", "config-call"])
def test_configuration_errors_still_stop_everything(project: Path, rel: str, text: str, where: str) -> None:
    write(project, rel, text)
    with pytest.raises(ConfigError) as caught:
        api.run(project, select=["good_child"])
    assert where in str(caught.value)
    assert not (project / "target" / "f.duckdb").exists()  # nothing ran


def test_cli_exit_codes(project: Path) -> None:
    cli = CLI(project)
    listed = cli("ls")
    assert listed.exit_code == 0 and "good_child" in listed.stdout
    assert "models/bad.sql:2: model 'bad' did not compile" in listed.stderr
    unrelated = cli("run", "-s", "good+")
    assert unrelated.exit_code == 0, unrelated.stdout + unrelated.stderr
    everything = cli("build")
    assert everything.exit_code == 1
    out = everything.stdout + everything.stderr
    assert "models/bad.sql:2: UndefinedError: 'not_a_macro' is undefined" in out
    assert "SKIP" in out and "Traceback" not in out
    compiled = cli("compile")
    assert compiled.exit_code == 1 and "models/unparsable.sql:3" in compiled.stderr
    write(project, "dbt_project.yml", "name: fails\nprofile: fails\nmodels:\n  fails:\n    +materialzed: table\n")
    assert cli("ls").exit_code == 2
    assert cli("run", "-s", "good").exit_code == 2
