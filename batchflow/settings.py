"""Every setting batchflow reads, declared once: type, default, allowed values and a one-line doc.

Each section of a configuration file is a pydantic model below (`SECTIONS` names them). Three things are
generated from these declarations, so the checks and the docs cannot drift apart:

- `settings_spec.json` next to this file: the same declarations as plain data. The loader
  (`batchflow.project.check_section`) validates every key and value of every file against it where it was
  written, with file:line and a did-you-mean. It is data, not these classes, because `batchflow ls` must
  start without importing pydantic (~0.1 s; tests/test_cli_startup.py holds that line).
- the configuration reference in README.md, between `<!-- settings:begin -->` and `<!-- settings:end -->`.
- `BatchSettings`, the checked settings of one batch model, which the batch lifecycle reads.

Keys dbt knows but batchflow does not act on are listed per section in `DBT_KEYS` (with what batchflow does
instead): they load with a warning naming the key. A few purely descriptive dbt keys (`INERT`) load silently.
Any other key is an error. Regenerate after an edit: `python -m batchflow.settings --write`.
"""

from __future__ import annotations

import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchflow.errors import ConfigError

SPEC_FILE = Path(__file__).with_name("settings_spec.json")
README_BEGIN = "<!-- settings:begin -->"
README_END = "<!-- settings:end -->"

VERTEX_MAX_ROWS_PER_JOB = 200_000
DEFAULT_OUTPUT_TOKENS = 256
MATERIALIZATIONS = ("view", "table", "incremental", "ephemeral", "batch")
BLOCK_REASONS = ("RECITATION", "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MAX_TOKENS", "OTHER")
MOCK_OUTCOMES = ("recitation", "safety", "prompt_blocked", "max_tokens", "row_error", "transient_error")
PROVIDERS = ("mock", "openai")
BACKENDS = ("local", "vertex", "online")
ONLINE_APIS = ("vertex", "gemini")
ONLINE_ANSWERS = ("reuse", "ignore")
BIGQUERY_METHODS = ("oauth", "service-account", "service-account-json", "oauth-secrets", "none")
DATA_TESTS = ("not_null", "unique", "accepted_values", "relationships")


class _Section(BaseModel):
    """A mapping of a configuration file; unknown keys are the loader's business (see module doc)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _f(default: Any, doc: str, **constraints: Any) -> Any:
    """A declared setting: its default, its one-line doc and its bounds (ge, le, gt)."""
    return Field(default, description=doc, **constraints)


PositiveInt = Annotated[int, annotated_types.Ge(1)]
StrOrList = Union[str, list[str]]
#: a hook: SQL text, or a list of texts and dbt's `{sql: ..., transaction: ...}` mappings
Hooks = Union[str, list[Union[str, dict[str, Any]]]]
_HOOK_DOC = "SQL run against the warehouse {} the model is built, rendered with its context ({{{{ this }}}}); accumulates down the folders"

# ---- batch models -----------------------------------------------------------------------------------------


class BatchModelConfig(_Section):
    """A batch model's config() keys (also allowed as `+key` folder configs, in yml `config:`, and as
    project-wide defaults under `batch:` in the project file)."""

    model: str | None = _f(None, "Gemini model that answers the requests, e.g. `gemini-2.5-flash` (required)")
    key: StrOrList | None = _f(None, "column(s) of the SELECT that identify a row in messages and results")
    max_rows_per_job: int = _f(100_000, "rows per batch job (Vertex allows 200,000)", ge=1,
                               le=VERTEX_MAX_ROWS_PER_JOB)
    max_concurrent_jobs: int = _f(4, "batch jobs of this model running at once", ge=1)
    max_attempts: int = _f(3, "times a row with a transient error is sent within one run", ge=1)
    invalid_rows: Literal["fail", "skip"] = _f("fail", "invalid requests fail the model, or are skipped")
    retry_on: Union[Literal[BLOCK_REASONS], list[Literal[BLOCK_REASONS]]] | None = Field(  # type: ignore[valid-type]
        None, description="block/finish reasons whose rows are resent (to `fallback_model` when set); any case",
        json_schema_extra={"case_insensitive": True})
    fallback_model: str | None = _f(None, "model that answers rows resent for a `retry_on` reason")
    max_requests: int | None = _f(None, "refuse to submit more requests than this in one run", ge=0)
    max_estimated_cost: float | None = _f(None, "refuse to submit when the estimate exceeds this (USD)", ge=0)
    estimated_output_tokens: int = _f(DEFAULT_OUTPUT_TOKENS,
                                      "output tokens per request for estimates without maxOutputTokens", ge=1)
    poll_interval: float | None = _f(None, "seconds between polls of running jobs (default: the backend's)", gt=0)
    online_answers: Literal[ONLINE_ANSWERS] = _f(  # type: ignore[valid-type]
        "ignore", "answers from `--online` runs: `reuse` them in batch runs, or `ignore` them (sent again as batch)")


class BatchSettings(BaseModel):
    """The checked settings of one batch model: project `batch:` defaults, then the model's config."""

    model_config = ConfigDict(frozen=False, populate_by_name=True)

    model: str
    key: list[str] = Field(default_factory=list)
    max_rows_per_job: int = Field(100_000, ge=1, le=VERTEX_MAX_ROWS_PER_JOB)
    max_concurrent_jobs: int = Field(4, ge=1)
    max_attempts: int = Field(3, ge=1)
    invalid_rows: Literal["fail", "skip"] = "fail"
    retry_on: list[Literal[BLOCK_REASONS]] = Field(default_factory=list)  # type: ignore[valid-type]
    fallback_model: str | None = None
    max_requests: int | None = Field(None, ge=0)
    max_estimated_cost: float | None = Field(None, ge=0)
    output_tokens: int = Field(DEFAULT_OUTPUT_TOKENS, ge=1, alias="estimated_output_tokens")
    poll_interval: float | None = Field(None, gt=0)
    online_answers: Literal[ONLINE_ANSWERS] = "ignore"  # type: ignore[valid-type]

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else value

    @field_validator("retry_on", mode="before")
    @classmethod
    def _reasons(cls, value: Any) -> Any:
        value = [] if value is None else [value] if isinstance(value, str) else value
        return [str(v).upper() for v in value] if isinstance(value, list) else value

    @classmethod
    def from_config(cls, config: dict[str, Any], path: str) -> BatchSettings:
        """The settings in a model's merged `config` (other keys, e.g. `materialized`, are ignored).
        Raises ConfigError naming the key, the bad value and the allowed ones."""
        keys = set(BatchModelConfig.model_fields)
        picked = {k: v for k, v in config.items() if k in keys and v is not None}
        if not picked.get("model"):
            raise ConfigError("a batch model needs config(model='gemini-...')", path)
        try:
            return cls.model_validate(picked)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = error["loc"]
            key = "estimated_output_tokens" if loc and loc[0] == "output_tokens" else str(loc[0]) if loc else "?"
            hint = ""
            if error["type"] == "literal_error":
                close = difflib.get_close_matches(str(error["input"]).upper(), BLOCK_REASONS + ("fail", "skip") + ONLINE_ANSWERS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"`{key}:` {error['msg']} (got {config.get(key)!r}){hint}", path) from None


