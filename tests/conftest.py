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
from batchflow.warehouse.duckdb import DuckDBWarehouse
from batchflow.warehouse.duckdb_functions import install

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FILES = ("batchflow_project.yml", "profiles.yml", "models", "macros", "seeds", "data")


#: The example's embedding model and the mart reading it: most tests count the review model's
#: Gemini jobs, so the copy leaves these out (`enabled=false`) unless the test is marked
#: `@pytest.mark.example_embeddings`.
EMBEDDING_MODELS = ("models/embeddings/review_embeddings.sql", "models/marts/similar_reviews.sql")


def disable_embeddings(project: Path) -> None:
    """Leave the example's embedding model and its mart out of a copy of the example."""
    for rel in EMBEDDING_MODELS:
        path = project / rel
        path.write_text("{{ config(enabled=false) }}\n" + (REPO / rel).read_text())


def restore_embeddings(project: Path) -> None:
    """Put the example's embedding model and its mart back, as in the repository."""
    for rel in EMBEDDING_MODELS:
        (project / rel).write_text((REPO / rel).read_text())


@pytest.fixture
def example_project(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The repository's example project, copied so a test may change it (without its embedding
    models unless the test is marked `example_embeddings`)."""
    dest = tmp_path / "project"
    dest.mkdir()
    for name in EXAMPLE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy(src, dest / name)
    if request.node.get_closest_marker("example_embeddings") is None:
        disable_embeddings(dest)
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
        """run_results.json (dbt's schema) with each result as batchflow reports it (name, status, batch, ...)."""
        from batchflow.artifacts import batchflow_results

        data = json.loads((self.project / "target" / "run_results.json").read_text())
        return {**data, "results": batchflow_results(data)}

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


@pytest.fixture
def conn():
    """An in-memory DuckDB connection with batchflow's SQL functions and macros installed."""
    c = duckdb.connect()
    install(c)
    yield c
    c.close()


@pytest.fixture
def wh(tmp_path):
    """A DuckDB warehouse in a file of the test's own (modules that need another kind define their own `wh`)."""
    w = DuckDBWarehouse(tmp_path / "wh.duckdb")
    yield w
    w.close()
