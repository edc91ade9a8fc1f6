"""Data tests as dbt runs them: generic tests from yml (dbt's built-ins, the project's own `{% test %}`
blocks, package tests such as `dbt_utils.expression_is_true`) on columns, models, seeds and sources, and
singular tests (`.sql` files of `test-paths`).

Each test renders to a SELECT of the failing rows (a generic test through its macro, with its kwargs
rendered as dbt renders them; `where:` through `get_where_subquery`), which dbt's `get_test_sql` wraps
into one row: `failures` (`fail_calc`), `should_warn` (`warn_if`) and `should_error` (`error_if`).
`severity: warn` turns a failure into a warning; `limit` caps the rows counted; `store_failures` keeps the
failing rows in `<schema>_dbt_test__audit.<test name>`. Names and unique ids are those of
`batchflow.selection` (dbt's naming rule).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.errors import BatchflowError, CompileError
from batchflow.project import ModelFile
from batchflow.runner import NodeResult

if TYPE_CHECKING:
    from batchflow.compiler import Compiler, Manifest
    from batchflow.warehouse.base import Warehouse

#: dbt's test statuses: `pass`, `warn` (severity warn, or warn_if but not error_if), `fail`, `error`
#: (the test itself could not run), `skipped` (what it tests did not build)
TEST_STATUSES = ("pass", "warn", "fail", "error", "skipped")
#: test configs and dbt's defaults
DEFAULTS: dict[str, Any] = {"severity": "ERROR", "fail_calc": "count(*)", "warn_if": "!= 0", "error_if": "!= 0",
                            "limit": None, "where": None, "store_failures": None, "store_failures_as": None}
_LOOKS_LIKE_FUNC = re.compile(r"^\s*(env_var|ref|var|source|doc)\s*\(.+\)\s*$", re.DOTALL)
_CONDITION = re.compile(r"^\s*(==|!=|<=|>=|<|>)\s*-?\d+(\.\d+)?\s*$")


@dataclass
class DataTest:
    """One data test, generic or singular."""

    unique_id: str
    name: str
    test_type: str  # "generic" | "singular"
    kind: str  # the generic test's name (not_null, expression_is_true, ...) or the singular file's stem
    path: str  # yml file (generic) or .sql file (singular), relative to the project root
    depends_on: list[str]  # Manifest.nodes keys it reads (the tested node first)
    node: str | None = None  # generic: the Manifest.nodes key of the model, seed or source it tests
    column: str | None = None
    namespace: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # yml config (singular: from its config() call)
    raw_sql: str = ""  # singular tests
    line: int | None = None

    @property
    def key(self) -> str:
        """The runner's name for it."""
        return self.unique_id


def collect(manifest: "Manifest", selection: Any = None, chosen: set[str] | None = None) -> list[DataTest]:
    """The data tests among `chosen` unique ids (every test when None), in unique-id order. A test whose
    tested node is disabled or missing is left out, as dbt leaves it out. `selection` is the project's
    `batchflow.selection.Selection` (built when None); given a set of node names instead, the tests of
    those nodes."""
    nodes: set[str] | None = None
    if selection is None or isinstance(selection, (set, frozenset)):
        from batchflow.selection import build

        nodes = None if selection is None else set(selection)
        selection = build(manifest)
    tests: list[DataTest] = []
    for uid in sorted(selection.graph.info):
        info = selection.graph.info[uid]
        if info.resource_type != "test" or (chosen is not None and uid not in chosen):
            continue
        deps = [selection.keys[d] for d in info.depends_on if d in selection.keys]
        config = {k: v for k, v in info.config.items() if k not in ("enabled", "materialized", "schema")
                  or k == "schema" and v != "dbt_test__audit"}
        if info.test_type == "singular":
            path = manifest.project.root / info.path
            tests.append(DataTest(uid, info.name, "singular", info.name, info.path, deps, config=config,
                                  raw_sql=path.read_text(encoding="utf-8")))
            continue
        ref = selection.tests[uid]
        if ref.node not in manifest.nodes:
            continue
        if nodes is not None and ref.node not in nodes:
            continue
        deps = [ref.node, *[d for d in deps if d != ref.node]]
        tests.append(DataTest(uid, info.name, "generic", ref.kind, info.path, deps, node=ref.node, column=ref.column,
                              namespace=ref.namespace, args=dict(ref.args), config=config, line=ref.line))
    return tests


