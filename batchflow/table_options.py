"""A model's table configs (dbt-bigquery's `partition_by`, `cluster_by`, `labels`, `persist_docs`, ...) as
one plain, checked value that the warehouse adapters render as DDL.

The loader has already checked each key's type and choices against `batchflow/settings.py` (file:line,
did-you-mean); `table_options_for` adds the checks that span keys or need the value's meaning (an int64
partition needs a `range`, at most four clustering columns, `insert_overwrite` needs `partition_by`, label
spelling, ...) and the refusals (`copy_partitions`, `time_ingestion_partitioning`), each a ConfigError at
the line of the key in the model file. Values are normalised the way dbt-bigquery parses them
(`PartitionConfig.parse` lowercases strings), so the adapters render from one spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

from batchflow.errors import ConfigError

#: The table config keys this module reads (a warehouse declares which of them it applies).
TABLE_OPTION_KEYS = (
    "partition_by", "cluster_by", "require_partition_filter", "partition_expiration_days", "labels",
    "persist_docs", "kms_key_name", "hours_to_expiration", "grants", "incremental_strategy", "partitions",
    "on_schema_change",
)
DATA_TYPES = ("timestamp", "date", "datetime", "int64")
GRANULARITIES = ("hour", "day", "month", "year")
STRATEGIES = ("merge", "append", "insert_overwrite")
SCHEMA_CHANGES = ("ignore", "fail", "append_new_columns", "sync_all_columns")
MAX_CLUSTER_COLUMNS = 4  # BigQuery's limit
# BigQuery label rules: keys start with a lowercase letter; keys and values hold at most 63 lowercase
# letters, digits, underscores and dashes (values may be empty).
_LABEL_KEY = re.compile(r"^[^\W\d_A-Z][\w-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[\w-]{0,63}$")
_GRANTEE = re.compile(r"^(user|group|serviceAccount|domain|specialGroup|principal|principalSet):\S+$")


@dataclass(frozen=True)
class PartitionRange:
    """`range:` of an int64 partition: RANGE_BUCKET(field, GENERATE_ARRAY(start, end, interval))."""

    start: int
    end: int
    interval: int


@dataclass(frozen=True)
class Partitioning:
    """`partition_by:`, as dbt-bigquery's PartitionConfig (lowercased data type and granularity)."""

    field: str
    data_type: str = "date"
    granularity: str = "day"
    range: PartitionRange | None = None

    @property
    def truncated(self) -> bool:
        """The column is truncated to the granularity (not for int64, nor for a date by day)."""
        return not (self.data_type == "int64" or (self.data_type == "date" and self.granularity == "day"))

    def expression(self, alias: str | None = None) -> str:
        """dbt's `PartitionConfig.render`, in BigQuery SQL: the column, truncated to the granularity unless
        it is a date by day (or an int64)."""
        column = (f"{alias}." if alias else "") + "`" + self.field.replace("`", "\\`") + "`"
        if self.truncated:
            return f"{self.data_type.upper()}_TRUNC({column}, {self.granularity.upper()})"
        return column

    def value(self, alias: str | None = None) -> str:
        """dbt's `render_wrapped`: a date-by-day partition value wrapped in DATE(), so it compares as a date."""
        if self.data_type in ("date", "timestamp", "datetime") and not self.truncated:
            return f"{self.data_type.upper()}({self.expression(alias)})"
        return self.expression(alias)


@dataclass(frozen=True)
class TableOptions:
    """Everything a warehouse needs to build a model's relation beyond its SELECT.

    `description` and `column_descriptions` are set only when `persist_docs` asks for them. `set_keys` are
    the config keys the model set (what a warehouse that ignores some of them notes)."""

    partition_by: Partitioning | None = None
    cluster_by: tuple[str, ...] = ()
    require_partition_filter: bool | None = None
    partition_expiration_days: float | None = None
    labels: tuple[tuple[str, str], ...] = ()
    description: str | None = None
    column_descriptions: tuple[tuple[str, str], ...] = ()
    kms_key_name: str | None = None
    hours_to_expiration: int | None = None
    grants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    incremental_strategy: str = "merge"
    partitions: tuple[str, ...] = ()
    on_schema_change: str = "ignore"
    set_keys: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """No option beyond the defaults: the plain DDL."""
        return all(getattr(self, f.name) == f.default for f in fields(self) if f.name != "set_keys")


NO_OPTIONS = TableOptions()


def not_applied(options: TableOptions, ignored: Mapping[str, str]) -> list[str]:
    """`key (why)` for each key the model set that a warehouse ignores (`ignored`: key → why)."""
    return [f"{key} ({ignored[key]})" for key in options.set_keys if key in ignored]


