"""The compile pipeline after rendering: parse → validate → transpile → inline ephemerals.

Each step is a pure function from one `SqlUnit` (plain data: a model's rendered SQL and what the step
needs to know about it) to the next, like the passes of sqlglot's optimizer; `run_steps` folds them in
order. Nothing here reads files, the project or a cache: `cached(step, store)` wraps a step with the
partial-parse cache from the outside, keyed by the unit's data, so a step is the same function with and
without it and each can be tested alone (tests/test_compile_steps.py, tests/fixtures/transpile/).

sqlglot (through batchflow.sql) is imported by the steps when they run: a compile whose steps are all
served by the cache never imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Callable, Protocol

from batchflow.errors import ConfigError


@dataclass(frozen=True)
class SqlUnit:
    """One model's SQL on its way from the rendered text to what the warehouse adapter runs."""

    sql: str  # rendered, then as the warehouse adapter takes it
    dialect: str = "bigquery"  # the dialect the project's models are written in
    writes: str = "bigquery"  # what the adapter takes: "bigquery", or the target's dialect (see sql.for_target)
    materialized: str = "view"
    key: tuple[str, ...] = ()  # a batch model's `key:` columns
    key_line: int | None = None  # for errors only: the line of `key` in the model file
    #: ephemeral models to inline as CTEs: (CTE name, their SQL as the adapter takes it)
    ctes: tuple[tuple[str, str], ...] = ()
    path: str = ""  # for errors only: the model file, relative to the project
    raw_sql: str = ""  # for errors only: the model file's text (error lines are mapped back to it)
    #: the parsed statement when `parse` ran in this process (None after a cached step or a rewrite)
    tree: Any = field(default=None, compare=False, repr=False)

    def cache_parts(self) -> tuple[str, ...]:
        """What a step's result depends on (path and raw_sql only shape error messages, never cached)."""
        return (self.sql, self.dialect, self.writes, self.materialized, repr(self.key), repr(self.ctes))


Step = Callable[[SqlUnit], SqlUnit]


def strip_semicolon(sql: str) -> str:
    """The statement without surrounding space and a trailing semicolon."""
    return sql.strip().rstrip(";").strip()


def parse(unit: SqlUnit) -> SqlUnit:
    """Parse exactly one statement of the written dialect; a syntax error names the model file and the
    line of the template it came from."""
    from batchflow import sql as sqlmod

    tree = sqlmod.parse_one(unit.sql, unit.dialect, path=unit.path or None, raw_source=unit.raw_sql or None)
    return dataclasses.replace(unit, tree=tree)


def validate(unit: SqlUnit) -> SqlUnit:
    """What a materialization needs of the SELECT. A batch model: a `request` column, no reserved names
    (in any letter case), and `key:` naming columns of its SELECT (BigQuery names are case-insensitive).
    A SELECT * is left to the run, where the warehouse knows the columns."""
    if unit.materialized != "batch":
        return unit
    from batchflow import sql as sqlmod
    from batchflow.project import did_you_mean
    from batchflow.requests import reserved_column_problems

    tree = unit.tree if unit.tree is not None else parse(unit).tree
    columns = sqlmod.output_columns(tree)
    if columns is None:
        return unit
    problems = reserved_column_problems(columns)
    if problems:
        raise ConfigError("; ".join(problems) + "; nothing was run", unit.path or None)
    folded = {c.lower() for c in columns}
    for name in unit.key:
        if name.lower() not in folded:
            raise ConfigError(
                f"`key:` {name!r} is not a column of the model's SELECT{did_you_mean(name, columns)}; "
                f"columns: {', '.join(columns)}",
                unit.path or None, unit.key_line,
            )
    return unit


def transpile(unit: SqlUnit) -> SqlUnit:
    """The written dialect as the warehouse adapter takes it (`sql.for_target`): BigQuery SQL as written;
    SQL written in the target's own dialect marked and untouched; any other dialect transpiled to
    BigQuery SQL by sqlglot."""
    if unit.dialect == "bigquery":
        return unit
    from batchflow import sql as sqlmod

    return dataclasses.replace(unit, sql=sqlmod.for_target(strip_semicolon(unit.sql), unit.dialect, unit.writes),
                               tree=None)


def inline_ephemerals(unit: SqlUnit) -> SqlUnit:
    """Ephemeral models the model refs, prepended as CTEs (each one's SQL already inlines its own)."""
    if not unit.ctes:
        return unit
    from batchflow import sql as sqlmod

    return dataclasses.replace(unit, sql=sqlmod.add_ctes(strip_semicolon(unit.sql), list(unit.ctes)), tree=None)


#: the steps after rendering, in order
STEPS: tuple[Step, ...] = (parse, validate, transpile, inline_ephemerals)


def run_steps(unit: SqlUnit, steps: tuple[Step, ...] = STEPS) -> SqlUnit:
    """Fold `unit` through `steps` in order."""
    return reduce(lambda done, step: step(done), steps, unit)


class StepStore(Protocol):
    """Where `cached` keeps step results (the partial-parse cache): the SQL a step returned, by key."""

    def step_result(self, key: bytes) -> str | None:
        """The SQL the step returned for this key before, or None."""

    def add_step_result(self, key: bytes, sql: str) -> None:
        """Remember the SQL the step returned for this key."""


def cached(step: Step, store: StepStore) -> Step:
    """`step`, remembering its result in `store` by the step's name and the unit's data: a unit seen before
    (in this process or a previous compile) skips the step. Failures are not remembered, so an error is
    reported again, with its file and line, every time."""
    name = step.__name__

    def run(unit: SqlUnit) -> SqlUnit:
        key = _digest(name, *unit.cache_parts())
        hit = store.step_result(key)
        if hit is not None:
            return unit if hit == unit.sql else dataclasses.replace(unit, sql=hit, tree=None)
        done = step(unit)
        store.add_step_result(key, done.sql)
        return done

    run.__name__ = run.__qualname__ = name
    run.__doc__ = step.__doc__
    return run


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.digest()

