"""YAML unit tests as dbt 1.8+ runs them (`unit_tests:` with `given:` / `expect:`).

The model's SQL is rendered with each `ref()` / `source()` (and `this`) it reads replaced by a CTE of the
given rows, and the rows it returns are compared with `expect:` (order does not matter; only the columns
`expect:` names are compared). Given rows are cast to the column types of the relation they stand for
(missing columns are NULL of that type), expected rows to the types of the model's output, as dbt does.
Rows are `format: dict` (the default: a list of mappings), `csv` (text, or `fixture:` a CSV file under a
test path's `fixtures/`) or `sql` (a SELECT). `overrides:` replace macros (`is_incremental` & co), vars
and env vars for the test. Names and unique ids are those of `batchflow.selection`.
"""

from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.errors import CompileError, ConfigError
from batchflow.runner import NodeResult
from batchflow.testing import errored

if TYPE_CHECKING:
    from batchflow.compiler import Compiler, Manifest
    from batchflow.warehouse.base import Warehouse

_REF = re.compile(r"""^\s*ref\(\s*['"]([^'"]+)['"]\s*(?:,\s*['"]([^'"]+)['"]\s*)?\)\s*$""")
_SOURCE = re.compile(r"""^\s*source\(\s*['"]([^'"]+)['"]\s*,\s*['"]([^'"]+)['"]\s*\)\s*$""")
_FORMATS = ("dict", "csv", "sql")
CTE_PREFIX = "__dbt__cte__"


@dataclass
class Fixture:
    """One `given:` input or the `expect:` block."""

    input: str  # "ref('x')", "source('a', 'b')", "this"; "" for expect
    target: str  # the Manifest.nodes key it stands for ("" for expect and `this`)
    format: str
    rows: Any  # dict format: a list of mappings; csv: text; sql: a SELECT
    line: int | None = None


