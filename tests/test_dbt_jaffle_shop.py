"""jaffle-shop (../shared/dbt/jaffle-shop, unedited; its packages.yml pointed at ../shared/dbt/packages) seeds
and builds on the DuckDB target, and every table equals dbt-duckdb's: row count, columns and a checksum of
the sorted rows, against the figures dbt-core 1.11 produced (tests/tools/dbt_figures.py records them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.dbt_figures import SHARED, batchflow_copy, table_figures

FIGURES = Path(__file__).parent / "fixtures" / "dbt" / "jaffle_shop_figures.json"


@pytest.fixture
def jaffle(tmp_path: Path) -> Path:
    return batchflow_copy(tmp_path)


@pytest.mark.e2e
def test_jaffle_shop_builds_the_tables_dbt_duckdb_builds(jaffle: Path) -> None:
    for name in ("models", "macros", "seeds", "dbt_project.yml"):  # zero edits: the project is dbt's own
        assert not subprocess.run(["diff", "-r", str(SHARED / "jaffle-shop" / name), str(jaffle / name)]).returncode
    env = {**os.environ, "TZ": "UTC"}  # seeds load timestamps as UTC instants (see dbt_figures._text)
    result = subprocess.run([sys.executable, "-m", "batchflow.cli", "build", "--project-dir", str(jaffle),
                             "--vars", "{load_source_data: true}"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = json.loads(FIGURES.read_text())
    ours = table_figures(jaffle.parent / "jaffle.duckdb", ["main", "raw"])
    assert sorted(ours) == sorted(expected["tables"])
    for table, figures in expected["tables"].items():
        assert ours[table]["rows"] == figures["rows"], table
        assert ours[table]["columns"] == figures["columns"], table
        if table.split(".")[-1] not in expected["date_dependent"]:
            assert ours[table]["checksum"] == figures["checksum"], table
