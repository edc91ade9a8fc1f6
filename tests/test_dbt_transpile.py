"""Golden transpile fixtures (tests/fixtures/transpile/*.sql): the written dialect to what the warehouse runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchflow import sql as sqlmod

CASES = Path(__file__).parent / "fixtures" / "transpile"
UPDATE = os.environ.get("BATCHFLOW_UPDATE_GOLDEN") == "1"


def transpile(read: str, write: str, text: str) -> str:
    if write == "duckdb":
        return sqlmod.to_duckdb(sqlmod.for_target(text, read, "duckdb"))
    return sqlmod.for_target(text, read, write)


@pytest.mark.parametrize("case", sorted(CASES.glob("*.sql")), ids=lambda p: p.stem)
def test_golden_transpile(case: Path) -> None:
    header, rest = case.read_text().split("\n", 1)
    read, write = (part.strip() for part in header.removeprefix("--").split("->"))
    source, _, expected = rest.partition("-- expected\n")
    out = transpile(read, write, source.strip())
    if UPDATE:
        case.write_text(f"{header}\n{source.strip()}\n-- expected\n{out.strip()}\n")
        expected = out
    assert out.strip() == expected.strip()