@dataclass
class UnitTest:
    """One unit test of one model."""

    unique_id: str
    name: str
    model: str
    path: str  # the yml file, relative to the project root
    given: list[Fixture]
    expect: Fixture
    overrides: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)  # the model's parents (built before it runs in a build)
    line: int | None = None
    test_type: str = "unit"

    @property
    def key(self) -> str:
        """The runner's name for it."""
        return self.unique_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _fixture(entry: Any, path: Path, root: Path, manifest: "Manifest", test: str, expect: bool = False) -> Fixture:
    from batchflow.yamlio import line_of, to_plain

    line = line_of(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"unit test {test!r}: each {'`expect:`' if expect else '`given:` item'} is a mapping "
                          "(input, rows, format)", path, line)
    known = {"rows", "format", "fixture"} | (set() if expect else {"input"})
    unknown = sorted(set(map(str, entry)) - known)
    if unknown:
        from batchflow.project import did_you_mean

        raise ConfigError(f"unit test {test!r}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                          f"takes {', '.join(sorted(known))}", path, line_of(entry, unknown[0]) or line)
    fmt = str(entry.get("format") or "dict")
    if fmt not in _FORMATS:
        raise ConfigError(f"unit test {test!r}: `format: {fmt}` must be one of {', '.join(_FORMATS)}", path,
                          line_of(entry, "format") or line)
    rows = to_plain(entry.get("rows"))
    if entry.get("fixture") is not None:
        rows = _fixture_file(str(entry["fixture"]), fmt, root, manifest, path, line_of(entry, "fixture") or line, test)
    if fmt == "dict":
        rows = rows or []
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConfigError(f"unit test {test!r}: `rows:` of format dict is a list of mappings", path,
                              line_of(entry, "rows") or line)
    elif not isinstance(rows, str):
        raise ConfigError(f"unit test {test!r}: `rows:` of format {fmt} is text", path, line_of(entry, "rows") or line)
    if expect:
        return Fixture("", "", fmt, rows, line)
    text = str(entry.get("input") or "").strip()
    target = ""
    found_ref, found_source = _REF.match(text), _SOURCE.match(text)
    if found_ref:
        target = found_ref.group(2) or found_ref.group(1)
        if target not in manifest.nodes:
            raise ConfigError(f"unit test {test!r}: input {text} names no enabled model or seed", path, line)
    elif found_source:
        target = f"source:{found_source.group(1)}.{found_source.group(2)}"
        if target not in manifest.nodes:
            raise ConfigError(f"unit test {test!r}: input {text} is not a declared source", path, line)
    elif text != "this":
        raise ConfigError(f"unit test {test!r}: given inputs must be a ref(), source() or this, got {text!r}",
                          path, line_of(entry, "input") or line)
    return Fixture(text, target, fmt, rows, line)


def _fixture_file(name: str, fmt: str, root: Path, manifest: "Manifest", path: Path, line: int | None,
                  test: str) -> str:
    """A `fixture:` file: `<test path>/fixtures/**/<name>.csv|.sql`, as dbt looks for it."""
    from batchflow.selection import _project_setting

    suffix = ".sql" if fmt == "sql" else ".csv"
    for folder in _project_setting(manifest, "test-paths", ["tests"]):
        for found in sorted((root / folder / "fixtures").rglob(f"{name}{suffix}")):
            return found.read_text(encoding="utf-8")
    raise ConfigError(f"unit test {test!r}: fixture {name!r}: no {name}{suffix} under a test path's fixtures/",
                      path, line)


def collect(manifest: "Manifest", selection: Any, chosen: set[str] | None = None) -> list[UnitTest]:
    """The unit tests among `chosen` unique ids (all when None) of enabled models, in unique-id order;
    a malformed entry is a ConfigError with its file and line."""
    from batchflow.yamlio import line_of, load_yaml

    root = manifest.project.root
    files: dict[str, Any] = {}
    tests: list[UnitTest] = []
    for uid in sorted(selection.graph.info):
        info = selection.graph.info[uid]
        if info.resource_type != "unit_test" or (chosen is not None and uid not in chosen):
            continue
        if info.path not in files:
            files[info.path] = load_yaml(root / info.path) or {}
        entry = next((e for e in files[info.path].get("unit_tests") or []
                      if isinstance(e, dict) and str(e.get("name")) == info.name), None)
        if entry is None:
            continue
        path = root / info.path
        model = str(entry.get("model"))
        if model not in manifest.nodes or manifest.nodes[model].resource_type != "model":
            if model in manifest.project.models:
                continue  # a disabled model: its unit tests go with it, as in dbt
            raise ConfigError(f"unit test {info.name!r}: model {model!r} does not exist", path,
                              line_of(entry, "model") or line_of(entry))
        given = [_fixture(g, path, root, manifest, info.name) for g in entry.get("given") or []]
        if entry.get("expect") is None:
            raise ConfigError(f"unit test {info.name!r} needs `expect:`", path, line_of(entry))
        expect = _fixture(entry["expect"], path, root, manifest, info.name, expect=True)
        overrides = dict(entry.get("overrides") or {})
        tests.append(UnitTest(uid, info.name, model, info.path, given, expect, overrides,
                              list(manifest.nodes[model].depends_on), line_of(entry)))
    return tests


# ---- SQL of the fixtures ---------------------------------------------------------------------------------


def _literal(value: Any) -> Any:
    from sqlglot import exp

    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.true() if value else exp.false()
    if isinstance(value, (int, float, Decimal)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def _rows_sql(rows: list[dict[str, Any]], columns: list[tuple[str, str | None]]) -> str:
    """BigQuery SQL of `rows` with `columns` (name, BigQuery type or None for untyped): one SELECT per row
    joined by UNION ALL; an empty fixture is a typed SELECT with no rows."""
    from sqlglot import exp

    def select(row: dict[str, Any] | None) -> exp.Select:
        items = []
        for name, dtype in columns:
            value = _literal(None if row is None else row.get(name))
            if dtype is not None:
                value = exp.Cast(this=value, to=exp.DataType.build(dtype, dialect="bigquery"))
            items.append(exp.alias_(value, name, quoted=True))
        return exp.select(*items)

    if not rows:
        return select(None).where(exp.false()).sql("bigquery")
    query: exp.Query = select(rows[0])
    for row in rows[1:]:
        query = exp.union(query, select(row), distinct=False)
    return query.sql("bigquery")


def _csv_rows(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text.strip()))
    return [{k.strip(): (None if v is None or v.strip() == "" or v.strip().lower() == "null" else v.strip())
             for k, v in row.items()} for row in reader]


def fixture_sql(fixture: Fixture, columns: list[tuple[str, str]], compiler: "Compiler", test: UnitTest) -> str:
    """The fixture as SQL the warehouse adapter takes. `columns`: the (name, BigQuery type) it stands
    for, empty when unknown (then the given columns, untyped)."""
    if fixture.format == "sql":
        return compiler.sql_for_warehouse(str(fixture.rows).strip().rstrip(";"))
    rows = fixture.rows if fixture.format == "dict" else _csv_rows(fixture.rows)
    given = list(dict.fromkeys(k for row in rows for k in row))
    known = {n.lower() for n, _ in columns}
    extra = [c for c in given if c.lower() not in known]
    if columns and extra:
        raise CompileError(f"unit test {test.name!r}: {fixture.input or 'expect'} has column(s) "
                           f"{', '.join(extra)} that {'the model does not return' if not fixture.input else 'the relation does not have'}; "
                           f"it has {', '.join(n for n, _ in columns)}", test.path, fixture.line)
    if columns:
        typed = columns if fixture.input else [(n, t) for n, t in columns if n.lower() in {g.lower() for g in given}]
    else:
        typed = [(c, None) for c in given]  # type: ignore[misc]
    by_lower = [{k.lower(): v for k, v in row.items()} for row in rows]
    lowered = [(n.lower(), t) for n, t in typed]
    sql = _rows_sql(by_lower, lowered)  # type: ignore[arg-type]
    if any(n != l for (n, _), (l, _) in zip(typed, lowered)):  # keep the relation's spelling of names
        from sqlglot import exp, parse_one

        tree = parse_one(sql, read="bigquery")
        for select in tree.find_all(exp.Select):
            for item, (name, _) in zip(select.expressions, typed):
                item.set("alias", exp.to_identifier(name, quoted=True))
        sql = tree.sql("bigquery")
    return sql


# ---- running -----------------------------------------------------------------------------------------------


def _cte_name(fixture: Fixture) -> str:
    if fixture.input == "this":
        return CTE_PREFIX + "this"
    return CTE_PREFIX + re.sub(r"\W", "_", fixture.target.replace("source:", ""))


def model_sql(test: UnitTest, compiler: "Compiler", manifest: "Manifest", warehouse: Any) -> str:
    """The model's SQL (as the adapter takes it) with its inputs replaced by the fixtures' CTE names."""
    from batchflow.compiler import RelationText

    model = manifest.project.models[test.model]
    by_target = {f.target: _cte_name(f) for f in test.given if f.target}
    overrides: dict[str, Any] = {}

    def missing(what: str) -> CompileError:
        return CompileError(f"unit test {test.name!r}: model {test.model!r} reads {what}, which is not a "
                            f"`given:` input of the test (dbt needs every ref and source mocked)", test.path, test.line)

    def ref(*args: str, **kwargs: Any) -> str:
        name = args[-1] if args else kwargs.get("name", "")
        if name not in by_target:
            raise missing(f"ref({name!r})")
        return RelationText(by_target[name])

    def source(source_name: str, table_name: str) -> str:
        key = f"source:{source_name}.{table_name}"
        if key not in by_target:
            raise missing(f"source({source_name!r}, {table_name!r})")
        return RelationText(by_target[key])

    overrides.update(ref=ref, source=source)
    if any(f.input == "this" for f in test.given):
        overrides["this"] = RelationText(CTE_PREFIX + "this")
    spec = test.overrides
    unknown = sorted(set(spec) - {"macros", "vars", "env_vars"})
    if unknown:
        raise ConfigError(f"unit test {test.name!r}: `overrides:` takes macros, vars and env_vars, not {unknown[0]!r}",
                          test.path, test.line)
    for name, value in dict(spec.get("macros") or {}).items():
        overrides[str(name)] = (lambda v: lambda *a, **k: v)(value)
    variables = dict(spec.get("vars") or {})
    env_vars = dict(spec.get("env_vars") or {})
    if variables:
        project_vars = manifest.project.vars

        def var(name: str, default: Any = None) -> Any:
            return variables[name] if name in variables else project_vars.get(name, default)

        var.has_var = lambda name: name in variables or name in project_vars  # type: ignore[attr-defined]
        overrides["var"] = var
    if env_vars:
        import os

        overrides["env_var"] = lambda name, default=None: env_vars.get(name, os.environ.get(name, default))
    sql, _ = compiler.render_text(model, model.raw_sql, overrides, warehouse=warehouse)
    return compiler.sql_for_warehouse(sql.strip().rstrip(";"))


def _relation_columns(fixture: Fixture, test: UnitTest, manifest: "Manifest", warehouse: "Warehouse"
                      ) -> list[tuple[str, str]]:
    node = manifest.nodes[test.model if fixture.input == "this" else fixture.target]
    relation = node.relation
    if manifest.target.type == "duckdb":
        from batchflow.relation import Relation

        relation = Relation(None, relation.schema, relation.identifier)
    return [(c.name, c.type) for c in warehouse.columns(relation)]


def _normal(value: Any) -> Any:
    """A value as compared: numbers by their value, everything else as itself."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        return round(float(value), 9)
    return value


def _rows_of(table: Any, columns: list[str]) -> list[tuple[Any, ...]]:
    lowered = {name.lower(): name for name in table.column_names}
    data = table.to_pylist()
    return [tuple(_normal(row[lowered[c.lower()]]) for c in columns) for row in data]


def run_one(test: UnitTest, compiler: "Compiler", manifest: "Manifest", warehouse: "Warehouse") -> NodeResult:
    """Run one unit test: pass when the model returns exactly the expected rows (any order), fail with
    the rows that differ, error when it could not run."""
    started = time.perf_counter()
    result = NodeResult(name=test.name, resource_type="unit_test", materialized="unit_test", status="pass",
                        relation=test.model, path=test.path, line=test.line, started_at=_now(),
                        unique_id=test.unique_id)
    try:
        from batchflow import sql as sqlmod

        ctes = []
        for fixture in test.given:
            columns = _relation_columns(fixture, test, manifest, warehouse)
            ctes.append((_cte_name(fixture), fixture_sql(fixture, columns, compiler, test)))
        actual_sql = sqlmod.add_ctes(model_sql(test, compiler, manifest, warehouse), ctes)
        result.compiled_code = actual_sql
        _, output = warehouse.dry_run(actual_sql)
        out_columns = [(c.name, c.type) for c in output]
        expected_sql = fixture_sql(test.expect, out_columns, compiler, test)
        expected_table = warehouse.query_arrow(expected_sql)
        names = list(expected_table.column_names)
        actual = sorted(_rows_of(warehouse.query_arrow(actual_sql), names), key=repr)
        expected = sorted(_rows_of(expected_table, names), key=repr)
        if actual != expected:
            result.status = "fail"
            result.rows = len(actual)
            result.message = _difference(names, actual, expected)
    except Exception as exc:  # noqa: BLE001 - one test's bug must not stop the others
        errored(result, exc, test.path, test.line)
    result.execution_time = round(time.perf_counter() - started, 3)
    result.completed_at = _now()
    return result


def _difference(columns: list[str], actual: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> str:
    """dbt's 'actual differs from expected' with the rows only one side has."""
    from collections import Counter

    have, want = Counter(actual), Counter(expected)
    missing = list((want - have).elements())
    extra = list((have - want).elements())
    lines = [f"actual differs from expected ({len(actual)} row(s) returned, {len(expected)} expected); "
             f"columns {', '.join(columns)}"]
    lines += [f"  - expected, not returned: {row}" for row in missing[:10]]
    lines += [f"  + returned, not expected: {row}" for row in extra[:10]]
    return "\n".join(lines)
