"""Reading a batchflow project from disk: project file, profiles, models, macros, sources, seeds, yml docs.

(Loader implementation in progress; the dataclasses below are the contract the compiler relies on.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ColumnDoc:
    """A documented column with its data tests (e.g. ["not_null", {"accepted_values": {...}}])."""

    name: str
    description: str = ""
    data_type: str | None = None
    tests: list[Any] = field(default_factory=list)


@dataclass
class ModelFile:
    """A `models/**/*.sql` file before compiling."""

    name: str  # file stem, unique across the project
    path: Path  # relative to the project root, e.g. models/staging/stg_reviews.sql
    abs_path: Path
    raw_sql: str
    fqn: list[str]  # [project, *subfolders, name], used for `models:` config blocks and path: selection
    config: dict[str, Any]  # merged from batchflow_project.yml `models:` blocks and the model's yml entry
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)
    yml_path: Path | None = None  # the yml file that documents this model, if any


@dataclass
class Seed:
    """A `seeds/*.csv` file."""

    name: str
    path: Path  # relative to the project root
    abs_path: Path
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)


@dataclass
class SourceTable:
    """A table declared under `sources:` in a models yml file."""

    source_name: str
    name: str
    schema: str  # dataset (defaults to the source name)
    database: str | None  # BigQuery project; None means the target's
    identifier: str  # physical table name (defaults to name)
    sample: Path | None  # absolute path of a CSV that stands in for the table on the local target
    yml_path: Path
    line: int
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)


@dataclass
class Project:
    """Everything read from the project directory."""

    name: str
    root: Path
    project_file: Path
    profile: str
    target_path: Path  # absolute, default <root>/target
    vars: dict[str, Any]
    models: dict[str, ModelFile]
    seeds: dict[str, Seed]
    sources: dict[tuple[str, str], SourceTable]
    macro_files: list[Path]  # absolute paths of the project's macros/*.sql
    batch_defaults: dict[str, Any] = field(default_factory=dict)  # `batch:` block of the project file


@dataclass
class Target:
    """One output of profiles.yml: where models are built and which batch backend answers requests."""

    name: str  # e.g. "local", "prod"
    profile: str
    type: str  # "duckdb" | "bigquery"
    schema: str  # DuckDB schema / BigQuery dataset for models
    database: str | None = None  # BigQuery project; None on DuckDB
    threads: int = 4
    settings: dict[str, Any] = field(default_factory=dict)  # the whole target block, env_var() resolved
    batch: dict[str, Any] = field(default_factory=dict)  # the target's `batch:` block (backend, provider, ...)
    profiles_file: Path | None = None
