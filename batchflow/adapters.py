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
    if target.type == "bigquery":
        from batchflow.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse.from_target(target)
    raise ConfigError(f"target {target.name!r} has unknown type {target.type!r}", target.profiles_file)


def backend_name(target: Target, online: bool = False) -> str:
    """Which backend answers this target's batch models: `online` with --online, else `batch.backend`."""
    return "online" if online else str(target.batch.get("backend") or ("local" if target.type == "duckdb" else "vertex"))


def open_backend(target: Target, warehouse: Warehouse, online: bool = False) -> BatchBackend:
    """The batch backend of `target` (`batch.backend`: local, vertex or online); `online` (--online)
    answers every request at once instead, with the target's `online:` options."""
    config = dict(target.batch)
    backend = backend_name(target, online)
    if backend == "online":
        return _online_backend(target, config, warehouse)
    if backend == "local":
        from batchflow.batch.local import LocalBackend
        from batchflow.batch.providers import make_provider

        config.setdefault("provider", "mock")
        return LocalBackend(
            warehouse,
            make_provider(config),
            concurrency=int(config.get("concurrency", 4)),
            chunk_size=int(config.get("chunk_size", 5_000)),
            processes=int(config.get("processes", 0)),
        )
    if backend == "vertex":
        return _vertex_backend(target, config)
    raise ConfigError(
        f"batch backend {backend!r} of target {target.name!r} is unknown; choose 'local', 'vertex' or 'online'",
        target.profiles_file,
    )


def _vertex_backend(target: Target, config: dict) -> BatchBackend:
    """Vertex AI batch jobs in the target's project and region (the job must sit in the region of
    its input and output datasets)."""
    from batchflow.batch.vertex import VertexBackend

    project = config.get("project") or target.database
    location = config.get("location") or target.settings.get("location")
    if not project or not location:
        raise ConfigError(f"target {target.name!r}: the vertex backend needs a project and `location:`",
                          target.profiles_file)
    dataset_location = target.settings.get("location")
    if dataset_location and str(dataset_location).lower() != str(location).lower():
        raise ConfigError(
            f"target {target.name!r}: batch location {location} differs from the dataset location "
            f"{dataset_location}; Vertex batch jobs must run in the region of their BigQuery tables",
            target.profiles_file,
        )
    credentials = None
    if config.get("access_token"):  # a fixed bearer token: for emulators and short-lived tokens
        from google.oauth2.credentials import Credentials

        credentials = Credentials(token=str(config["access_token"]))
    return VertexBackend(
        str(project),
        str(location),
        credentials=credentials,
        base_url=config.get("base_url"),
        api_version=config.get("api_version"),
        poll_interval=float(config.get("poll_interval", 30.0)),
    )


def _online_backend(target: Target, config: dict, warehouse: Warehouse) -> BatchBackend:
    """Requests answered at once by google-genai. A `backend: online` block holds the options itself;
    otherwise its `online:` mapping does, over what a vertex target already says (project, location,
    token, host: the same service answers batch jobs and online calls)."""
    from batchflow.batch.online import GenaiAnswerer, OnlineBackend, online_options

    if config.get("backend") == "online":
        settings = {k: v for k, v in config.items() if k not in ("backend", "provider")}
    else:
        settings = {}
        if config.get("backend", "vertex" if target.type == "bigquery" else "local") == "vertex":
            settings = {"project": config.get("project") or target.database,
                        "location": config.get("location") or target.settings.get("location"),
                        **{k: config[k] for k in ("access_token", "base_url", "api_version") if config.get(k)}}
            settings = {k: v for k, v in settings.items() if v}
        settings.update(config.get("online") or {})
    options = online_options(settings, where=f"target {target.name!r} ({target.profiles_file})")
    return OnlineBackend(warehouse, GenaiAnswerer(options))