def table_options_for(node: Any) -> TableOptions:
    """The checked table options of a compiled model node (its merged config, description and yml columns)."""
    return table_options(node.config, description=node.description, columns=node.columns, path=node.path,
                         raw_sql=node.raw_sql)


def table_options(config: Mapping[str, Any], *, description: str = "", columns: Mapping[str, Any] | None = None,
                  path: str | None = None, raw_sql: str = "") -> TableOptions:
    """Build and check the table options of a model's merged `config`. Raises ConfigError naming the key,
    at its line in `raw_sql` (the model file's text) when it is written there."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"`{key}:` {message}", path, _line_of(raw_sql, key))

    set_keys = tuple(k for k in TABLE_OPTION_KEYS if config.get(k) not in (None, [], {}, ""))
    partition = _partitioning(config.get("partition_by"), fail)
    cluster = config.get("cluster_by")
    cluster_by = tuple(str(c) for c in ([cluster] if isinstance(cluster, str) else cluster or ()))
    if len(cluster_by) > MAX_CLUSTER_COLUMNS:
        raise fail("cluster_by", f"BigQuery clusters on at most {MAX_CLUSTER_COLUMNS} columns, got "
                   f"{len(cluster_by)} ({', '.join(cluster_by)})")
    labels = tuple((str(k), "" if v is None else str(v)) for k, v in (config.get("labels") or {}).items())
    for key, value in labels:
        if not _LABEL_KEY.match(key):
            raise fail("labels", f"label key {key!r} must start with a lowercase letter and hold at most 63 "
                       "lowercase letters, digits, `_` or `-` (BigQuery's rule)")
        if not _LABEL_VALUE.match(value) or value != value.lower():
            raise fail("labels", f"label {key}: value {value!r} may hold at most 63 lowercase letters, digits, "
                       "`_` or `-` (BigQuery's rule)")
    docs = config.get("persist_docs") or {}
    persist_relation, persist_columns = _truthy(docs.get("relation")), _truthy(docs.get("columns"))
    column_docs: list[tuple[str, str]] = []
    if persist_columns:
        for name, column in (columns or {}).items():
            text = column.get("description") if isinstance(column, Mapping) else getattr(column, "description", None)
            if text:
                column_docs.append((str(column.get("name", name) if isinstance(column, Mapping) else name), str(text)))
    grants: list[tuple[str, tuple[str, ...]]] = []
    for role, grantees in (config.get("grants") or {}).items():
        listed = tuple(str(g) for g in ([grantees] if isinstance(grantees, str) else grantees or ()))
        for grantee in listed:
            if not _GRANTEE.match(grantee):
                raise fail("grants", f"{role}: grantee {grantee!r} must be `user:`, `group:`, `serviceAccount:`, "
                           "`domain:` or `specialGroup:` followed by the name, e.g. 'user:ana@example.com'")
        if listed:
            grants.append((str(role), listed))
    strategy = str(config.get("incremental_strategy") or "merge").lower()
    if strategy not in STRATEGIES:  # the loader checks the choice; a folder config rendered later may not be
        raise fail("incremental_strategy", f"must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    partitions = config.get("partitions")
    partitions = tuple(str(p) for p in ([partitions] if isinstance(partitions, str) else partitions or ()))
    if strategy == "insert_overwrite" and partition is None:
        raise fail("incremental_strategy", "insert_overwrite replaces whole partitions: it needs `partition_by`")
    if partitions and strategy != "insert_overwrite":
        raise fail("partitions", "lists the partitions an `incremental_strategy: insert_overwrite` model replaces; "
                   f"this model's strategy is {strategy}")
    on_change = str(config.get("on_schema_change") or "ignore").lower()
    if on_change not in SCHEMA_CHANGES:
        raise fail("on_schema_change", f"must be one of {', '.join(map(repr, SCHEMA_CHANGES))}, got {on_change!r}")
    expiration_days = config.get("partition_expiration_days")
    hours = config.get("hours_to_expiration")
    return TableOptions(
        partition_by=partition,
        cluster_by=cluster_by,
        require_partition_filter=None if config.get("require_partition_filter") is None
        else _truthy(config["require_partition_filter"]),
        partition_expiration_days=None if expiration_days is None else float(expiration_days),
        labels=labels,
        description=description or None if persist_relation else None,
        column_descriptions=tuple(column_docs),
        kms_key_name=None if not config.get("kms_key_name") else str(config["kms_key_name"]),
        hours_to_expiration=None if hours is None else int(hours),
        grants=tuple(grants),
        incremental_strategy=strategy,
        partitions=partitions,
        on_schema_change=on_change,
        set_keys=set_keys,
    )


def _partitioning(raw: Any, fail: Any) -> Partitioning | None:
    if raw is None:
        return None
    if isinstance(raw, str):  # dbt < 0.16's string form, which dbt-bigquery no longer accepts either
        raise fail("partition_by", f"must be a mapping such as {{field: created_at, data_type: timestamp}}, "
                   f"got the string {raw!r}")
    if not isinstance(raw, Mapping) or not raw.get("field"):
        raise fail("partition_by", "needs a `field:` (the column to partition on)")
    if _truthy(raw.get("copy_partitions")):
        raise fail("partition_by", "`copy_partitions: true` is not supported: batchflow replaces partitions "
                   "with one MERGE (dbt's default); remove it")
    if _truthy(raw.get("time_ingestion_partitioning")):
        raise fail("partition_by", "`time_ingestion_partitioning: true` is not supported: partition on a "
                   "column of the SELECT instead")
    data_type = str(raw.get("data_type") or "date").lower()
    granularity = str(raw.get("granularity") or "day").lower()
    if data_type not in DATA_TYPES:
        raise fail("partition_by", f"data_type must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    if granularity not in GRANULARITIES:
        raise fail("partition_by", f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if data_type == "date" and granularity == "hour":
        raise fail("partition_by", "a date column cannot be partitioned by hour (use day, month or year)")
    rng = raw.get("range")
    if data_type == "int64":
        if not isinstance(rng, Mapping) or any(rng.get(k) is None for k in ("start", "end", "interval")):
            raise fail("partition_by", "an int64 partition needs `range: {start: ..., end: ..., interval: ...}`")
        try:
            bounds = PartitionRange(int(rng["start"]), int(rng["end"]), int(rng["interval"]))
        except (TypeError, ValueError):
            raise fail("partition_by", f"range start, end and interval must be integers, got {dict(rng)!r}") from None
        if bounds.interval <= 0 or bounds.end <= bounds.start:
            raise fail("partition_by", f"range needs start < end and interval > 0, got {dict(rng)!r}")
        return Partitioning(str(raw["field"]), data_type, granularity, bounds)
    if rng is not None:
        raise fail("partition_by", f"`range:` applies to data_type int64 only (this partition is {data_type})")
    return Partitioning(str(raw["field"]), data_type, granularity)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _line_of(raw_sql: str, key: str) -> int | None:
    """Line of `key=` or `'key':` in the model file (None when the key comes from a yml or folder config)."""
    if not raw_sql:
        return None
    found = re.search(rf"""(?<![\w.])(?:{re.escape(key)}\s*=(?!=)|['"]{re.escape(key)}['"]\s*:)""", raw_sql)
    return None if found is None else raw_sql.count("\n", 0, found.start()) + 1


@dataclass(frozen=True)
class SchemaChange:
    """How a SELECT's columns differ from its incremental table's (names compared in any case, as BigQuery
    does): columns the table lacks, columns the SELECT lost, and columns whose type differs (old, new)."""

    added: tuple[Any, ...] = ()
    removed: tuple[Any, ...] = ()
    retyped: tuple[tuple[Any, Any], ...] = ()

    @property
    def any(self) -> bool:
        """Whether the schemas differ at all."""
        return bool(self.added or self.removed or self.retyped)

    def failure(self, relation: Any) -> str:
        """dbt's message for `on_schema_change: fail`, with the differences."""
        parts = []
        if self.added:
            parts.append("new in the SELECT: " + ", ".join(f"{c.name} {c.type}" for c in self.added))
        if self.removed:
            parts.append("missing from the SELECT: " + ", ".join(c.name for c in self.removed))
        if self.retyped:
            parts.append("changed type: " + ", ".join(f"{o.name} {o.type} -> {n.type}" for o, n in self.retyped))
        return (f"the source and target schemas of incremental model {relation} are out of sync "
                f"(on_schema_change: fail): {'; '.join(parts)}; rerun with --full-refresh, or set on_schema_change "
                "to append_new_columns or sync_all_columns")

    def lines(self, mode: str) -> list[str]:
        """What `mode` changed, one line per column."""
        out = [f"added column {c.name} {c.type}" for c in self.added]
        if mode == "sync_all_columns":
            out += [f"dropped column {c.name}" for c in self.removed]
            out += [f"changed column {n.name} to {n.type}" for _, n in self.retyped]
        return out


def schema_change(target: list[Any], source: list[Any]) -> SchemaChange:
    """Compare a table's columns (`target`) with a SELECT's (`source`); both are `Column`s spelt as BigQuery."""
    have = {c.name.lower(): c for c in target}
    want = {c.name.lower(): c for c in source}
    return SchemaChange(
        added=tuple(c for k, c in want.items() if k not in have),
        removed=tuple(c for k, c in have.items() if k not in want),
        retyped=tuple((have[k], c) for k, c in want.items() if k in have and have[k].type != c.type),
    )
