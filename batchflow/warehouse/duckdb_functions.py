"""DuckDB functions standing in for BigQuery functions (placeholder until the full version lands)."""

from __future__ import annotations


def install(conn) -> None:  # noqa: ANN001 - a duckdb connection
    """Register the shims on a connection."""
