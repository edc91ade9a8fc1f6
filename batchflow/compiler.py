"""Compiling a project: render every model's Jinja, capture config and dependencies, parse the SQL.

The pipeline per model is render → parse → inline ephemerals, each step a plain function over
plain data. The result is a `Manifest`: nodes with compiled BigQuery SQL and their dependencies.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2

from batchflow import sql as sqlmod
from batchflow.errors import BatchflowError, CompileError, ConfigError
from batchflow.graph import Graph, NodeInfo
from batchflow.project import ModelFile, Project, Target, merge_configs
from batchflow.relation import Relation

BUILTIN_MACRO_DIR = Path(__file__).parent / "macros"
MATERIALIZATIONS = ("view", "table", "incremental", "ephemeral", "batch")
EPHEMERAL_PREFIX = "__bf_ephemeral__"


@dataclass
class Node:
    """A model, seed or source after compiling."""

    name: str
    resource_type: str  # "model" | "seed" | "source"
    path: str  # relative to the project root ("" for sources)
    relation: Relation
    config: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)  # node names (sources: "source:<src>.<table>")
    raw_sql: str = ""
    compiled_sql: str = ""  # BigQuery SQL, ephemerals inlined
    description: str = ""
    columns: dict[str, Any] = field(default_factory=dict)
    sample: Path | None = None  # sources: the CSV standing in for the table on the local target

    @property
    def materialized(self) -> str:
        """The model's materialization (seeds and sources report their resource type)."""
        if self.resource_type != "model":
            return self.resource_type
        return str(self.config.get("materialized", "view"))

    @property
    def tags(self) -> list[str]:
        """Tags from project, yml and in-file config."""
        tags = self.config.get("tags", [])
        return [tags] if isinstance(tags, str) else list(tags)


@dataclass
class Manifest:
    """The compiled project: every node, and the graph between them."""

    project: Project
    target: Target
    nodes: dict[str, Node]
    graph: Graph

    def node(self, name: str) -> Node:
        """A node by name; a missing name is a usage error with a suggestion."""
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(f"no node named {name!r}{_suggest(name, self.nodes)}") from None


def _suggest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Relations


def model_relation(model_config: dict[str, Any], name: str, target: Target) -> Relation:
    """Where a model lives: dbt's rule, `<target schema>_<custom schema>` when `schema` is set."""
    schema = target.schema
    if model_config.get("schema"):
        schema = f"{target.schema}_{model_config['schema']}"
    database = model_config.get("database") or model_config.get("project") or target.database
    return Relation(database, schema, str(model_config.get("alias") or name))


def batch_results_relations(relation: Relation) -> dict[str, Relation]:
    """The relations a batch model owns besides its results table (`relation` itself)."""
    return {
        "requests": relation.with_identifier(f"{relation.identifier}__requests"),
        "responses": relation.with_identifier(f"{relation.identifier}__responses"),
    }


# ---------------------------------------------------------------------------------------------
# Jinja


class _Captured:
    """What rendering one model records: config() calls and ref()/source() dependencies."""

    def __init__(self, base_config: dict[str, Any]):
        self.config = dict(base_config)
        self.refs: list[str] = []
        self.sources: list[tuple[str, str]] = []


class _ThisRelation:
    """`{{ this }}`: resolved when printed, so a config(alias=...) earlier in the file is honoured."""

    def __init__(self, resolve: Callable[[], Relation]):
        self._resolve = resolve

    def __str__(self) -> str:
        return self._resolve().render()

    def __getattr__(self, item: str) -> Any:
        return getattr(self._resolve(), item)


def _macro_source(project: Project) -> tuple[str, list[tuple[int, Path]]]:
    """All built-in then project macro files as one template (later definitions win), with the
    starting line of each file so errors can be mapped back to it."""
    files = sorted(BUILTIN_MACRO_DIR.glob("*.sql")) + list(project.macro_files)
    chunks: list[str] = []
    offsets: list[tuple[int, Path]] = []
    line = 1
    for path in files:
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        offsets.append((line, path))
        chunks.append(text)
        line += text.count("\n")
    return "".join(chunks), offsets


