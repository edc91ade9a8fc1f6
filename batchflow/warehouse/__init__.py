"""Warehouse adapters: DuckDB (local target) and BigQuery (production), behind `base.Warehouse`."""
