"""Golden compile fixtures (tests/fixtures/compile/<case>/): dbt's Jinja context, packages, dispatch, the
written dialect and rendering in yml, each case a project in and compiled SQL out."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from batchflow.compiler import Compiler
from batchflow.project import load_profile, load_project

CASES = Path(__file__).parent / "fixtures" / "compile"
UPDATE = os.environ.get("BATCHFLOW_UPDATE_GOLDEN") == "1"


def compile_case(case: Path, tmp_path: Path) -> dict[str, str]:
    """Copy the case to tmp_path, add a project file and a DuckDB profile, compile; {model: compiled SQL}."""
    root = tmp_path / case.name
    shutil.copytree(case, root, ignore=shutil.ignore_patterns("expected", "case.yml"))
    settings = yaml.safe_load((case / "case.yml").read_text()) if (case / "case.yml").is_file() else {}
    if not (root / "dbt_project.yml").is_file():
        (root / "dbt_project.yml").write_text(f"name: {case.name}\nprofile: {case.name}\n")
    dialect = f"      dialect: {settings['dialect']}\n" if settings.get("dialect") else ""
    (root / "profiles.yml").write_text(
        f"{case.name}:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: ':memory:'\n"
        f"      schema: main\n{dialect}")
    project = load_project(root, settings.get("vars"))
    target = load_profile(project, root)
    manifest = Compiler(project, target, partial_parse=False).compile()
    return {n.name: n.compiled_sql for n in manifest.nodes.values() if n.resource_type == "model"}


@pytest.mark.parametrize("case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_golden_compile(case: Path, tmp_path: Path) -> None:
    compiled = compile_case(case, tmp_path)
    expected_dir = case / "expected"
    if UPDATE:
        shutil.rmtree(expected_dir, ignore_errors=True)
        expected_dir.mkdir()
        for name, sql in compiled.items():
            (expected_dir / f"{name}.sql").write_text(sql.rstrip() + "\n")
    expected = {p.stem: p.read_text() for p in expected_dir.glob("*.sql")}
    assert sorted(compiled) == sorted(expected)
    for name, sql in compiled.items():
        assert sql.rstrip() + "\n" == expected[name], name