class JinjaRenderer:
    """The Jinja environment of a project: one compiled macro module, one template per model."""

    MACROS = "<macros>"

    def __init__(self, project: Project, target: Target):
        self.project = project
        self.target = target
        self.env = jinja2.Environment(
            loader=jinja2.FunctionLoader(self._load),
            undefined=jinja2.StrictUndefined,
            extensions=["jinja2.ext.do"],
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._macro_text, self._macro_offsets = _macro_source(project)
        self._check_macro_files()
        self._macros = self._template(self.MACROS)

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]]:
        # The filename becomes the code object's filename, which map_error reads from tracebacks.
        if name == self.MACROS:
            return self._macro_text, name, lambda: True
        return self.project.models[name].raw_sql, name, lambda: True

    def _check_macro_files(self) -> None:
        """Syntax-check each macro file alone, so an error names the right file and line."""
        for _, path in self._macro_offsets:
            try:
                self.env.parse(path.read_text(), filename=str(path))
            except jinja2.TemplateSyntaxError as exc:
                raise CompileError(f"Jinja syntax error: {exc.message}", self._display(path), exc.lineno) from None

    def _display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.project.root))
        except ValueError:
            return str(path)

    def _template(self, name: str) -> jinja2.Template:
        return self.env.get_template(name)

    def map_error(self, exc: BaseException, model: ModelFile) -> CompileError:
        """A Jinja error as a CompileError naming the model or macro file and line."""
        if isinstance(exc, jinja2.TemplateSyntaxError):
            if exc.name == self.MACROS:
                return self._macro_error(exc.message or str(exc), exc.lineno)
            return CompileError(f"Jinja syntax error: {exc.message}", model.path, exc.lineno)
        if isinstance(exc, CompileError) and exc.path is not None:
            return exc
        line: int | None = None
        where: tuple[str, int] | None = None
        tb = exc.__traceback__
        while tb is not None:  # Jinja rewrites frames to template names and lines: take the deepest
            filename = tb.tb_frame.f_code.co_filename
            if filename == self.MACROS:
                where = ("macro", tb.tb_lineno)
            elif filename == model.name:
                where = ("model", tb.tb_lineno)
            tb = tb.tb_next
        message = exc.message if isinstance(exc, BatchflowError) else f"{type(exc).__name__}: {exc}"
        if where and where[0] == "macro":
            return self._macro_error(message, where[1])
        if where:
            line = where[1]
        if isinstance(exc, ConfigError):
            return ConfigError(message, model.path, line)
        return CompileError(message, model.path, line)

    def _macro_error(self, message: str, line: int | None) -> CompileError:
        path, local = self._macro_offsets[0][1], line
        for start, file in self._macro_offsets:
            if line is not None and line >= start:
                path, local = file, line - start + 1
        return CompileError(message, self._display(path), local)

    def call_macro(self, name: str, *args: Any, **kwargs: Any) -> str:
        """Render one macro call outside any model (the runner uses the response flatteners)."""
        module = self._macros.make_module(vars={})
        return str(getattr(module, name)(*args, **kwargs)).strip()

    def render(self, model: ModelFile, context: dict[str, Any]) -> str:
        """Render one model with `context` (ref, source, config, ...) and the macros bound to it."""
        try:
            macros = self._macros.make_module(vars=context)
            names = {k: getattr(macros, k) for k in dir(macros) if not k.startswith("_")}
            return self._template(model.name).render({**context, **names})
        except Exception as exc:  # noqa: BLE001 - every render failure is reported with its location
            raise self.map_error(exc, model) from None


# ---------------------------------------------------------------------------------------------
# Compiling


