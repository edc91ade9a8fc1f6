"""SQL layer (placeholder until the full version lands): BigQuery SQL parsing and DuckDB transpiling."""

from __future__ import annotations

import sqlglot


def to_duckdb(sql: str) -> str:
    """Transpile one BigQuery statement to DuckDB."""
    return sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]
