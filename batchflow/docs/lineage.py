"""Column-level lineage with sqlglot: for each output column of a model, the upstream columns it is
computed from (`sqlglot.lineage`), named by node.

Models are walked in dependency order, so each model's output columns (stars expanded by sqlglot's
qualifier against the columns known so far) are in the schema when its children are traced. Each
model is qualified once and every column traced on that one scope, instead of `lineage()`
re-qualifying the query per column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.lineage import lineage as sqlglot_lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

from batchflow.relation import Relation
from batchflow.sql import output_columns, parse_one, sql_dialect

#: a column's type when the warehouse cannot tell (not built yet): sqlglot needs one to resolve names
UNKNOWN_TYPE = "UNKNOWN"


@dataclass(frozen=True)
class ColumnRef:
    """One column of one node."""

    node: str
    column: str


@dataclass
class ModelLineage:
    """What tracing one model found."""

    #: output column names, in order (stars expanded); empty when the SQL could not be read
    columns: list[str] = field(default_factory=list)
    #: output column -> the upstream columns it reads (empty: computed from none, e.g. COUNT(*) or a literal)
    upstream: dict[str, list[ColumnRef]] = field(default_factory=dict)
    #: output column (or "*" for the whole model) -> why it could not be traced
    errors: dict[str, str] = field(default_factory=dict)


class SchemaBook:
    """The columns (and types) of every relation seen so far, shaped as sqlglot's MappingSchema wants it:
    every relation at one depth, `schema.table` or `database.schema.table`."""

    def __init__(self, relations: list[Relation]):
        # sqlglot wants one depth for every table: the project id only when every relation has one
        self.with_database = bool(relations) and all(r.database for r in relations)
        self._mapping: dict[str, Any] = {}
        self._owner: dict[tuple[str, ...], str] = {}

    def _key(self, relation: Relation) -> tuple[str, ...]:
        parts = (relation.database, relation.schema, relation.identifier) if self.with_database \
            else (relation.schema, relation.identifier)
        return tuple(str(p) for p in parts)

    def add(self, node: str, relation: Relation, columns: dict[str, str]) -> None:
        """Record the columns (name -> type) of `node`, stored at `relation`."""
        key = self._key(relation)
        self._owner[tuple(k.lower() for k in key)] = node
        level = self._mapping
        for part in key[:-1]:
            level = level.setdefault(part, {})
        level[key[-1]] = {name: kind or UNKNOWN_TYPE for name, kind in columns.items()}

    def owner(self, table: exp.Table) -> str | None:
        """The node stored at a table sqlglot's lineage ended on (None: not a relation of the project)."""
        parts = [table.catalog, table.db, table.name] if self.with_database else [table.db, table.name]
        return self._owner.get(tuple(p.lower() for p in parts))

    @property
    def mapping(self) -> dict[str, Any]:
        """The nested mapping for `sqlglot.optimizer.qualify`."""
        return self._mapping


def trace_model(sql: str, book: SchemaBook) -> ModelLineage:
    """Trace every output column of one model's compiled SELECT (BigQuery SQL, or SQL carrying
    batchflow's dialect mark) against the relations in `book`."""
    dialect, body = sql_dialect(sql)
    result = ModelLineage()
    try:
        tree = parse_one(body, dialect)
        qualified = qualify(tree, dialect=dialect, schema=book.mapping, validate_qualify_columns=False,
                            identify=False)
        scope = build_scope(qualified)
    except Exception as exc:  # noqa: BLE001 - a model sqlglot cannot read is reported, not fatal
        result.errors["*"] = _message(exc)
        fallback = _safe_output_columns(body, dialect)
        result.columns = fallback
        return result
    if scope is None:
        result.errors["*"] = "not a SELECT"
        return result
    result.columns = [s.alias_or_name for s in scope.expression.selects]
    for column in result.columns:
        try:
            root = sqlglot_lineage(column, qualified, book.mapping, dialect=dialect, scope=scope, copy=False)
        except Exception as exc:  # noqa: BLE001 - sqlglot raises many kinds; one column's failure stays local
            result.errors[column] = _message(exc)
            continue
        result.upstream[column] = _leaves(root, book)
    return result


def _leaves(root: Any, book: SchemaBook) -> list[ColumnRef]:
    """The columns of project relations at the ends of a lineage tree, in first-seen order."""
    seen: dict[ColumnRef, None] = {}
    for node in root.walk():
        if node.downstream or not isinstance(node.source, exp.Table):
            continue
        owner = book.owner(node.source)
        if owner is None:
            continue
        column = node.expression.name if isinstance(node.expression, exp.Column) else node.name.split(".")[-1]
        if column and column != "*":
            seen.setdefault(ColumnRef(owner, column), None)
    return list(seen)


def _safe_output_columns(body: str, dialect: str) -> list[str]:
    try:
        return output_columns(parse_one(body, dialect)) or []
    except Exception:  # noqa: BLE001
        return []


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