def errored(result: NodeResult, exc: Exception, path: str | None, line: int | None) -> None:
    """Mark a test's result as an error: a BatchflowError says where (else the test's own place);
    any other exception is one test's bug and is reported with its type."""
    result.status = "error"
    if isinstance(exc, BatchflowError):
        result.message, result.path, result.line = exc.message, exc.path or path, exc.line or line
    else:
        result.message = f"{type(exc).__name__}: {exc}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _stand_in(test: DataTest, manifest: "Manifest", config: dict[str, Any]) -> ModelFile:
    """The ModelFile a test renders as (its name, file, package and config)."""
    root = manifest.project.root
    return ModelFile(name=test.name, path=Path(test.path), abs_path=root / test.path, raw_sql=test.raw_sql,
                     fqn=[manifest.project.name, test.name], config=config)


def _node_call(manifest: "Manifest", key: str) -> str:
    """The Jinja expression dbt puts in a generic test's `model` kwarg: ref('x') or source('a', 'b')."""
    if key.startswith("source:"):
        source, _, table = key[len("source:"):].partition(".")
        return f"source({source!r}, {table!r})"
    return f"ref({key!r})"


def _kwargs_template(test: DataTest, manifest: "Manifest") -> tuple[str, dict[str, Any]]:
    """Jinja that sets `__bf_kwargs` as dbt's add_rendered_test_kwargs does: `model` is
    get_where_subquery(ref(...)); a string that looks like ref()/source()/var()/env_var()/doc() is
    evaluated; any other string holding Jinja is rendered; column_name and everything else stay as written.
    Returns the template and the literal kwargs it starts from."""
    literal: dict[str, Any] = {}
    lines = ["{%- set __bf_kwargs = __bf_literal_kwargs -%}",
             f"{{%- do __bf_kwargs.update({{'model': get_where_subquery({_node_call(manifest, test.node or '')})}}) -%}}"]
    for index, (key, value) in enumerate(test.args.items()):
        if isinstance(value, str) and key != "column_name" and _LOOKS_LIKE_FUNC.match(value):
            lines.append(f"{{%- do __bf_kwargs.update({{{key!r}: ({value})}}) -%}}")
        elif isinstance(value, str) and key != "column_name" and ("{{" in value or "{%" in value):
            lines.append(f"{{%- set __bf_arg_{index} -%}}{value}{{%- endset -%}}")
            lines.append(f"{{%- do __bf_kwargs.update({{{key!r}: __bf_arg_{index}}}) -%}}")
        else:
            literal[key] = value
    return "".join(lines), literal


def _macro_call(test: DataTest) -> str:
    return f"{test.namespace}.test_{test.kind}" if test.namespace else f"test_{test.kind}"


def render_main_sql(test: DataTest, compiler: "Compiler", manifest: "Manifest", warehouse: Any = None
                    ) -> tuple[str, dict[str, Any]]:
    """The SELECT of the failing rows (in the project's dialect) and the test's config (with a singular
    test's config() calls)."""
    config = {**DEFAULTS, **test.config}
    model = _stand_in(test, manifest, config)
    if test.test_type == "singular":
        sql, captured = compiler.render_text(model, test.raw_sql, warehouse=warehouse)
        return sql, {**config, **captured.config}
    macro = _macro_call(test)
    registry = compiler.renderer.registry
    found = registry.find(test.namespace, f"test_{test.kind}") if test.namespace else \
        registry.find(None, f"test_{test.kind}")
    if found is None:
        known = sorted(m[len("test_"):] for pkg in registry.macros.values() for m in pkg if m.startswith("test_"))
        from batchflow.project import did_you_mean

        where = f" in package {test.namespace!r}" if test.namespace else ""
        raise CompileError(f"data test {test.name}: no generic test {test.kind!r}{where} (a `{{% test "
                           f"{test.kind}(model, ...) %}}` block){did_you_mean(test.kind, known)}",
                           test.path, test.line)
    head, literal = _kwargs_template(test, manifest)
    text = head + f"{{{{ {macro}(**__bf_kwargs) }}}}"
    sql, captured = compiler.render_text(model, text, {"__bf_literal_kwargs": literal}, warehouse=warehouse)
    return sql, {**config, **captured.config}


def failing_rows_sql(test: DataTest, manifest: "Manifest", compiler: "Compiler | None" = None) -> str:
    """The SELECT of a test's failing rows, in the project's dialect (for the docs site)."""
    if compiler is None:
        from batchflow.compiler import Compiler

        compiler = Compiler(manifest.project, manifest.target)
    return render_main_sql(test, compiler, manifest)[0].strip()