class Compiler:
    """Renders the models of a project for one target and assembles the manifest."""

    def __init__(self, project: Project, target: Target):
        self.project = project
        self.target = target
        self.renderer = JinjaRenderer(project, target)

    # -- context ---------------------------------------------------------------------------------
    def _context(self, model: ModelFile, captured: _Captured, is_incremental: bool) -> dict[str, Any]:
        project, target = self.project, self.target

        def ref(*args: str, **kwargs: Any) -> str:
            name = args[-1] if args else kwargs.get("name", "")
            if name in project.models:
                captured.refs.append(name)
                if self._materialized(name) == "ephemeral":
                    return EPHEMERAL_PREFIX + name
                return model_relation(self._base_config(name), name, target).render()
            if name in project.seeds:
                captured.refs.append(name)
                return model_relation(project.seeds[name].config, name, target).render()
            choices = list(project.models) + list(project.seeds)
            raise CompileError(f"ref({name!r}) names no model or seed{_suggest(name, choices)}")

        def source(source_name: str, table_name: str) -> str:
            table = project.sources.get((source_name, table_name))
            if table is None:
                choices = [f"{s}.{t}" for s, t in project.sources]
                raise CompileError(
                    f"source({source_name!r}, {table_name!r}) is not declared"
                    f"{_suggest(f'{source_name}.{table_name}', choices)}"
                )
            captured.sources.append((source_name, table_name))
            return source_relation(self._render_text(table.database), self._render_text(table.schema) or "",
                                   table.identifier, target).render()

        def config(*args: Any, **kwargs: Any) -> str:
            if args and isinstance(args[0], dict):
                kwargs = {**args[0], **kwargs}
            captured.config = merge_configs(captured.config, kwargs)
            return ""

        def var(name: str, default: Any = _MISSING) -> Any:
            if name in project.vars:
                return project.vars[name]
            if default is _MISSING:
                raise CompileError(f"var({name!r}) is not defined; set it under vars: or pass --vars")
            return default

        def env_var(name: str, default: Any = _MISSING) -> Any:
            if name in os.environ:
                return os.environ[name]
            if default is _MISSING:
                raise CompileError(f"env_var({name!r}) is not set and has no default")
            return default

        this = _ThisRelation(lambda: model_relation(captured.config, model.name, target))
        return {
            "ref": ref,
            "source": source,
            "config": config,
            "var": var,
            "env_var": env_var,
            "this": this,
            "target": _target_context(target),
            "is_incremental": lambda: is_incremental,
            "project_name": project.name,
            "model": {"name": model.name, "path": str(model.path)},
            "log": lambda *a, **k: "",
        }

    def _base_config(self, name: str) -> dict[str, Any]:
        return self.project.models[name].config

    def _materialized(self, name: str) -> str:
        """A model's materialization, known only after rendering it (config() may set it)."""
        if name in self._rendered:
            return str(self._rendered[name][1].config.get("materialized", "view"))
        return str(self._base_config(name).get("materialized", "view"))

    # -- steps -----------------------------------------------------------------------------------
    def render_model(self, name: str, is_incremental: bool = False) -> tuple[str, _Captured]:
        """Render one model's Jinja; returns the SQL and what the render captured."""
        model = self.project.models[name]
        captured = _Captured(model.config)
        sql = self.renderer.render(model, self._context(model, captured, is_incremental))
        return sql, captured

    def compile(self) -> Manifest:
        """Render and parse every model; build the graph; inline ephemeral models."""
        self._rendered: dict[str, tuple[str, _Captured]] = {}
        # Materialization of a ref'd model may be set by its own config() call: render the
        # ephemeral candidates' configs first by rendering in two passes (cheap: no SQL parsing).
        for name in self.project.models:
            self._rendered[name] = self.render_model(name)
        # Disabled models (config enabled=false) disappear, as in dbt; a ref to one is an error.
        disabled = [n for n, (_, c) in self._rendered.items() if c.config.get("enabled", True) is False]
        for name in disabled:
            del self._rendered[name]
        for name, (_, captured) in self._rendered.items():
            hit = next((r for r in captured.refs if r in disabled), None)
            if hit:
                raise CompileError(f"ref({hit!r}) points at a disabled model", self.project.models[name].path)
        # Second pass only for models that ref an ephemeral (its name was unknown during pass 1).
        for name, (_, captured) in list(self._rendered.items()):
            if any(self._materialized(r) == "ephemeral" for r in captured.refs if r in self.project.models):
                self._rendered[name] = self.render_model(name)

        nodes: dict[str, Node] = {}
        for (source_name, table_name), table in self.project.sources.items():
            key = f"source:{source_name}.{table_name}"
            nodes[key] = Node(
                name=key,
                resource_type="source",
                path=str(table.yml_path.relative_to(self.project.root)) if table.yml_path else "",
                relation=source_relation(self._render_text(table.database), self._render_text(table.schema) or "",
                                         table.identifier, self.target),
                description=table.description,
                columns={k: v.__dict__ for k, v in table.columns.items()},
                sample=table.sample,
            )
        for name, seed in self.project.seeds.items():
            nodes[name] = Node(
                name=name,
                resource_type="seed",
                path=str(seed.path),
                relation=model_relation(seed.config, name, self.target),
                config=dict(seed.config),
                description=seed.description,
                columns={k: v.__dict__ for k, v in seed.columns.items()},
            )
        for name, (sql, captured) in self._rendered.items():
            model = self.project.models[name]
            config = captured.config
            _check_config(model, config)
            deps = list(dict.fromkeys(captured.refs + [f"source:{s}.{t}" for s, t in captured.sources]))
            nodes[name] = Node(
                name=name,
                resource_type="model",
                path=str(model.path),
                relation=model_relation(config, name, self.target),
                config=config,
                depends_on=deps,
                raw_sql=model.raw_sql,
                compiled_sql=sql,
                description=model.description,
                columns={k: v.__dict__ for k, v in model.columns.items()},
            )
        graph = Graph(
            {n.name: set(n.depends_on) for n in nodes.values()},
            {n.name: _node_info(n) for n in nodes.values()},
        )
        manifest = Manifest(self.project, self.target, nodes, graph)
        for name in graph.topological_order():
            node = nodes[name]
            if node.resource_type == "model":
                node.compiled_sql = self.finish_sql(manifest, node, node.compiled_sql)
        return manifest

    def _render_text(self, text: str | None) -> str | None:
        """Render Jinja in a yml value such as `schema: "{{ target.schema }}"`."""
        if not text or "{{" not in text:
            return text
        env_context = {"target": _target_context(self.target), "var": lambda n, d=None: self.project.vars.get(n, d),
                       "env_var": lambda n, d="": os.environ.get(n, d)}
        return self.renderer.env.from_string(text).render(env_context).strip()

    def finish_sql(self, manifest: Manifest, node: Node, sql: str) -> str:
        """Parse rendered SQL (errors name the source file and line) and inline ephemeral refs."""
        sqlmod.parse_bigquery(sql, path=node.path, raw_source=node.raw_sql)
        ephemerals = _ephemeral_chain(manifest, node)
        if not ephemerals:
            return sql
        ctes = [(EPHEMERAL_PREFIX + e.name, _strip_semicolon(e.compiled_sql)) for e in ephemerals]
        return sqlmod.add_ctes(_strip_semicolon(sql), ctes)

    def compile_for_run(self, manifest: Manifest, name: str, is_incremental: bool) -> str:
        """Re-render an incremental model once the runner knows whether its table exists."""
        sql, _ = self.render_model(name, is_incremental=is_incremental)
        return self.finish_sql(manifest, manifest.nodes[name], sql)


