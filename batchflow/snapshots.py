"""Snapshots as dbt-core 1.11 builds them (type-2 slowly changing dimensions).

A snapshot is a SELECT plus a config (`unique_key`, `strategy: timestamp | check`, `updated_at`,
`check_cols`, `hard_deletes`, `dbt_valid_to_current`, `snapshot_meta_column_names`). The first run creates
the table (dbt's `build_snapshot_table`); each later run computes dbt's staging rows
(`snapshot_staging_table`: insertions, updates, deletes, deletion records) and applies them with dbt's
`snapshot_merge_sql` as one MERGE (atomic on BigQuery and on DuckDB >= 1.4).

The SQL is BigQuery SQL built by pure functions (asserted as text in tests); `run_snapshot` executes it
through the warehouse protocol, which transpiles it for DuckDB as it does models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchflow.errors import ConfigError
from batchflow.relation import Relation

STRATEGIES = ("timestamp", "check")
HARD_DELETES = ("ignore", "invalidate", "new_record")
#: dbt's default meta column names (`snapshot_meta_column_names` renames them)
META_COLUMNS = ("dbt_valid_from", "dbt_valid_to", "dbt_scd_id", "dbt_updated_at", "dbt_is_deleted")


@dataclass(frozen=True)
class SnapshotSpec:
    """A snapshot's validated config."""

    unique_key: tuple[str, ...]
    strategy: str
    updated_at: str | None = None
    check_cols: tuple[str, ...] | str = "all"  # "all" or the columns
    hard_deletes: str = "ignore"
    dbt_valid_to_current: str | None = None
    columns: dict[str, str] = field(default_factory=lambda: {c: c for c in META_COLUMNS})

    @property
    def is_list_key(self) -> bool:
        """Whether dbt joins on dbt_unique_key_1..n (a list unique_key) or dbt_unique_key."""
        return len(self.unique_key) > 1


def snapshot_spec(config: dict[str, Any], path: Path | str | None = None, line: int | None = None) -> SnapshotSpec:
    """Validate a snapshot's config as dbt does; a problem is a ConfigError at `path:line`."""
    def need(key: str) -> Any:
        if config.get(key) in (None, "", []):
            raise ConfigError(f"snapshot config `{key}` is required", path, line)
        return config[key]

    strategy = str(need("strategy"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"snapshot `strategy: {strategy}` is not one of {', '.join(STRATEGIES)}", path, line)
    key = need("unique_key")
    unique_key = (key,) if isinstance(key, str) else tuple(str(k) for k in key)
    updated_at = config.get("updated_at")
    if strategy == "timestamp" and not updated_at:
        raise ConfigError("snapshot `strategy: timestamp` needs `updated_at` (the column that says when a row "
                          "changed)", path, line)
    check_cols: tuple[str, ...] | str = "all"
    if strategy == "check":
        raw = need("check_cols")
        if raw != "all":
            if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
                raise ConfigError("snapshot `check_cols` must be `all` or a list of columns", path, line)
            check_cols = tuple(str(c) for c in raw)
    hard_deletes = config.get("hard_deletes")
    if hard_deletes is None:  # dbt < 1.9's spelling
        hard_deletes = "invalidate" if config.get("invalidate_hard_deletes") else "ignore"
    if hard_deletes not in HARD_DELETES:
        raise ConfigError(f"snapshot `hard_deletes: {hard_deletes}` is not one of {', '.join(HARD_DELETES)}",
                          path, line)
    names = dict(config.get("snapshot_meta_column_names") or {})
    unknown = sorted(set(names) - set(META_COLUMNS))
    if unknown:
        raise ConfigError(f"snapshot_meta_column_names: unknown key {unknown[0]!r} (keys: {', '.join(META_COLUMNS)})",
                          path, line)
    current = config.get("dbt_valid_to_current")
    return SnapshotSpec(unique_key=unique_key, strategy=strategy, updated_at=str(updated_at) if updated_at else None,
                        check_cols=check_cols, hard_deletes=str(hard_deletes),
                        dbt_valid_to_current=None if current is None else str(current),
                        columns={c: str(names.get(c) or c) for c in META_COLUMNS})


def now_sql(now: datetime | None = None) -> str:
    """dbt's `snapshot_get_time()`: the warehouse clock, or a fixed instant (tests, replays)."""
    if now is None:
        return "CURRENT_TIMESTAMP()"
    stamp = now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)
    return f"TIMESTAMP '{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def _q(name: str) -> str:
    return f"`{name}`"