class Price(_Section):
    """`batch: prices: <model>:` in the project file (USD per million tokens, batch rates)."""

    input_per_million: float = _f(..., "USD per million input tokens", ge=0)
    output_per_million: float = _f(..., "USD per million output tokens", ge=0)
    online_input_per_million: float | None = _f(None, "USD per million input tokens online (`--online`; "
                                                "default: twice the batch price, Vertex's 50% batch discount)", ge=0)
    online_output_per_million: float | None = _f(None, "USD per million output tokens online (default: twice "
                                                 "the batch price)", ge=0)


class ProjectBatch(BatchModelConfig):
    """`batch:` in the project file: defaults for every batch model, prices and per-run limits."""

    prices: dict[str, Price] = _f({}, "batch prices per model name (a versioned name falls back to its family)")
    max_requests_per_run: int | None = _f(None, "refuse to submit more requests than this across one run", ge=0)
    max_estimated_cost_per_run: float | None = _f(None, "refuse to submit past this estimated cost per run (USD)",
                                                  ge=0)


# ---- project file, model and seed configs ------------------------------------------------------------------


class ProjectFile(_Section):
    """`batchflow_project.yml` (or a dbt project's `dbt_project.yml`)."""

    name: str = _f(..., "project name: letters, digits and underscores")
    profile: str | None = _f(None, "profile in profiles.yml (default: the project name)")
    model_paths: StrOrList = _f(["models"], "folders holding models and their yml files", alias="model-paths")
    macro_paths: StrOrList = _f(["macros"], "folders holding macros", alias="macro-paths")
    seed_paths: StrOrList = _f(["seeds"], "folders holding seed CSVs", alias="seed-paths")
    target_path: str = _f("target", "folder for artifacts, caches and the default DuckDB file", alias="target-path")
    vars: dict[str, Any] = _f({}, "values for var(); `vars: {<project>: {...}}` scopes them to this project")
    models: dict[str, Any] = _f({}, "folder configs: `<project>: <folder>: +<model config key>: value`")
    seeds: dict[str, Any] = _f({}, "folder configs for seeds, as under `models:`")
    snapshot_paths: StrOrList = _f(["snapshots"], "folders holding snapshots (`{% snapshot %}` blocks in .sql, "
                                   "`snapshots:` entries with `relation:` in .yml)", alias="snapshot-paths")
    snapshots: dict[str, Any] = _f({}, "folder configs for snapshots, as under `models:`")
    batch: ProjectBatch = _f({}, "defaults for every batch model, `prices:` and per-run limits")
    dialect: Literal["bigquery", "duckdb", "postgres", "snowflake", "redshift", "databricks", "spark", "trino"] = _f(
        "bigquery", "SQL dialect the models are written in: sqlglot transpiles it to the target's; "
        "`adapter.dispatch` and the `dbt.*` macros render for it (a target's `dialect:` applies when this is unset)")
    dispatch: list[dict[str, Any]] = _f([], "macro search order per namespace: `- macro_namespace: dbt_utils` "
                                        "`search_order: [my_project, dbt_utils]`")
    packages_install_path: str | None = _f("dbt_packages", "folder where `batchflow deps` installs packages",
                                    alias="packages-install-path")
    test_paths: StrOrList = _f(["tests"], "folders of singular tests (`.sql`), generic tests (`generic/`) and unit "
                               "test fixtures (`fixtures/`)", alias="test-paths")
    analysis_paths: StrOrList = _f(["analyses"], "folders of analyses: compiled to target/compiled, never run",
                                   alias="analysis-paths")
    on_run_start: Hooks | None = _f(None, "SQL run against the target before run, build, seed and test (dbt's "
                                    "context: target, var, macros)", alias="on-run-start")
    on_run_end: Hooks | None = _f(None, "SQL run after run, build, seed and test (also `results`, `schemas`)",
                                  alias="on-run-end")


class PartitionRangeConfig(_Section):
    """`range:` of an int64 `partition_by` (RANGE_BUCKET over GENERATE_ARRAY(start, end, interval))."""

    start: int = _f(..., "first value of the first partition")
    end: int = _f(..., "end of the last partition (exclusive)")
    interval: int = _f(..., "width of each partition", ge=1)


class PartitionByConfig(_Section):
    """`partition_by:` of a table or incremental model, dbt-bigquery's dictionary form."""

    field: str = _f(..., "the column to partition on")
    data_type: Literal["TIMESTAMP", "DATE", "DATETIME", "INT64"] = Field(
        "DATE", description="the column's type (any case)", json_schema_extra={"case_insensitive": True})
    granularity: Literal["HOUR", "DAY", "MONTH", "YEAR"] = Field(
        "DAY", description="partition width of a time column (any case)", json_schema_extra={"case_insensitive": True})
    range: PartitionRangeConfig | None = _f(None, "int64 partitions: `{start: 0, end: 100, interval: 10}`")
    copy_partitions: bool = _f(False, "dbt's copy-job variant of insert_overwrite: refused (batchflow merges)")
    time_ingestion_partitioning: bool = _f(False, "partition on ingestion time: refused (partition on a column)")


class PersistDocsConfig(_Section):
    """`persist_docs:` of a model: which yml descriptions are written to the warehouse."""

    relation: bool = _f(False, "the model's description becomes the table's (BigQuery) or its COMMENT (DuckDB)")
    columns: bool = _f(False, "column descriptions from yml become the columns' (BigQuery) or their COMMENTs")