_MISSING = object()


def source_relation(database: str | None, schema: str, identifier: str, target: Target) -> Relation:
    """A declared source table; on DuckDB the database part is dropped (one file, one catalog)."""
    if target.type == "duckdb":
        return Relation(None, schema, identifier)
    return Relation(database or target.database, schema, identifier)


def _target_context(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "type": target.type,
        "schema": target.schema,
        "dataset": target.schema,
        "database": target.database,
        "project": target.database,
        "threads": target.threads,
        "profile_name": target.profile,
    }


def _check_config(model: ModelFile, config: dict[str, Any]) -> None:
    materialized = config.get("materialized", "view")
    if materialized not in MATERIALIZATIONS:
        raise ConfigError(
            f"unknown materialization {materialized!r}; choose one of {', '.join(MATERIALIZATIONS)}"
            f"{_suggest(str(materialized), MATERIALIZATIONS)}",
            model.path,
        )
    if materialized == "batch" and not config.get("model"):
        raise ConfigError("a batch model needs config(model='gemini-...')", model.path)
    if materialized == "incremental" and config.get("unique_key") is not None:
        key = config["unique_key"]
        if not isinstance(key, (str, list)):
            raise ConfigError("unique_key must be a column name or a list of column names", model.path)


def _strip_semicolon(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _ephemeral_chain(manifest: Manifest, node: Node) -> list[Node]:
    """Ephemeral models this node refs directly. Each one's compiled SQL already inlines its own
    ephemeral refs (nodes are finished in topological order), so one level is enough."""
    deps = (manifest.nodes.get(d) for d in node.depends_on)
    return [d for d in deps if d is not None and d.materialized == "ephemeral"]


def _node_info(node: Node) -> NodeInfo:
    return NodeInfo(
        name=node.name,
        resource_type=node.resource_type,
        path=node.path,
        tags=node.tags,
        materialized=node.materialized,
        fqn=[node.name],
    )
