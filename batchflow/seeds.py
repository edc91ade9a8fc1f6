"""Seeds as nodes: which seed tables are missing or older than their CSV file.

A seed's content hash is recorded in `_batchflow_seeds` (target schema) each time it is loaded, so
`batchflow run` can load the seeds its models read that are missing or whose file changed, as SQLMesh
does, instead of failing on a fresh clone the way `dbt run` does.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.errors import ConfigError
from batchflow.relation import string_literal

if TYPE_CHECKING:
    from batchflow.compiler import Manifest, Node
    from batchflow.warehouse.base import Warehouse

SEED_STATE_TABLE = "_batchflow_seeds"


def content_hash(path: Path) -> str:
    """SHA-256 of the seed file's bytes (a touched but unchanged file is not reloaded)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SeedState:
    """Reads and writes `_batchflow_seeds`: the content hash each seed was last loaded from."""

    def __init__(self, warehouse: Warehouse, schema: str | None = None):
        self.warehouse = warehouse
        self.relation = warehouse.relation(SEED_STATE_TABLE, schema)
        warehouse.execute(f"CREATE TABLE IF NOT EXISTS {self.relation.render()} "
                          "(name STRING, relation STRING, content_hash STRING, loaded_at TIMESTAMP)")

    def hashes(self) -> dict[str, str]:
        """Recorded hash per seed name."""
        rows = self.warehouse.query_arrow(f"SELECT name, content_hash FROM {self.relation.render()}").to_pylist()
        return {r["name"]: r["content_hash"] for r in rows}

    def record(self, name: str, relation: str, digest: str) -> None:
        """Remember that `name` was loaded from a file with this hash."""
        table = self.relation.render()
        self.warehouse.execute(f"DELETE FROM {table} WHERE name = {string_literal(name)}")
        self.warehouse.execute(f"INSERT INTO {table} VALUES ({string_literal(name)}, {string_literal(relation)}, "
                               f"{string_literal(digest)}, CURRENT_TIMESTAMP())")


def upstream_seeds(manifest: Manifest, names: set[str]) -> set[str]:
    """Every seed the named nodes read, directly or through other models."""
    seen: set[str] = set()
    stack = list(names)
    seeds: set[str] = set()
    while stack:
        name = stack.pop()
        node = manifest.nodes.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.resource_type == "seed":
            seeds.add(name)
        stack.extend(node.depends_on)
    return seeds


def stale_seeds(manifest: Manifest, warehouse: Warehouse, names: set[str]) -> set[str]:
    """The seeds in `names` whose table is missing or was loaded from a different file content."""
    if not names:
        return set()
    recorded = SeedState(warehouse).hashes()
    stale = set()
    for name in names:
        node = manifest.nodes[name]
        seed = manifest.project.seeds[name]
        if warehouse.kind(node.relation) is None or recorded.get(name) != content_hash(seed.abs_path):
            stale.add(name)
    return stale


def load_seed(manifest: Manifest, warehouse: Warehouse, name: str) -> int:
    """Load one seed's CSV into its table and record the file's hash; returns the rows loaded."""
    node = manifest.nodes[name]
    path = manifest.project.seeds[name].abs_path
    digest = content_hash(path)  # before loading: a file changed meanwhile loads again next run
    warehouse.ensure_schema(node.relation.schema)
    types = node.config.get("column_types") or {}
    if types:
        rows = _load_typed(manifest, warehouse, name, path, types)
    else:
        rows = warehouse.load_csv(node.relation, path)
    SeedState(warehouse).record(name, str(node.relation), digest)
    return rows


def _load_typed(manifest: Manifest, warehouse: Warehouse, name: str, path: Path, types: dict[str, Any]) -> int:
    """dbt's seed `column_types`: the CSV is loaded as the warehouse reads it, then each named column is
    cast to its type (the target's own type names, as dbt takes them). A column the CSV lacks is an error."""
    import dataclasses

    from sqlglot import exp

    from batchflow import sql as sqlmod
    from batchflow.compiler import render_relation

    node = manifest.nodes[name]
    dialect = manifest.target.type
    staging = dataclasses.replace(node.relation, identifier=f"{node.relation.identifier}__bf_seed_load")
    warehouse.load_csv(staging, path)
    try:
        lookup = staging if dialect != "duckdb" else dataclasses.replace(staging, database=None)
        columns = [c.name for c in warehouse.columns(lookup)]
        wanted = {str(k).lower(): (str(k), str(v)) for k, v in types.items()}
        missing = sorted(k for k, _ in wanted.values() if k.lower() not in {c.lower() for c in columns})
        if missing:
            seed = manifest.project.seeds[name]
            raise ConfigError(f"seed {name}: `column_types` names {', '.join(missing)}, not a column of "
                              f"{seed.path} (columns: {', '.join(columns)})", seed.yml_path or manifest.project.project_file)
        items = []
        for column in columns:
            ident = exp.to_identifier(column, quoted=True)
            if column.lower() in wanted:
                cast = exp.Cast(this=exp.column(ident), to=exp.DataType.build(wanted[column.lower()][1], dialect=dialect,
                                                                            udt=True))
                items.append(exp.alias_(cast, ident))
            else:
                items.append(exp.column(ident))
        select = exp.select(*items).from_(render_relation(staging, dialect)).sql(dialect)
        return warehouse.create_table_as(node.relation, sqlmod.for_target(select, dialect, dialect))
    finally:
        warehouse.drop(staging)


# "Table with name products does not exist!" (DuckDB), "Not found: Table p:ds.products" (BigQuery)
_MISSING_PATTERNS = (
    re.compile(r"Table with name ([\w.\"`]+) does not exist", re.IGNORECASE),
    re.compile(r"Not found: Table ([\w.:\-`]+)", re.IGNORECASE),
    re.compile(r"(?:Table|View) ([\w.\"`]+) does not exist", re.IGNORECASE),
)


def missing_relation_hint(manifest: Manifest, message: str) -> str:
    """For an error saying a table does not exist: which seed, source or model would create it, and
    the command that does. Empty when the message is about something else."""
    for pattern in _MISSING_PATTERNS:
        match = pattern.search(message)
        if match:
            break
    else:
        return ""
    wanted = re.split(r"[.:]", match.group(1).strip("\"`"))[-1].strip("\"`").lower()
    owners: list[Node] = [n for n in manifest.nodes.values() if n.relation.identifier.lower() == wanted]
    if not owners:
        return f"hint: no seed, source or model of this project creates {wanted!r}"
    node = owners[0]
    if node.resource_type == "seed":
        return (f"hint: {wanted!r} is the seed {node.path}: `batchflow seed -s {node.name}` loads it "
                "(`batchflow run` and `build` load missing or changed seeds too)")
    if node.resource_type == "source":
        sample = f"; on the local target its sample {node.sample} stands in for it" if node.sample else ""
        return f"hint: {wanted!r} is the source {node.name.removeprefix('source:')}: it must exist in the warehouse{sample}"
    return f"hint: {wanted!r} is the model {node.path}: `batchflow run -s +{node.name}` builds it and what it reads"