def _condition(value: Any, key: str, test: DataTest) -> str:
    text = str(value)
    if not _CONDITION.match(text):
        raise CompileError(f"data test {test.name}: `{key}: {text}` must be a comparison with a number, as "
                           "dbt takes it (e.g. `!= 0`, `>10`, `>= 5`)", test.path, test.line)
    return text


def audit_relation(test: DataTest, compiler: "Compiler", config: dict[str, Any]) -> Any:
    """Where `store_failures` keeps a test's failing rows: schema `dbt_test__audit` (or the test's
    `schema:`) through generate_schema_name (`<target schema>_dbt_test__audit`), the test's name as table."""
    conf = {"schema": config.get("schema") or "dbt_test__audit", "alias": config.get("alias") or test.name[:1024],
            "database": config.get("database")}
    return compiler.node_relation("test", test.name, conf, [compiler.project.name, test.name], test.path)


def run_one(test: DataTest, compiler: "Compiler", manifest: "Manifest", warehouse: "Warehouse") -> NodeResult:
    """Run one data test; its status is pass, warn, fail or error (dbt's)."""
    started = time.perf_counter()
    result = NodeResult(name=test.name, resource_type="test", materialized="test", status="pass",
                        relation=test.node or "", path=test.path, line=test.line, started_at=_now())
    result.unique_id = test.unique_id
    try:
        main_sql, config = render_main_sql(test, compiler, manifest, warehouse)
        result.compiled_code = main_sql
        severity = str(config.get("severity") or "ERROR").upper()
        if severity not in ("ERROR", "WARN"):
            raise CompileError(f"data test {test.name}: `severity: {config.get('severity')}` must be error or warn",
                               test.path, test.line)
        warn_if = _condition(config.get("warn_if") or "!= 0", "warn_if", test)
        error_if = _condition(config.get("error_if") or "!= 0", "error_if", test)
        limit = config.get("limit")
        from batchflow.compiler import render_relation

        store = config.get("store_failures")
        if store is None:
            store = config.get("store_failures_as") in ("table", "view")
        if store is True or str(store).lower() == "true":
            audit = audit_relation(test, compiler, config)
            from batchflow.runner import SCHEMA_LOCK

            with SCHEMA_LOCK:
                warehouse.ensure_schema(audit.schema)
            warehouse.create_table_as(audit, compiler.sql_for_warehouse(main_sql.strip().rstrip(";")))
            result.relation = str(audit)
            main_sql = f"select * from {render_relation(audit, compiler.dialect)}"
        wrapped = compiler.renderer.call_macro(
            "get_test_sql", main_sql.strip().rstrip(";"), config.get("fail_calc") or "count(*)", warn_if, error_if,
            None if limit in (None, "") else int(limit))
        row = warehouse.query_arrow(compiler.sql_for_warehouse(wrapped)).to_pylist()
        failures = int((row[0]["failures"] if row else 0) or 0)
        should_warn = bool(row and row[0]["should_warn"])
        should_error = bool(row and row[0]["should_error"])
        result.rows = failures
        if severity == "ERROR" and should_error:
            result.status = "fail"
            result.message = f"Got {failures:,} result(s), configured to fail if {error_if.strip()}"
        elif should_warn:
            result.status = "warn"
            result.message = f"Got {failures:,} result(s), configured to warn if {warn_if.strip()}"
    except Exception as exc:  # noqa: BLE001 - one test's bug must not stop the others
        errored(result, exc, test.path, test.line)
    result.execution_time = round(time.perf_counter() - started, 3)
    result.completed_at = _now()
    return result


def run(tests: list[DataTest], compiler: "Compiler", manifest: "Manifest", warehouse: "Warehouse") -> list[NodeResult]:
    """Run each test in order (the runner runs them on its threads within a build)."""
    return [run_one(t, compiler, manifest, warehouse) for t in tests]


def skipped(test: Any, why: str) -> NodeResult:
    """The result of a test (data or unit) that did not run because what it reads did not build."""
    result = NodeResult(name=test.name, resource_type="unit_test" if getattr(test, "test_type", "") == "unit"
                        else "test", materialized="test", status="skipped", relation=getattr(test, "node", "") or "",
                        path=test.path, message=f"skipped: {why}")
    result.unique_id = test.unique_id
    return result