class ModelConfig(BatchModelConfig):
    """A model's config: config() in its SQL, `config:` in its yml entry, `+key` folder configs.
    The batch keys apply to `materialized='batch'` models only; `unique_key` to incremental ones."""

    materialized: Literal[MATERIALIZATIONS] = _f("view", "how the model is built")  # type: ignore[valid-type]
    enabled: bool = _f(True, "false removes the model (a ref() to it is an error)")
    tags: StrOrList = _f([], "tags for `-s tag:...` (accumulate down the folders)")
    schema_: str | None = _f(None, "custom schema: the model lands in `<target schema>_<schema>`", alias="schema")
    database: str | None = _f(None, "BigQuery project of the model (default: the target's)")
    project: str | None = _f(None, "alias of `database`")
    alias: str | None = _f(None, "table/view name (default: the file name)")
    meta: dict[str, Any] = _f({}, "free-form metadata (merged down the folders)")
    docs: dict[str, Any] = _f({}, "dbt docs settings (kept in the manifest)")
    description: str | None = _f(None, "the model's description")
    unique_key: StrOrList | None = _f(None, "incremental models: merge on these columns (default: append)")
    partition_by: PartitionByConfig | None = _f(None, "BigQuery: PARTITION BY the column (truncated to the "
                                                "granularity) or RANGE_BUCKET for int64; DuckDB: not applied")
    cluster_by: StrOrList | None = _f(None, "BigQuery: CLUSTER BY these columns (at most 4); DuckDB: not applied")
    require_partition_filter: bool | None = _f(None, "BigQuery: queries must filter on the partition column")
    partition_expiration_days: float | None = _f(None, "BigQuery: partitions older than this are deleted", gt=0)
    labels: dict[str, str] = _f({}, "BigQuery table labels (merged down the folders); DuckDB: not applied")
    persist_docs: PersistDocsConfig = _f({}, "write yml descriptions: BigQuery table/column descriptions, "
                                         "DuckDB COMMENT ON")
    kms_key_name: str | None = _f(None, "BigQuery: Cloud KMS key encrypting the table; DuckDB: not applied")
    hours_to_expiration: int | None = _f(None, "BigQuery: the table expires this many hours after it is built",
                                         ge=1)
    grants: dict[str, StrOrList] = _f({}, "BigQuery: `{role: [grantee, ...]}` granted on the table or view "
                                      "after each build, e.g. `roles/bigquery.dataViewer: [user:ana@example.com]`")
    incremental_strategy: Literal["merge", "append", "insert_overwrite"] | None = _f(
        None, "incremental models: merge on unique_key (default; appends without one), append, or replace the "
        "partitions of the new rows (insert_overwrite, needs partition_by)")
    partitions: list[str] | None = _f(None, "insert_overwrite: the partitions to replace, as SQL literals "
                                      "(static); default: those the new rows fall in (dynamic)")
    pre_hook: Hooks = _f([], _HOOK_DOC.format("before"))
    pre_hook_dashed: Hooks = _f([], "dbt_project.yml spelling of `pre_hook`", alias="pre-hook")
    post_hook: Hooks = _f([], _HOOK_DOC.format("after"))
    post_hook_dashed: Hooks = _f([], "dbt_project.yml spelling of `post_hook`", alias="post-hook")
    on_schema_change: Literal["ignore", "fail", "append_new_columns", "sync_all_columns"] = _f(
        "ignore", "incremental models whose SELECT gained or lost columns: ignore, fail, add the new columns, "
        "or add and drop to match")


#: Which materializations a key of `ModelConfig` acts on (keys not listed act on every materialization).
MATERIALIZATION_KEYS: dict[str, tuple[str, ...]] = {
    **{key: ("batch",) for key in BatchModelConfig.model_fields},
    "unique_key": ("incremental",),
    **{key: ("table", "incremental") for key in ("partition_by", "cluster_by", "require_partition_filter",
                                                 "partition_expiration_days", "kms_key_name")},
    **{key: ("view", "table", "incremental") for key in ("labels", "persist_docs", "hours_to_expiration", "grants")},
    **{key: ("incremental",) for key in ("incremental_strategy", "partitions", "on_schema_change")},
}


class SeedConfig(_Section):
    """A seed's config: `+key` under `seeds:` in the project file, `config:` in its yml entry."""

    enabled: bool = _f(True, "false skips the seed")
    tags: StrOrList = _f([], "tags for `-s tag:...`")
    schema_: str | None = _f(None, "custom schema: `<target schema>_<schema>`", alias="schema")
    database: str | None = _f(None, "BigQuery project of the seed table")
    project: str | None = _f(None, "alias of `database`")
    alias: str | None = _f(None, "table name (default: the file name)")
    meta: dict[str, Any] = _f({}, "free-form metadata")
    docs: dict[str, Any] = _f({}, "dbt docs settings")
    description: str | None = _f(None, "the seed's description")
    column_types: dict[str, str] = _f({}, "`{column: type}` in the target's type names: the loaded column is cast "
                                      "to it")