def hash_arguments(args: list[str]) -> str:
    """dbt-bigquery's snapshot_hash_arguments: to_hex(md5(concat(coalesce(cast(a as string), ''), '|', ...)))."""
    parts = ", '|', ".join(f"coalesce(cast({a} as string), '')" for a in args)
    return f"to_hex(md5(concat({parts})))"


def _updated_at(spec: SnapshotSpec, now: str) -> str:
    """strategy.updated_at: the updated_at column (timestamp; or check with updated_at), else the clock."""
    return _q(spec.updated_at) if spec.updated_at else now


def scd_id_sql(spec: SnapshotSpec, now: str) -> str:
    """strategy.scd_id: a hash of the unique key and updated_at."""
    return hash_arguments([*(_q(k) for k in spec.unique_key), _updated_at(spec, now)])


def row_changed_sql(spec: SnapshotSpec, check_cols: list[str] | None = None, column_added: bool = False) -> str:
    """strategy.row_changed, comparing `snapshotted_data` (the current version) with `source_data`."""
    if spec.strategy == "timestamp":
        return f"(snapshotted_data.{_q(spec.columns['dbt_valid_from'])} < source_data.{_q(spec.updated_at or '')})"
    if column_added:
        return "(TRUE)"
    terms = []
    for col in check_cols or []:
        s, c = f"snapshotted_data.{_q(col)}", f"source_data.{_q(col)}"
        terms.append(f"{s} != {c} or (({s} is null) and not ({c} is null)) or ((not {s} is null) and ({c} is null))")
    return "(" + " or ".join(terms) + ")"


def _valid_to_current(spec: SnapshotSpec, now: str) -> str:
    """get_dbt_valid_to_current: null, or dbt_valid_to_current, typed like updated_at."""
    updated = _updated_at(spec, now)
    if spec.dbt_valid_to_current:
        return f"coalesce(nullif({updated}, {updated}), {spec.dbt_valid_to_current})"
    return f"nullif({updated}, {updated})"


def build_snapshot_sql(select_sql: str, spec: SnapshotSpec, now: str = "CURRENT_TIMESTAMP()") -> str:
    """dbt's build_snapshot_table: the first run's SELECT (the source rows, each a current version)."""
    cols = spec.columns
    updated = _updated_at(spec, now)
    deleted = f",\n    'False' as {_q(cols['dbt_is_deleted'])}" if spec.hard_deletes == "new_record" else ""
    return (f"select *,\n    {scd_id_sql(spec, now)} as {_q(cols['dbt_scd_id'])},\n"
            f"    {updated} as {_q(cols['dbt_updated_at'])},\n    {updated} as {_q(cols['dbt_valid_from'])},\n"
            f"    {_valid_to_current(spec, now)} as {_q(cols['dbt_valid_to'])}{deleted}\n"
            f"from (\n{select_sql}\n) sbq")


def _key_fields(spec: SnapshotSpec, table: str = "") -> str:
    prefix = f"{table}." if table else ""
    if not spec.is_list_key:
        return f"{prefix}{_q(spec.unique_key[0])} as dbt_unique_key"
    return ", ".join(f"{prefix}{_q(k)} as dbt_unique_key_{i}" for i, k in enumerate(spec.unique_key, 1))


def _key_join(spec: SnapshotSpec, left: str, right: str) -> str:
    if not spec.is_list_key:
        return f"{left}.dbt_unique_key = {right}.dbt_unique_key"
    return " and ".join(f"{left}.dbt_unique_key_{i} = {right}.dbt_unique_key_{i}"
                        for i in range(1, len(spec.unique_key) + 1))


