"""Shared fixtures: a copy of the example project, and a helper to run the CLI in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from batchflow.cli import app

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FILES = ("batchflow_project.yml", "profiles.yml", "models", "macros", "seeds", "data")


@pytest.fixture
def example_project(tmp_path: Path) -> Path:
    """The repository's example project, copied so a test may change it."""
    dest = tmp_path / "project"
    dest.mkdir()
    for name in EXAMPLE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy(src, dest / name)
    return dest


class CLI:
    """Runs `batchflow ...` in-process against one project folder."""

    def __init__(self, project: Path):
        self.project = project
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Any:
        result = self.runner.invoke(app, [*args, "--project-dir", str(self.project)], catch_exceptions=False)
        return result

    def run_results(self) -> dict[str, Any]:
        return json.loads((self.project / "target" / "run_results.json").read_text())

    def query(self, sql: str) -> list[tuple]:
        con = duckdb.connect(str(self.project / "target" / "batchflow.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture
def cli(example_project: Path) -> CLI:
    """A CLI bound to a fresh copy of the example project."""
    return CLI(example_project)


def write(root: Path, rel: str, text: str) -> Path:
    """Write a file under `root`, creating folders."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