class SnapshotConfig(_Section):
    """A snapshot's config (dbt 1.11): config() in its `{% snapshot %}` block, `config:` in its yml entry,
    `+key` under `snapshots:` in the project file."""

    materialized: Literal["snapshot"] = _f("snapshot", "always `snapshot`")
    enabled: bool = _f(True, "false removes the snapshot")
    tags: StrOrList = _f([], "tags for `-s tag:...`")
    unique_key: StrOrList | None = _f(None, "the column(s) identifying a row (required)")
    strategy: Literal["timestamp", "check"] | None = _f(None, "timestamp: a row changed when `updated_at` grew; "
                                                        "check: when a `check_cols` value changed (required)")
    updated_at: str | None = _f(None, "timestamp strategy: the column saying when the row changed (check: "
                                "optional, else the snapshot time)")
    check_cols: StrOrList | None = _f(None, "check strategy: `all` or the columns compared")
    hard_deletes: Literal["ignore", "invalidate", "new_record"] | None = _f(
        None, "rows gone from the source: kept current (ignore, default), closed (invalidate), or closed and a "
        "`dbt_is_deleted = 'True'` version added (new_record)")
    invalidate_hard_deletes: bool = _f(False, "dbt < 1.9's `hard_deletes: invalidate`")
    dbt_valid_to_current: str | None = _f(None, "SQL for dbt_valid_to of current rows (default NULL), e.g. "
                                          "\"date('9999-12-31')\"")
    snapshot_meta_column_names: dict[str, str] = _f({}, "renames of dbt_valid_from, dbt_valid_to, dbt_scd_id, "
                                                    "dbt_updated_at, dbt_is_deleted")
    target_schema: str | None = _f(None, "schema of the table, used as is (dbt < 1.9; default: the target's, "
                                   "with `schema`)")
    target_database: str | None = _f(None, "database (BigQuery project) of the table (dbt < 1.9)")
    schema_: str | None = _f(None, "custom schema: `<target schema>_<schema>`", alias="schema")
    database: str | None = _f(None, "BigQuery project of the table")
    alias: str | None = _f(None, "table name (default: the snapshot's name)")
    meta: dict[str, Any] = _f({}, "free-form metadata")
    docs: dict[str, Any] = _f({}, "dbt docs settings")
    description: str | None = _f(None, "the snapshot's description")


# ---- yml property files ---------------------------------------------------------------------------------------


class PropertiesFile(_Section):
    """A yml property file under a model or seed folder."""

    version: Literal[2] = _f(2, "only version 2 exists")
    models: list[dict[str, Any]] = _f([], "model entries")
    seeds: list[dict[str, Any]] = _f([], "seed entries")
    sources: list[dict[str, Any]] = _f([], "source entries")
    snapshots: list[dict[str, Any]] = _f([], "snapshot entries: `name`, `relation` (ref/source, dbt 1.9+), "
                                         "`config`, `description`, `columns`")
    unit_tests: list[dict[str, Any]] = _f([], "YAML unit tests: `name`, `model`, `given` (input, rows, format), "
                                          "`expect`, `overrides` (macros, vars, env_vars)")


class ColumnEntry(_Section):
    """A `columns:` entry of a model, seed or source table."""

    name: str = _f(..., "column name")
    description: str | None = _f(None, "the column's description")
    data_type: str | None = _f(None, "the column's type (documentation)")
    data_tests: list[Any] = _f([], "data tests of this column (`not_null`, `unique`, ...)")
    tests: list[Any] = _f([], "dbt's older name for `data_tests`")


class ModelEntry(_Section):
    """A `models:` entry of a yml file."""

    name: str = _f(..., "the model's file name without .sql")
    description: str | None = _f(None, "the model's description")
    columns: list[ColumnEntry] = _f([], "documented columns and their tests")
    config: dict[str, Any] = _f({}, "model config keys (see the model config section)")
    data_tests: list[Any] = _f([], "model-level data tests (generic tests without a column)")
    tests: list[Any] = _f([], "dbt's older name for `data_tests`")


class SeedEntry(ModelEntry):
    """A `seeds:` entry of a yml file."""


class SourceTableEntry(_Section):
    """A `tables:` entry of a source."""

    name: str = _f(..., "table name in ref-free SQL: `source('<source>', '<name>')`")
    description: str | None = _f(None, "the table's description")
    identifier: str | None = _f(None, "physical table name (default: `name`)")
    sample: str | None = _f(None, "CSV standing in for the table on the local target (or `meta: {sample:}`)")
    meta: dict[str, Any] = _f({}, "free-form metadata; `sample:` is read from here too")
    columns: list[ColumnEntry] = _f([], "documented columns and their tests")
    data_tests: list[Any] = _f([], "table-level data tests (generic tests without a column)")
    tests: list[Any] = _f([], "dbt's older name for `data_tests`")


class SourceEntry(_Section):
    """A `sources:` entry of a yml file."""

    name: str = _f(..., "source name")
    description: str | None = _f(None, "the source's description")
    schema_: str | None = _f(None, "dataset of its tables (default: the source name)", alias="schema")
    database: str | None = _f(None, "BigQuery project of its tables (default: the target's)")
    project: str | None = _f(None, "alias of `database`")
    meta: dict[str, Any] = _f({}, "free-form metadata")
    tables: list[SourceTableEntry] = _f([], "the source's tables")


class _TestConfig(_Section):
    """dbt's configs of a data test (beside its arguments, or under `config:`)."""

    config: dict[str, Any] = _f({}, "the test's configs, as the keys below")
    severity: Literal["error", "warn", "ERROR", "WARN"] = _f("error", "warn: a failure is a warning (exit 0)")
    where: str | None = _f(None, "only rows matching this SQL condition are tested")
    limit: int | None = _f(None, "count at most this many failing rows", ge=0)
    warn_if: str = _f("!= 0", "warn when the failing-row count matches (`>10`, `!= 0`)")
    error_if: str = _f("!= 0", "fail when the failing-row count matches")
    fail_calc: str = _f("count(*)", "SQL aggregate over the failing rows that warn_if/error_if compare")
    store_failures: bool | None = _f(None, "keep the failing rows in `<schema>_dbt_test__audit.<test name>`")
    store_failures_as: Literal["table", "view", "ephemeral"] | None = _f(None, "table/view: as store_failures")
    name: str | None = _f(None, "the test's name (default: dbt's generated name)")
    tags: StrOrList = _f([], "tags for `-s tag:...`")
    meta: dict[str, Any] = _f({}, "free-form metadata")
    enabled: bool = _f(True, "false: the test does not exist")
    description: str | None = _f(None, "the test's description")
    alias: str | None = _f(None, "table name of its stored failures")
    database: str | None = _f(None, "project of its stored failures")
    schema_: str | None = _f(None, "schema of its stored failures (default dbt_test__audit)", alias="schema")


class AcceptedValuesTest(_TestConfig):
    """Arguments of the `accepted_values` data test."""

    values: list[Any] = _f(..., "the allowed values")
    quote: bool = _f(True, "false: the values are SQL expressions (numbers), not quoted strings")


class RelationshipsTest(_TestConfig):
    """Arguments of the `relationships` data test."""

    to: str = _f(..., "the parent: `ref('model')`")
    field: str = _f(..., "the parent's column")


class NoArgsTest(_TestConfig):
    """Arguments of `not_null` and `unique`: none (only configs)."""


