"""dbt's hooks: a model's `pre_hook` / `post_hook` (config(), yml `config:`, `+pre-hook` folder configs; they
accumulate down the folders as dbt's do) run against the warehouse just before and after the model is built,
rendered with the model's context (`this` is the model); the project's `on-run-start` / `on-run-end` run at
the start and the end of `run`, `build`, `seed` and `test`, rendered with dbt's run context (`target`, `var`,
macros; `results` and `schemas` at the end)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.errors import BatchflowError, ConfigError
from batchflow.project import ModelFile

if TYPE_CHECKING:
    from batchflow.compiler import Compiler, Manifest, Node
    from batchflow.runner import NodeResult
    from batchflow.warehouse.base import Warehouse

#: the spellings of each model hook key (dbt_project.yml uses dashes, config() underscores)
MODEL_HOOK_KEYS = {"pre": ("pre-hook", "pre_hook"), "post": ("post-hook", "post_hook")}
PROJECT_HOOK_KEYS = ("on-run-start", "on-run-end")


def _statements(value: Any, where: str, path: str | Path | None) -> list[str]:
    """A hook value as SQL texts: a string, a list of strings, or dbt's `{sql: ..., transaction: ...}`."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, dict):
            if "sql" not in item:
                raise ConfigError(f"{where}: a hook mapping needs `sql:` (and optionally `transaction:`)", path)
            item = item["sql"]
        if not isinstance(item, str):
            raise ConfigError(f"{where}: a hook is SQL text, got {type(item).__name__}", path)
        out.append(item)
    return out


def model_hooks(node: "Node", when: str) -> list[str]:
    """The `pre` or `post` hooks of a model, in the order dbt runs them (project folders, then yml, then
    config())."""
    found: list[str] = []
    for key in MODEL_HOOK_KEYS[when]:
        found += _statements(node.config.get(key), f"model {node.name}: `{key}`", node.path)
    return found


def _execute(compiler: "Compiler", warehouse: "Warehouse", model: ModelFile, text: str,
             extra: dict[str, Any] | None = None) -> str:
    sql, _ = compiler.render_text(model, text, extra, warehouse=warehouse)
    sql = sql.strip().rstrip(";").strip()
    if sql:
        warehouse.execute(compiler.sql_for_warehouse(sql))
    return sql


def run_model_hooks(node: "Node", when: str, compiler: "Compiler", warehouse: "Warehouse") -> int:
    """Render and run a model's pre or post hooks against the warehouse; returns how many ran. A failing
    hook fails the model with its error."""
    hooks = model_hooks(node, when)
    if not hooks:
        return 0
    model = compiler.project.models[node.name]
    for index, text in enumerate(hooks):
        try:
            _execute(compiler, warehouse, model, text)
        except BatchflowError as exc:
            raise type(exc)(f"{when}-hook {index + 1} of {node.name}: {exc.message}", exc.path or node.path,
                            exc.line) from None
    return len(hooks)


def project_hooks(compiler: "Compiler", key: str) -> list[str]:
    """`on-run-start` or `on-run-end` of the project file, as SQL texts."""
    return _statements(compiler.project.hooks.get(key), f"`{key}`", compiler.project.project_file)


def run_project_hooks(key: str, compiler: "Compiler", manifest: "Manifest", warehouse: "Warehouse",
                      results: list["NodeResult"] | None = None) -> list["NodeResult"]:
    """Run `on-run-start` / `on-run-end`; one result per hook, as dbt reports them (`operation` nodes named
    `<project>-on-run-start-<n>`). On `on-run-end`, `results` (each with `.status`, `.node.name`,
    `.message`) and `schemas` are in the context."""
    from batchflow.runner import NodeResult

    project = compiler.project
    hooks = project_hooks(compiler, key)
    out: list[NodeResult] = []
    if not hooks:
        return out
    path = Path(project.project_file.name)
    extra: dict[str, Any] = {}
    if key == "on-run-end":
        schemas = sorted({n.relation.schema for n in manifest.nodes.values() if n.resource_type != "source"})
        extra = {"schemas": schemas, "database_schemas": [(manifest.target.database, s) for s in schemas],
                 "results": [_RunResult(r) for r in results or []]}
    for index, text in enumerate(hooks):
        name = f"{project.name}-{key}-{index}"
        started = time.perf_counter()
        result = NodeResult(name=name, resource_type="operation", materialized="hook", status="success",
                            path=str(path), line=project.key_lines.get(key), unique_id=f"operation.{project.name}.{name}")
        model = ModelFile(name=name, path=path, abs_path=project.project_file, raw_sql=text,
                          fqn=[project.name, "hooks", name], config={})
        try:
            result.compiled_code = _execute(compiler, warehouse, model, text, extra)
        except BatchflowError as exc:
            result.status = "error"
            result.message = f"{key} hook {index + 1}: {exc.message}"
        result.execution_time = round(time.perf_counter() - started, 3)
        out.append(result)
    return out


class _RunResult:
    """One entry of `results` in on-run-end, with the attributes dbt's RunResult has that hooks read."""

    def __init__(self, result: "NodeResult"):
        self.status = result.status
        self.message = result.message
        self.execution_time = result.execution_time
        self.failures = result.rows if result.resource_type in ("test", "unit_test") else None
        self.node = {"name": result.name, "resource_type": result.resource_type,
                     "unique_id": result.unique_id or result.name, "relation_name": result.relation}
        self.adapter_response = {"rows_affected": result.rows}