def _key_null(spec: SnapshotSpec, table: str, negate: bool = False) -> str:
    key = "dbt_unique_key_1" if spec.is_list_key else "dbt_unique_key"
    return f"{table}.{key} is {'not ' if negate else ''}null"


def _is_current(spec: SnapshotSpec, table: str = "") -> str:
    valid_to = f"{table}.{_q(spec.columns['dbt_valid_to'])}" if table else _q(spec.columns["dbt_valid_to"])
    if spec.dbt_valid_to_current:
        return f"({valid_to} = {spec.dbt_valid_to_current} or {valid_to} is null)"
    return f"{valid_to} is null"


def staging_sql(select_sql: str, target: str, spec: SnapshotSpec, now: str = "CURRENT_TIMESTAMP()",
                check_cols: list[str] | None = None, column_added: bool = False,
                source_columns: list[str] | None = None, target_columns: list[str] | None = None) -> str:
    """dbt's snapshot_staging_table: the changes a later run applies, one row per change (dbt_change_type
    'insert' | 'update' | 'delete'). `target` is the rendered snapshot table; `check_cols` the compared columns
    (check strategy); `source_columns` / `target_columns` the SELECT's and the table's (hard_deletes:
    new_record copies the deleted row's last values)."""
    cols = spec.columns
    scd, upd, vfrom, vto, deleted = (_q(cols[c]) for c in
                                     ("dbt_scd_id", "dbt_updated_at", "dbt_valid_from", "dbt_valid_to", "dbt_is_deleted"))
    updated = _updated_at(spec, now)
    changed = row_changed_sql(spec, check_cols, column_added)
    new_record = spec.hard_deletes == "new_record"
    tracks_deletes = spec.hard_deletes in ("invalidate", "new_record")
    was_deleted = f" or snapshotted_data.{deleted} = 'True'" if new_record else ""
    keys = _key_fields(spec)
    parts = [
        f"with snapshot_query as (\n{select_sql}\n)",
        f"snapshotted_data as (\n    select *, {keys}\n    from {target}\n    where {_is_current(spec)}\n)",
        f"insertions_source_data as (\n    select *, {keys},\n        {updated} as {upd},\n"
        f"        {updated} as {vfrom},\n        {_valid_to_current(spec, now)} as {vto},\n"
        f"        {scd_id_sql(spec, now)} as {scd}\n    from snapshot_query\n)",
        f"updates_source_data as (\n    select *, {keys},\n        {updated} as {upd},\n"
        f"        {updated} as {vfrom},\n        {updated} as {vto}\n    from snapshot_query\n)",
    ]
    if tracks_deletes:
        parts.append(f"deletes_source_data as (\n    select *, {keys}\n    from snapshot_query\n)")
    parts.append(
        f"insertions as (\n    select 'insert' as dbt_change_type, source_data.*"
        f"{f', {chr(39)}False{chr(39)} as {deleted}' if new_record else ''}\n"
        f"    from insertions_source_data as source_data\n    left outer join snapshotted_data\n"
        f"        on {_key_join(spec, 'snapshotted_data', 'source_data')}\n"
        f"    where {_key_null(spec, 'snapshotted_data')}\n"
        f"        or ({_key_null(spec, 'snapshotted_data', negate=True)} and ({changed}{was_deleted}))\n)")
    parts.append(
        f"updates as (\n    select 'update' as dbt_change_type, source_data.*, snapshotted_data.{scd}"
        f"{f', snapshotted_data.{deleted}' if new_record else ''}\n"
        f"    from updates_source_data as source_data\n    join snapshotted_data\n"
        f"        on {_key_join(spec, 'snapshotted_data', 'source_data')}\n"
        f"    where ({changed}{was_deleted})\n)")
    not_already_deleted = (f"\n        and not (snapshotted_data.{deleted} = 'True' and {_is_current(spec, 'snapshotted_data')})"
                           if new_record else "")
    if tracks_deletes:
        parts.append(
            f"deletes as (\n    select 'delete' as dbt_change_type, source_data.*,\n        {now} as {vfrom},\n"
            f"        {now} as {upd},\n        {now} as {vto},\n        snapshotted_data.{scd}"
            f"{f', snapshotted_data.{deleted}' if new_record else ''}\n"
            f"    from snapshotted_data\n    left join deletes_source_data as source_data\n"
            f"        on {_key_join(spec, 'snapshotted_data', 'source_data')}\n"
            f"    where {_key_null(spec, 'source_data')}{not_already_deleted}\n)")
    if new_record:
        present = {c.lower() for c in target_columns or []}
        copied = ",\n        ".join(f"snapshotted_data.{_q(c)}" if c.lower() in present else f"NULL as {_q(c)}"
                                    for c in source_columns or [])
        new_scd = hash_arguments([f"snapshotted_data.{scd}", now])
        parts.append(
            f"deletion_records as (\n    select 'insert' as dbt_change_type,\n        {copied},\n"
            f"        {_key_fields(spec, 'snapshotted_data')},\n        {now} as {vfrom},\n        {now} as {upd},\n"
            f"        snapshotted_data.{vto} as {vto},\n        {new_scd} as {scd},\n        'True' as {deleted}\n"
            f"    from snapshotted_data\n    left join deletes_source_data as source_data\n"
            f"        on {_key_join(spec, 'snapshotted_data', 'source_data')}\n"
            f"    where {_key_null(spec, 'source_data')}{not_already_deleted}\n)")
    unions = ["select * from insertions", "select * from updates"]
    if tracks_deletes:
        unions.append("select * from deletes")
    if new_record:
        unions.append("select * from deletion_records")
    return ",\n".join(parts) + "\n" + "\nunion all\n".join(unions)