# ---- profiles.yml -----------------------------------------------------------------------------------------


class _Target(_Section):
    type: Literal["duckdb", "bigquery"] = _f(..., "warehouse of this target")
    threads: int = _f(4, "models built at once", ge=1)
    batch: dict[str, Any] = _f({}, "batch backend of this target (see the local/vertex sections)")
    dialect: Literal["bigquery", "duckdb", "postgres", "snowflake", "redshift", "databricks", "spark",
                     "trino"] | None = _f(None, "SQL dialect of the project's models when its project file has no "
                                          "`dialect:` (a dbt project is written for its profile's adapter)")


class DuckDBTarget(_Target):
    """A `type: duckdb` output of profiles.yml."""

    path: str = _f("target/batchflow.duckdb", "database file (relative to the project), or `:memory:`")
    schema_: str = _f("main", "schema for models", alias="schema")
    dataset: str | None = _f(None, "alias of `schema`")
    database: str | None = _f(None, "ignored on DuckDB (one file, one catalog); dbt-duckdb's catalog name")
    memory_limit: str | None = _f(None, "DuckDB's memory_limit, e.g. `4GB`")


class BigQueryTarget(_Target):
    """A `type: bigquery` output of profiles.yml."""

    method: Literal[BIGQUERY_METHODS] = _f(  # type: ignore[valid-type]
        "oauth", "credentials: application default (oauth), a keyfile, inline JSON, a token, or none (emulators)")
    project: str | None = _f(None, "GCP project of the dataset (or `database:`)")
    database: str | None = _f(None, "alias of `project`")
    dataset: str | None = _f(None, "dataset for models (or `schema:`); created in `location` when missing")
    schema_: str | None = _f(None, "alias of `dataset`", alias="schema")
    location: str | None = _f(None, "dataset region; batch jobs need a region, never US/EU")
    keyfile: str | None = _f(None, "service-account JSON key file (method service-account)")
    keyfile_json: dict[str, Any] | None = _f(None, "service-account key inline (method service-account-json)")
    token: str | None = _f(None, "OAuth access token (method oauth-secrets)")
    refresh_token: str | None = _f(None, "OAuth refresh token (method oauth-secrets)")
    client_id: str | None = _f(None, "OAuth client id (method oauth-secrets, with refresh_token)")
    client_secret: str | None = _f(None, "OAuth client secret (method oauth-secrets, with refresh_token)")
    token_uri: str | None = _f(None, "OAuth token URI (method oauth-secrets)")
    scopes: list[str] | None = _f(None, "OAuth scopes (default: cloud-platform)")
    api_endpoint: str | None = _f(None, "BigQuery API host, e.g. an emulator; credentials still follow `method`")
    labels: dict[str, str] = _f({}, "labels on every query job")
    use_storage_api: bool = _f(False, "download results through the BigQuery Storage Read API")


class OnlineSettings(_Section):
    """`online:` in a target's `batch:` block: who answers `--online` runs (a `backend: online` block takes
    the same keys at its top)."""

    api: Literal[ONLINE_APIS] | None = _f(  # type: ignore[valid-type]
        None, "`vertex` (project/location, application default credentials) or `gemini` (the Gemini Developer "
        "API, an API key); default: gemini when only an API key is given")
    project: str | None = _f(None, "GCP project (default: the target's vertex project, $GOOGLE_CLOUD_PROJECT)")
    location: str | None = _f(None, "Vertex AI region (default: the target's, $GOOGLE_CLOUD_LOCATION)")
    api_key: str | None = _f(None, "Gemini API key (prefer `api_key_env`)")
    api_key_env: str | None = _f(None, "environment variable holding the API key (else $GEMINI_API_KEY)")
    access_token: str | None = _f(None, "a fixed bearer token for Vertex (emulators, short-lived tokens)")
    base_url: str | None = _f(None, "API host, e.g. an emulator (default: Google's)")
    api_version: str | None = _f(None, "API version (default: google-genai's)")
    concurrency: int = _f(8, "requests in flight at once", ge=1)
    max_attempts: int = _f(5, "tries per request on 429/5xx (a Retry-After is honoured)", ge=1)
    backoff_initial: float = _f(1.0, "first retry delay in seconds (exponential, with jitter)", ge=0)
    backoff_max: float = _f(30.0, "longest retry delay in seconds", ge=0)
    timeout: float = _f(120.0, "seconds per call", gt=0)


class OnlineBatch(OnlineSettings):
    """`batch:` of a target with `backend: online`: every run answers at once, as `--online` does."""

    backend: Literal[BACKENDS] = _f("online", "who answers requests")  # type: ignore[valid-type]


class LocalBatch(_Section):
    """`batch:` of a target with `backend: local` (the default on DuckDB)."""

    backend: Literal[BACKENDS] = _f("local", "who answers requests: the local executor or Vertex AI")  # type: ignore[valid-type]
    provider: Literal[PROVIDERS] = _f("mock", "who answers the local executor's requests")  # type: ignore[valid-type]
    concurrency: int = _f(4, "chunks in flight at once", ge=1)
    chunk_size: int = _f(5_000, "rows read per chunk", ge=1)
    processes: int = _f(0, "worker processes for CPU-bound providers on jobs of 50,000+ rows (0: threads)", ge=0)
    mock: dict[str, Any] = _f({}, "options of the mock provider")
    openai: dict[str, Any] = _f({}, "options of the openai provider")
    online: OnlineSettings = _f({}, "who answers `--online` runs (Vertex AI or the Gemini API)")


class VertexBatch(_Section):
    """`batch:` of a target with `backend: vertex` (the default on BigQuery)."""

    backend: Literal[BACKENDS] = _f("vertex", "who answers requests")  # type: ignore[valid-type]
    project: str | None = _f(None, "GCP project of the jobs (default: the target's)")
    location: str | None = _f(None, "region of the jobs; must equal the dataset's")
    access_token: str | None = _f(None, "a fixed bearer token (emulators, short-lived tokens)")
    base_url: str | None = _f(None, "Vertex AI API host, e.g. an emulator")
    api_version: str | None = _f(None, "Vertex AI API version")
    poll_interval: float = _f(30.0, "seconds between polls of running jobs", gt=0)
    online: OnlineSettings = _f({}, "`--online` runs: overrides of what they take from this block")


