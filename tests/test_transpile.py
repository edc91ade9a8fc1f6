"""Golden transpile fixtures (tests/fixtures/transpile/*.sql): SQL as written in the project's dialect
in, what the warehouse runs out; one file per case, so a new case is a new file.

Each file: a first line `-- <written dialect> -> <target>`, the model SQL, a line `-- expected`, the SQL
the target runs and, optionally, a line `-- rows` and the rows DuckDB returns for it as JSON (dates,
timestamps and decimals as text), which checks the meaning as well as the text. The SQL goes through
the compiler's transpile step (batchflow.compile_steps.transpile) and, for a DuckDB target, the DuckDB
adapter's `sql.to_duckdb`. `BATCHFLOW_UPDATE_GOLDEN=1` rewrites the expected SQL (review the diff)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from batchflow import sql as sqlmod
from batchflow.compile_steps import SqlUnit, transpile
from batchflow.warehouse.duckdb_functions import install

CASES = Path(__file__).parent / "fixtures" / "transpile"
UPDATE = os.environ.get("BATCHFLOW_UPDATE_GOLDEN") == "1"


def parse_case(text: str) -> tuple[str, str, str, str, Any]:
    """(written dialect, target, source SQL, expected SQL, expected rows or None) of one fixture file."""
    header, rest = text.split("\n", 1)
    read, write = (part.strip() for part in header.removeprefix("--").split("->"))
    source, _, tail = rest.partition("-- expected\n")
    expected, _, rows = tail.partition("-- rows\n")
    return read, write, source.strip(), expected.strip(), json.loads(rows) if rows.strip() else None


def what_the_target_runs(read: str, write: str, source: str) -> str:
    done = transpile(SqlUnit(source, dialect=read, writes=write)).sql
    return sqlmod.to_duckdb(done) if write == "duckdb" else done


def plain(value: Any) -> Any:
    """A DuckDB value as the fixtures write it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return str(value)


@pytest.mark.parametrize("case", sorted(CASES.glob("*.sql")), ids=lambda p: p.stem)
def test_golden_transpile(case: Path) -> None:
    read, write, source, expected, rows = parse_case(case.read_text())
    out = what_the_target_runs(read, write, source).strip()
    if UPDATE:
        rows_part = "" if rows is None else "-- rows\n" + json.dumps(rows) + "\n"
        case.write_text(f"-- {read} -> {write}\n{source}\n-- expected\n{out}\n{rows_part}")
        expected = out
    assert out == expected
    if rows is not None:
        assert write == "duckdb", "rows are checked on DuckDB only"
        con = duckdb.connect()
        install(con)
        assert [plain(list(r)) for r in con.execute(out).fetchall()] == rows


def test_each_case_is_one_file_with_a_header_and_an_expectation() -> None:
    cases = sorted(CASES.glob("*.sql"))
    assert len(cases) >= 8
    for case in cases:
        read, write, source, expected, _ = parse_case(case.read_text())
        assert read in ("bigquery", "duckdb") and write in ("bigquery", "duckdb"), case.name
        assert source and expected, case.name