def merge_sql(target: str, staging: str, spec: SnapshotSpec, insert_columns: list[str]) -> str:
    """dbt's snapshot_merge_sql: close the versions that changed or went away, insert the new ones."""
    vto = _q(spec.columns["dbt_valid_to"])
    listed = ", ".join(_q(c) for c in insert_columns)
    values = ", ".join(f"DBT_INTERNAL_SOURCE.{_q(c)}" for c in insert_columns)
    return (f"merge into {target} as DBT_INTERNAL_DEST\nusing (\n{staging}\n) as DBT_INTERNAL_SOURCE\n"
            f"on DBT_INTERNAL_SOURCE.{_q(spec.columns['dbt_scd_id'])} = DBT_INTERNAL_DEST.{_q(spec.columns['dbt_scd_id'])}\n"
            f"when matched\n    and {_is_current(spec, 'DBT_INTERNAL_DEST')}\n"
            f"    and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')\n"
            f"    then update set {vto} = DBT_INTERNAL_SOURCE.{vto}\n"
            f"when not matched\n    and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'\n"
            f"    then insert ({listed})\n    values ({values})")


def run_snapshot(wh: Any, relation: Relation, select_sql: str, spec: SnapshotSpec,
                 now: datetime | None = None) -> int | None:
    """Build or update the snapshot table `relation` from `select_sql` (BigQuery SQL) on warehouse `wh`.
    Returns the rows of the first build (None for an update: the MERGE's count is not reported)."""
    clock = now_sql(now)
    target = relation.render()
    if wh.kind(relation) is None:
        return int(wh.create_table_as(relation, build_snapshot_sql(select_sql, spec, clock)))
    _, source = wh.dry_run(select_sql)
    source_columns = [c.name for c in source]
    target_columns = [c.name for c in wh.columns(relation)]
    existing = {c.lower() for c in target_columns}
    added = [c for c in source_columns if c.lower() not in existing]
    if added:  # dbt's create_columns: the table gains the SELECT's new columns before the merge
        types = {c.name: c.type for c in source}
        for column in added:
            wh.execute(f"alter table {target} add column {_q(column)} {types[column]}")
        target_columns += added
    check_cols: list[str] | None = None
    column_added = False
    if spec.strategy == "check":
        if spec.check_cols == "all":
            check_cols = source_columns
            column_added = bool(added)
        else:
            check_cols = list(spec.check_cols)
    staging = staging_sql(select_sql, target, spec, clock, check_cols, column_added, source_columns, target_columns)
    wh.execute(merge_sql(target, staging, spec, target_columns))
    return None