class MockFailure(_Section):
    """One rule of `mock: failures:`: which rows fail and how."""

    outcome: Literal[MOCK_OUTCOMES] = _f(..., "what the chosen rows get")  # type: ignore[valid-type]
    when_prompt_contains: str | None = _f(None, "rows whose prompt text contains this")
    when_model: str | None = _f(None, "rows of batch jobs for this model")
    every: int | None = _f(None, "about 1 row in N, always the same ones", ge=1)
    limit: int | None = _f(None, "fire at most this many times", ge=0)


class MockProvider(_Section):
    """Options of `provider: mock` (under `mock:`)."""

    failures: list[MockFailure] = _f([], "injected failures, first matching rule wins")
    traffic_type: str = _f("ON_DEMAND", "usageMetadata.trafficType of the answers")


class OpenAIProvider(_Section):
    """Options of `provider: openai` (under `openai:`): any OpenAI-compatible chat-completions server."""

    base_url: str = _f(..., "server URL, e.g. http://127.0.0.1:11434/v1")
    model: str | None = _f(None, "model served (default: the batch model's name)")
    api_key: str | None = _f(None, "bearer token")
    api_key_env: str | None = _f(None, "environment variable holding the bearer token")
    timeout: float = _f(120.0, "seconds per HTTP request", gt=0)
    concurrency: int = _f(8, "requests in flight at once", ge=1)
    max_attempts: int = _f(4, "tries per request on 429/5xx", ge=1)
    backoff_initial: float = _f(0.5, "first retry delay in seconds", ge=0)
    backoff_max: float = _f(8.0, "longest retry delay in seconds", ge=0)
    headers: dict[str, str] = _f({}, "extra HTTP headers")


# ---- the registry -----------------------------------------------------------------------------------------

#: section id → (declaration, where it is written)
SECTIONS: dict[str, tuple[type[BaseModel], str, str]] = {
    # id: (declaration, where it is written (the README's heading), what messages call it)
    "project": (ProjectFile, "the project file (batchflow_project.yml or dbt_project.yml)", "the project file"),
    "project.batch": (ProjectBatch, "`batch:` in the project file", "`batch:`"),
    "price": (Price, "`batch: prices: <model>:` in the project file", "a `prices:` entry"),
    "model_config": (ModelConfig, "config() in a model, `config:` in its yml entry, `+key` under `models:`",
                     "the model config"),
    "model_config.partition_by": (PartitionByConfig, "`partition_by:` of a model config", "`partition_by`"),
    "model_config.partition_by.range": (PartitionRangeConfig, "`range:` of an int64 `partition_by`",
                                        "`partition_by: range`"),
    "model_config.persist_docs": (PersistDocsConfig, "`persist_docs:` of a model config", "`persist_docs`"),
    "seed_config": (SeedConfig, "`config:` of a yml seed entry, `+key` under `seeds:`", "the seed config"),
    "snapshot_config": (SnapshotConfig, "config() in a snapshot, `config:` of a yml snapshot entry, `+key` under "
                        "`snapshots:`", "the snapshot config"),
    "yml": (PropertiesFile, "a yml properties file", "a properties file"),
    "yml.model": (ModelEntry, "a `models:` entry", "a `models:` entry"),
    "yml.seed": (SeedEntry, "a `seeds:` entry", "a `seeds:` entry"),
    "yml.source": (SourceEntry, "a `sources:` entry", "a `sources:` entry"),
    "yml.source_table": (SourceTableEntry, "a source's `tables:` entry", "a `tables:` entry"),
    "yml.column": (ColumnEntry, "a `columns:` entry", "a `columns:` entry"),
    "test.accepted_values": (AcceptedValuesTest, "`accepted_values:` test arguments", "`accepted_values`"),
    "test.relationships": (RelationshipsTest, "`relationships:` test arguments", "`relationships`"),
    "test.not_null": (NoArgsTest, "`not_null:` test arguments", "`not_null`"),
    "test.unique": (NoArgsTest, "`unique:` test arguments", "`unique`"),
    "target.duckdb": (DuckDBTarget, "a `type: duckdb` output in profiles.yml", "a duckdb target"),
    "target.bigquery": (BigQueryTarget, "a `type: bigquery` output in profiles.yml", "a bigquery target"),
    "batch.local": (LocalBatch, "a target's `batch:` with `backend: local`", "a local `batch:` block"),
    "batch.vertex": (VertexBatch, "a target's `batch:` with `backend: vertex`", "a vertex `batch:` block"),
    "batch.online": (OnlineBatch, "a target's `batch:` with `backend: online`", "an online `batch:` block"),
    "online": (OnlineSettings, "`online:` in a target's `batch:` block", "the `online:` options"),
    "provider.mock": (MockProvider, "`mock:` in a local `batch:` block", "the mock provider's options"),
    "provider.mock.failure": (MockFailure, "one `mock: failures:` rule", "a mock failure rule"),
    "provider.openai": (OpenAIProvider, "`openai:` in a local `batch:` block", "the openai provider's options"),
}

