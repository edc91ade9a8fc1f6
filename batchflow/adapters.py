"""Opening the warehouse adapter and batch backend a target names. The one place that knows
every concrete adapter; heavy client libraries are imported only for the target in use."""

from __future__ import annotations

from pathlib import Path

from batchflow.batch.base import BatchBackend
from batchflow.errors import ConfigError
from batchflow.project import Project, Target
from batchflow.warehouse.base import Warehouse


def open_warehouse(target: Target, project: Project) -> Warehouse:
    """The warehouse of `target` (DuckDB file or BigQuery dataset)."""
    if target.type == "duckdb":
        from batchflow.warehouse.duckdb import DuckDBWarehouse

        path = target.settings.get("path") or str(project.target_path / "batchflow.duckdb")
        if path != ":memory:" and not Path(path).is_absolute():
            path = str(project.root / path)
        return DuckDBWarehouse(path, schema=target.schema, memory_limit=target.settings.get("memory_limit"))
    raise ConfigError(
        f"target {target.name!r} has type {target.type!r}, which this version cannot run yet; "
        "use a duckdb target",
        target.profiles_file,
    )


def open_backend(target: Target, warehouse: Warehouse) -> BatchBackend:
    """The batch backend of `target` (`batch.backend`: local or vertex)."""
    config = dict(target.batch)
    backend = config.get("backend", "local" if target.type == "duckdb" else "vertex")
    if backend == "local":
        from batchflow.batch.local import LocalBackend
        from batchflow.batch.providers import make_provider

        config.setdefault("provider", "mock")
        return LocalBackend(
            warehouse,
            make_provider(config),
            concurrency=int(config.get("concurrency", 4)),
            chunk_size=int(config.get("chunk_size", 5_000)),
        )
    raise ConfigError(
        f"batch backend {backend!r} of target {target.name!r} is not available; choose 'local'",
        target.profiles_file,
    )