_DOCS_ONLY = "dbt documentation metadata: kept, no effect on what is built"
_NOT_RUN = "batchflow does not run these"
_BQ_TABLE = "a dbt-bigquery table option batchflow does not apply yet"
_DUCKDB_PROFILE = "a dbt-duckdb connection option batchflow does not apply"
_BQ_PROFILE = "a dbt-bigquery connection option batchflow does not apply"
_MODEL_DBT = {
    "full_refresh": "use --full-refresh on the command line",
    "incremental_predicates": "merges compare unique_key only",
    "merge_update_columns": "merges update every column", "merge_exclude_columns": "merges update every column",
    "grant_access_to": _BQ_TABLE, "enable_refresh": _BQ_TABLE,
    "refresh_interval_minutes": _BQ_TABLE, "max_staleness": _BQ_TABLE, "resource_tags": _BQ_TABLE,
    "contract": "contracts are not enforced",
    "constraints": "constraints are not created", "group": "groups are not used", "access": "access is not checked",
    "sql_header": "no SQL header is sent", "quoting": "identifiers are always quoted",
    "on_configuration_change": "materialized views are not supported",
    "event_time": "microbatch is not supported", "batch_size": "microbatch is not supported",
    "lookback": "microbatch is not supported", "begin": "microbatch is not supported",
    "concurrent_batches": "microbatch is not supported", "unique_key_is_enforced": "not checked",
    "column_types": "model column types come from the SELECT", "delimiter": "seeds are read as comma-separated",
    "quote_columns": "seed columns are always quoted", "packages": "python models are not supported",
    "submission_method": "python models are not supported",
    "snapshot_meta_column_names": "applies to snapshots only (`snapshot-paths`)",
    "external_volume": "not applied", "file_format": "not applied", "location": "not applied",
    "options": "not applied", "format": "dbt-duckdb external tables are not supported",
    "freshness": "source freshness is not checked",
}
#: Seeds are loaded from CSV: the model table configs (declared for models) have no effect on them.
_SEED_DBT = {
    **{k: v for k, v in _MODEL_DBT.items() if k != "column_types"},
    **{k: "seed hooks are not run (model hooks are)" for k in ("pre-hook", "post-hook", "pre_hook", "post_hook")},
    "persist_docs": "seed descriptions are not written to the warehouse",
    "on_schema_change": "seeds are replaced whole", "incremental_strategy": "seeds are replaced whole",
    "partitions": "seeds are replaced whole", "grants": "no GRANTs are issued on seeds",
    **{k: "a dbt-bigquery table option batchflow does not apply to seeds" for k in (
        "partition_by", "cluster_by", "labels", "kms_key_name", "hours_to_expiration", "require_partition_filter",
        "partition_expiration_days")},
}
#: Snapshots are built by batchflow.snapshots: model hooks and table options are not applied to them.
_SNAPSHOT_DBT = {
    **{k: v for k, v in _MODEL_DBT.items() if k not in ("snapshot_meta_column_names", "column_types")},
    **{k: "snapshot hooks are not run (model hooks are)" for k in ("pre-hook", "post-hook", "pre_hook", "post_hook")},
    "persist_docs": "snapshot descriptions are not written to the warehouse",
    "grants": "no GRANTs are issued on snapshots", "strategy_name": "dbt's custom strategies are not supported",
    **{k: "a dbt-bigquery table option batchflow does not apply to snapshots" for k in (
        "partition_by", "cluster_by", "labels", "kms_key_name", "hours_to_expiration", "require_partition_filter",
        "partition_expiration_days")},
}
_TEST_DBT: dict[str, str] = {}
_YML_ENTRY_DBT = {
    "docs": _DOCS_ONLY, "meta": _DOCS_ONLY, "tags": "put tags under `config:`", "access": "access is not checked",
    "group": "groups are not used", "latest_version": "model versions are not supported",
    "versions": "model versions are not supported", "constraints": "constraints are not created",
    "deprecation_date": _DOCS_ONLY, "time_spine": "the semantic layer is not supported",
}

#: Per section: dbt keys batchflow reads but does not act on, with what it does instead (loaded with a warning).
DBT_KEYS: dict[str, dict[str, str]] = {
    "project": {
        "docs-paths": _DOCS_ONLY, "asset-paths": _DOCS_ONLY,
        "flags": "dbt behaviour flags",
        "source-paths": "dbt < 1.0 name of model-paths: not read, use model-paths",
        "data-paths": "dbt < 1.0 name of seed-paths: not read, use seed-paths",
        "quoting": "identifiers are always quoted",
        "query-comment": "no query comment is added",
        "tests": "test configs are not applied", "data_tests": "test configs are not applied",
        "sources": "source configs are not applied",
        "analyses": _NOT_RUN, "metrics": "the semantic layer is not supported",
        "semantic-models": "the semantic layer is not supported", "saved-queries": "the semantic layer is not supported",
        "exposures": _DOCS_ONLY, "modules-path": "packages are not loaded", "restrict-access": "access is not checked",
        "vars-file": "vars come from `vars:` and --vars only", "unit_tests": "unit test configs are not applied",
        "functions": "user-defined functions are not created", "function-paths": "user-defined functions are not created",
    },
    "project.batch": {},
    "model_config": _MODEL_DBT,
    "seed_config": _SEED_DBT,
    "snapshot_config": _SNAPSHOT_DBT,
    "yml": {
        "semantic_models": "the semantic layer is not supported",
        "metrics": "the semantic layer is not supported", "saved_queries": "the semantic layer is not supported",
        "analyses": _NOT_RUN, "groups": "groups are not used",
        "data_tests": "singular test properties are not used", "tests": "singular test properties are not used",
        "functions": "user-defined functions are not created",
    },
    "yml.model": _YML_ENTRY_DBT,
    "yml.seed": _YML_ENTRY_DBT,
    "yml.source": {
        "loader": _DOCS_ONLY, "loaded_at_field": "source freshness is not checked",
        "freshness": "source freshness is not checked", "tags": "source tags are not used for selection",
        "config": "source configs are not applied", "quoting": "identifiers are always quoted",
        "overrides": "packages are not loaded", "docs": _DOCS_ONLY,
    },
    "yml.source_table": {
        "loaded_at_field": "source freshness is not checked", "freshness": "source freshness is not checked",
        "tags": "source tags are not used for selection", "quoting": "identifiers are always quoted",
        "external": "external tables are not created", "config": "source configs are not applied",
        "docs": _DOCS_ONLY, "loader": _DOCS_ONLY,
    },
    "yml.column": {
        "meta": _DOCS_ONLY, "tags": "column tags are not used for selection", "quote": "columns are always quoted",
        "constraints": "constraints are not created", "policy_tags": _BQ_TABLE, "granularity": _DOCS_ONLY,
        "config": "column configs are not applied", "docs": _DOCS_ONLY,
    },
    "test.accepted_values": _TEST_DBT,
    "test.relationships": _TEST_DBT,
    "test.not_null": _TEST_DBT,
    "test.unique": _TEST_DBT,
    "target.duckdb": {k: _DUCKDB_PROFILE for k in (
        "extensions", "settings", "external_root", "use_credential_provider", "attach", "filesystems", "plugins",
        "disable_transactions", "keep_open", "module_paths", "secrets", "config_options", "retries",
        "is_ducklake", "motherduck_token", "reuse_connections")},
    "target.bigquery": {k: _BQ_PROFILE for k in (
        "priority", "job_execution_timeout_seconds", "job_creation_timeout_seconds", "job_retries",
        "job_retry_deadline_seconds", "maximum_bytes_billed", "impersonate_service_account", "execution_project",
        "timeout_seconds", "retries", "gcs_bucket", "dataproc_region", "dataproc_cluster_name",
        "submission_method", "compute_region", "quota_project", "dataproc_batch", "job_link_in_log")},
}

#: Per section: dbt keys that only describe (versions, cleaning): accepted without a warning.
INERT: dict[str, tuple[str, ...]] = {
    "project": ("version", "config-version", "require-dbt-version", "clean-targets", "log-path", "dbt-cloud"),
    "yml": ("macros", "exposures"),
}


# ---- the generated spec ---------------------------------------------------------------------------------------


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        for name in ("ge", "le", "gt", "lt"):
            value = getattr(item, name, None)
            if value is not None:
                out[name] = value
    return out


def _kind(annotation: Any) -> dict[str, Any]:
    """A setting's type as plain data the loader's checker understands."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        kind = _kind(args[0])
        kind.update(_constraints(list(args[1:])))
        return kind
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if len(options) == 1:
            kind = _kind(options[0])
        else:
            kind = {"type": "union", "options": [_kind(o) for o in options]}
        if nullable:
            kind["nullable"] = True
        return kind
    if origin is Literal:
        return {"type": "choice", "choices": list(args)}
    if origin is list:
        return {"type": "list", "items": _kind(args[0]) if args else {"type": "any"}}
    if origin is dict:
        return {"type": "dict", "values": _kind(args[1]) if len(args) > 1 else {"type": "any"}}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"type": "section", "section": _section_id(annotation)}
    names = {str: "str", int: "int", float: "float", bool: "bool"}
    if annotation in names:
        return {"type": names[annotation]}
    return {"type": "any"}


def _section_id(model: type[BaseModel]) -> str:
    for section_id, (declared, _, _) in SECTIONS.items():
        if declared is model:
            return section_id
    raise KeyError(model.__name__)


def _default(field: Any) -> Any:
    if field.is_required():
        return "required"
    value = field.default
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)


def build_spec() -> dict[str, Any]:
    """Every section as plain JSON data: fields (key as written → type, bounds, choices, default, doc),
    the dbt keys batchflow warns about, and the inert ones."""
    spec: dict[str, Any] = {}
    for section_id, (model, where, name) in SECTIONS.items():
        fields: dict[str, Any] = {}
        for attr, field in model.model_fields.items():
            kind = _kind(field.annotation)
            kind.update(_constraints(field.metadata))
            if isinstance(field.json_schema_extra, dict):
                kind.update(field.json_schema_extra)
            if model is ModelConfig and (field.alias or attr) in MATERIALIZATION_KEYS:
                kind["applies_to"] = list(MATERIALIZATION_KEYS[field.alias or attr])
            kind.update(default=_default(field), doc=field.description or "", required=field.is_required())
            fields[field.alias or attr] = kind
        spec[section_id] = {
            "doc": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "",
            "where": where,
            "name": name,
            "fields": fields,
            "dbt": DBT_KEYS.get(section_id, {}),
            "inert": list(INERT.get(section_id, ())),
        }
    return spec


def spec_text() -> str:
    """settings_spec.json as it should be on disk."""
    return json.dumps(build_spec(), indent=1, sort_keys=True) + "\n"


# ---- the README reference -------------------------------------------------------------------------------------


def _type_text(kind: dict[str, Any]) -> str:
    kinds = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "any": "any"}
    t = kind["type"]
    if t == "choice":
        text = " \\| ".join(f"`{c}`" for c in kind["choices"])
    elif t == "list":
        text = f"list of {_type_text(kind['items'])}"
    elif t == "dict":
        values = kind["values"]
        text = "mapping" if values["type"] == "any" else f"mapping of {_type_text(values)}"
    elif t == "union":
        text = " or ".join(_type_text(o) for o in kind["options"])
    elif t == "section":
        text = f"mapping ({SECTIONS[kind['section']][1]})"
    else:
        text = kinds.get(t, t)
    bounds = [f"{sym} {kind[name]:,}" for name, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
              if name in kind]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default_text(value: Any) -> str:
    if value == "required":
        return "**required**"
    if value is None or value == [] or value == {}:
        return ""
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def reference_markdown() -> str:
    """The configuration reference (markdown) README.md carries between the settings markers."""
    spec = build_spec()
    lines = [
        "Generated from `batchflow/settings.py` (`python -m batchflow.settings --write`). Every key below is",
        "checked where it is written, before anything runs: an unknown key, a wrong type, a value out of range",
        "or not among the choices stops the command with exit code 2, naming `file:line`, the key and the",
        "closest known key. dbt keys that batchflow does not act on load with a warning naming the key.",
        "",
    ]
    for section_id, section in spec.items():
        lines += [f"#### {section['where']}", "", section["doc"], "",
                  "| key | type | default | |", "|---|---|---|---|"]
        for key, kind in section["fields"].items():
            doc = kind["doc"].replace("|", "\\|")
            lines.append(f"| `{key}` | {_type_text(kind)} | {_default_text(kind['default'])} | {doc} |")
        if section["dbt"]:
            lines += ["", "dbt keys loaded with a warning: " + ", ".join(f"`{k}`" for k in sorted(section["dbt"])) + "."]
        if section["inert"]:
            lines += ["", "dbt keys accepted without effect: " + ", ".join(f"`{k}`" for k in section["inert"]) + "."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_with_reference(readme: str) -> str:
    """`readme` with the text between the settings markers replaced by `reference_markdown()`."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} section")
    return readme[: begin + len(README_BEGIN)] + "\n" + reference_markdown() + readme[end:]


def main(argv: list[str]) -> int:
    """`python -m batchflow.settings [--write | --check]`: write or check settings_spec.json and README.md."""
    readme_path = Path(__file__).resolve().parents[1] / "README.md"
    wanted = {SPEC_FILE: spec_text(), readme_path: readme_with_reference(readme_path.read_text())}
    if "--write" in argv or "--write-readme" in argv:
        for path, text in wanted.items():
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        return 0
    stale = [str(path) for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if stale:
        print("stale (run python -m batchflow.settings --write): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
