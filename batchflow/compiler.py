"""Compiling a project: render every model's Jinja, capture config and dependencies, parse the SQL.

The pipeline per model is render → parse → inline ephemerals, each step a plain function over
plain data. The result is a `Manifest`: nodes with compiled BigQuery SQL and their dependencies.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from batchflow import __version__
from batchflow.cachefile import read_cache, write_cache
from batchflow.compile_steps import STEPS, SqlUnit, cached, run_steps
from batchflow.errors import BatchflowError, CompileError, ConfigError
from batchflow.graph import Graph, NodeInfo
from batchflow.project import (
    ConfigWarning,
    ModelFile,
    Project,
    SettingsChecker,
    Target,
    merge_configs,
    partial_parse_enabled,
    render_simple,
    settings_spec,
    simple_template,
)
from batchflow.relation import Relation

if TYPE_CHECKING:
    import jinja2

# jinja2 (and sqlglot, through batchflow.sql) are imported when first needed: `batchflow ls` on a
# project whose renders are all in the partial-parse cache never needs either.

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
    #: why this model did not compile (compile(keep_going=True)); building it raises this error
    error: BatchflowError | None = None
    #: the model reads `execute` or runs queries: `compiled_sql` is its parse-time render (execute false),
    #: and the runner builds it from `Compiler.sql_for_build`, rendered again with execute true
    renders_at_build: bool = False

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
    #: every configuration warning of this compile: the project's, the target's, then those of config() calls
    warnings: list[ConfigWarning] = field(default_factory=list)
    #: models that failed to render or parse, with their error (compile(keep_going=True) only)
    errors: dict[str, BatchflowError] = field(default_factory=dict)

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
    """The relations a batch model owns besides its results table (`relation` itself); `todo` is a
    run's scratch table (what to send), dropped when the run ends."""
    return {
        "requests": relation.with_identifier(f"{relation.identifier}__requests"),
        "responses": relation.with_identifier(f"{relation.identifier}__responses"),
        "todo": relation.with_identifier(f"{relation.identifier}__todo"),
    }


# ---------------------------------------------------------------------------------------------
# Jinja


class _Captured:
    """What rendering one model records: config() calls and ref()/source() dependencies."""

    def __init__(self, base_config: dict[str, Any]):
        self.config = dict(base_config)
        self.refs: list[str] = []
        self.sources: list[tuple[str, str]] = []
        self.late = False  # the render read `execute` or ran a query: it is rendered again when built


class _ThisRelation:
    """`{{ this }}`: resolved when printed, so a config(alias=...) earlier in the file is honoured."""

    def __init__(self, resolve: Callable[[], Relation], dialect: str = "bigquery",
                 materialized: Callable[[], str] = lambda: "view"):
        self._resolve = resolve
        self._dialect = dialect
        self._materialized = materialized

    @property
    def is_view(self) -> bool:
        return self._materialized() == "view"

    @property
    def is_table(self) -> bool:
        return self._materialized() != "view"

    @property
    def relation(self) -> Relation:
        return self._resolve()

    @property
    def name(self) -> str:
        return self._resolve().identifier

    def __str__(self) -> str:
        return render_relation(self._resolve(), self._dialect)

    def render(self) -> str:
        return str(self)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._resolve(), item)


def written_dialect(project: Project, target: Target) -> str:
    """The dialect the project's models are written in: the project file's `dialect:`, else the target's
    `dialect:`, else BigQuery."""
    return str(getattr(project, "dialect", None) or target.settings.get("dialect") or "bigquery")


def _macro_source(project: Project, dialect: str = "bigquery") -> tuple[str, list[tuple[str, Path, str]]]:
    """Every macro file: batchflow's built-ins (package `dbt`), the packages', then the project's, as
    (package, path, text), and one text of them all (the partial-parse cache's key)."""
    from batchflow.jinja_context import INTERNAL

    files: list[tuple[str, Path, str]] = [(INTERNAL, p, p.read_text()) for p in sorted(BUILTIN_MACRO_DIR.glob("*.sql"))]
    for package, path in getattr(project, "package_macro_files", []):
        files.append((package, path, path.read_text()))
    files += [(project.name, p, p.read_text()) for p in project.macro_files]
    key = "\0".join(f"{pkg}\0{path}\0{text}" for pkg, path, text in files)
    key += f"\0{dialect}\0{getattr(project, 'dispatch', [])!r}"
    return key, files


class JinjaRenderer:
    """The Jinja environment of a project: macros by package (see batchflow.jinja_context), one template
    per model."""

    def __init__(
        self, project: Project, target: Target, macros_known_good: bool = False,
        macro_source: tuple[str, list[tuple[str, Path, str]]] | None = None,
    ):
        """`macros_known_good`: this exact macro text compiled before (the partial-parse cache says so),
        so checking it can wait until a macro is needed; otherwise syntax errors surface here."""
        from batchflow.jinja_context import MacroRegistry

        self.project = project
        self.target = target
        self._env: jinja2.Environment | None = None
        self._macro_module: Any = None  # set once every macro block has been syntax-checked
        dialect = written_dialect(project, target)
        self._macro_text, files = macro_source or _macro_source(project, dialect)
        self.registry = MacroRegistry(project.name, dialect, getattr(project, "dispatch", None))
        for package, path, text in files:
            self.registry.add_file(text, path, package)
        self._simple: dict[str, list[Any] | None] = {}
        if not macros_known_good:
            self._check_macro_files()

    @property
    def macro_text(self) -> str:
        """Every macro file (built-in, packages', the project's) as one text."""
        return self._macro_text

    @property
    def env(self) -> jinja2.Environment:
        """The Jinja environment (created on first use)."""
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(
                loader=jinja2.FunctionLoader(self._load),
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"],
                keep_trailing_newline=True,
                auto_reload=False,
            )
            from batchflow.jinja_context import DBT_FILTERS

            self._env.filters.update(DBT_FILTERS)
            self.registry.env = self._env
        return self._env

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]]:
        # The filename becomes the code object's filename, which map_error reads from tracebacks.
        return self.project.models[name].raw_sql, name, lambda: True

    def _check_macro_files(self) -> None:
        """Syntax-check every macro block, so an error names the right file and line (blocks keep their
        file's line numbers)."""
        import jinja2

        env = self.env
        for package in self.registry.macros.values():
            for macro in package.values():
                try:
                    env.parse(macro.source, filename=str(macro.path))
                except jinja2.TemplateSyntaxError as exc:
                    raise CompileError(f"Jinja syntax error: {exc.message}", self._display(macro.path),
                                       exc.lineno) from None
        for path, text in self.registry.loose:
            try:
                env.parse(text, filename=str(path))
            except jinja2.TemplateSyntaxError as exc:
                raise CompileError(f"Jinja syntax error: {exc.message}", self._display(path), exc.lineno) from None
        self._macro_module = True

    def _display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.project.root))
        except ValueError:
            return str(path)

    def _template(self, name: str) -> jinja2.Template:
        return self.env.get_template(name)

    def map_error(self, exc: BaseException, model: ModelFile) -> CompileError:
        """A Jinja error as a CompileError naming the model or macro file and line."""
        import jinja2

        if isinstance(exc, jinja2.TemplateSyntaxError):
            if exc.filename and exc.filename != model.name:
                return CompileError(f"Jinja syntax error: {exc.message}", self._display(Path(exc.filename)),
                                    exc.lineno)
            return CompileError(f"Jinja syntax error: {exc.message}", model.path, exc.lineno)
        if isinstance(exc, CompileError) and exc.path is not None:
            return exc
        macro_files = {str(m.path) for pkg in self.registry.macros.values() for m in pkg.values()}
        where: tuple[str, int] | None = None
        tb = exc.__traceback__
        while tb is not None:  # Jinja rewrites frames to template names and lines: take the deepest
            filename = tb.tb_frame.f_code.co_filename
            if filename in macro_files:
                where = (filename, tb.tb_lineno)
            elif filename == model.name:
                where = ("", tb.tb_lineno)
            tb = tb.tb_next
        message = exc.message if isinstance(exc, BatchflowError) else f"{type(exc).__name__}: {exc}"
        if where and where[0]:
            return CompileError(message, self._display(Path(where[0])), where[1])
        line = where[1] if where else None
        if isinstance(exc, ConfigError):
            return ConfigError(message, model.path, line)
        return CompileError(message, model.path, line)

    def scope(self, context: dict[str, Any], package: str | None = None,
              reads: Callable[[str], None] | None = None) -> Any:
        """Name lookup for one render: `context`, then macros and package namespaces."""
        from batchflow.jinja_context import Scope

        _ = self.env  # the registry compiles macros with it
        scope = Scope(self.registry, context, package, reads)
        adapter = context.get("adapter")
        if isinstance(adapter, _Adapter) and adapter.scope is None:
            adapter.scope = scope
        return scope

    def call_macro(self, name: str, *args: Any, **kwargs: Any) -> str:
        """Render one macro call outside any model (the runner uses the response flatteners)."""
        from batchflow.jinja_context import static_context

        scope = self.scope({**static_context(), "target": _target_context(self.target),
                            "adapter": _Adapter(self, self.target), "execute": False})
        macro = self.registry.find(None, name)
        if macro is None:
            raise CompileError(f"macro {name!r} is not defined")
        return str(scope.generator(macro)(*args, **kwargs)).strip()

    def render(self, model: ModelFile, context: dict[str, Any], reads: Callable[[str], None] | None = None) -> str:
        """Render one model with `context` (ref, source, config, ...); macros resolve through its scope."""
        from batchflow.jinja_context import render_template

        try:
            return render_template(self._template(model.name),
                                   self.scope(context, getattr(model, "package", None), reads))
        except Exception as exc:  # noqa: BLE001 - every render failure is reported with its location
            raise self.map_error(exc, model) from None

    def render_fast(self, model: ModelFile, context: dict[str, Any],
                    reads: Callable[[str], None] | None = None) -> str | None:
        """`render` without Jinja's template compiler, for models that are literal SQL plus
        `{{ expression }}`s of calls, names, attributes and literals (see project.render_simple).
        None when the model needs Jinja, or when evaluating failed (the caller then calls `render`
        with a fresh context: calls made here may have recorded refs and configs)."""
        pieces = self._simple.get(model.name, False)
        if pieces is False:
            pieces = self._simple[model.name] = simple_template(model.raw_sql)
        if pieces is None:
            return None
        return render_simple(pieces, self.scope(context, getattr(model, "package", None), reads))


class _Adapter:
    """dbt's `adapter` object: `dispatch` (for the dialect the project is written in), `quote`, and
    `get_columns_in_relation` / `get_relation`, which ask the warehouse while executing (empty otherwise)."""

    def __init__(self, renderer: JinjaRenderer, target: Target, warehouse: Any = None):
        self._renderer = renderer
        self._target = target
        self._warehouse = warehouse  # given only while the runner builds the model (execute true)
        self.scope: Any = None
        self.type = lambda: target.type

    def dispatch(self, macro_name: str, macro_namespace: str | None = None, packages: Any = None) -> Any:
        registry = self._renderer.registry
        if macro_namespace is None and isinstance(packages, str):
            macro_namespace = packages
        if macro_namespace is not None and "." in macro_name:
            raise CompileError(f"In adapter.dispatch: macro_name {macro_name!r} must not contain a dot")
        searched = []
        for package, name in registry.dispatch_candidates(macro_name, macro_namespace):
            macro = registry.find(None, name) if package is None else registry.macros.get(package, {}).get(name)
            searched.append(name if package is None else f"{package}.{name}")
            if macro is not None:
                return self.scope.generator(macro)
        raise CompileError(f"In dispatch: No macro named {macro_name!r} found within namespace "
                           f"{macro_namespace or registry.root!r}; searched for: {', '.join(searched)}")

    def quote(self, identifier: str) -> str:
        quote = '"' if self._renderer.registry.dialect != "bigquery" else "`"
        return f"{quote}{identifier}{quote}"

    def quote_as_configured(self, identifier: str, quote_key: str = "identifier") -> str:
        return self.quote(identifier)

    def _relation_of(self, relation: Any) -> Relation:
        if isinstance(relation, _RenderedRelation):
            return relation.relation
        if isinstance(relation, Relation):
            return relation
        if isinstance(relation, _ThisRelation):
            return relation.relation
        parts = [p.strip('`"') for p in str(relation).split(".")]
        return Relation(*([None] * (3 - len(parts)) + parts[-3:]))  # type: ignore[arg-type]

    def get_columns_in_relation(self, relation: Any) -> list[_Column]:
        if self._warehouse is None:
            return []
        relation = self._warehouse_relation(self._relation_of(relation))
        return [_Column(c.name, c.type) for c in self._warehouse.columns(relation)]

    def _warehouse_relation(self, relation: Relation) -> Relation:
        return Relation(None, relation.schema, relation.identifier) if self._target.type == "duckdb" else relation

    def get_relation(self, database: str | None, schema: str, identifier: str) -> Any:
        if self._warehouse is None:
            return None
        relation = Relation(database, schema, identifier)
        if self._warehouse.kind(self._warehouse_relation(relation)) is None:
            return None
        return _RenderedRelation(relation, self._renderer.registry.dialect)

    def load_relation(self, relation: Any) -> Any:
        rel = self._relation_of(relation)
        return self.get_relation(rel.database, rel.schema, rel.identifier)

    def __getattr__(self, name: str) -> Any:
        raise CompileError(f"adapter.{name} is not supported by batchflow")


@dataclass
class _Column:
    """A warehouse column as dbt's Column: `name`, `data_type`, `quoted`."""

    name: str
    data_type: str

    @property
    def column(self) -> str:
        return self.name

    @property
    def dtype(self) -> str:
        return self.data_type

    @property
    def quoted(self) -> str:
        return f'"{self.name}"'

    def is_string(self) -> bool:
        return self.data_type.upper() in ("STRING", "VARCHAR", "TEXT")

    def is_number(self) -> bool:
        return self.data_type.upper() in ("INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC", "INTEGER", "DOUBLE")


class RelationText(str):
    """What `ref()` and `source()` return: the quoted relation name as text (how it is printed, compared
    and concatenated), with dbt's Relation attributes read from it: `database`, `schema`, `identifier`,
    `name`, `table`, `render()`, `include()`."""

    def _parts(self) -> list[str | None]:
        import re as _re

        parts = [p[1:-1] if p[:1] in "`\"" else p for p in _re.findall(r'`[^`]*`|"[^"]*"|[^.]+', str(self))]
        if len(parts) == 1 and "." in parts[0]:  # `project.dataset.table` in one pair of backticks
            parts = parts[0].split(".")
        return [None] * (3 - len(parts)) + parts[-3:]  # type: ignore[list-item]

    database = property(lambda self: self._parts()[0])
    schema = property(lambda self: self._parts()[1])
    identifier = property(lambda self: self._parts()[2])
    name = property(lambda self: self._parts()[2])
    table = property(lambda self: self._parts()[2])
    is_cte = property(lambda self: str(self).startswith(EPHEMERAL_PREFIX))  # an ephemeral model, inlined
    is_table = True
    is_view = False

    def render(self) -> str:
        return str(self)

    def get(self, key: str, default: Any = None) -> Any:
        """dbt's Relation as a mapping: dbt_utils checks `obj is mapping and obj.get('metadata')`."""
        return _relation_get(self, key, default)

    def include(self, database: bool = True, schema: bool = True, identifier: bool = True) -> str:
        quote = "`" if str(self).startswith("`") else '"'
        db, sc, ident = self._parts()
        kept = [p for p, keep in ((db, database), (sc, schema), (ident, identifier)) if keep and p]
        return RelationText(".".join(f"{quote}{p}{quote}" for p in kept))


def _relation_get(relation: Any, key: str, default: Any) -> Any:
    if key == "metadata":
        return {"type": "BaseRelation"}
    if key in ("database", "schema", "identifier", "name"):
        return getattr(relation, key)
    return default


def render_relation(relation: Relation, dialect: str) -> str:
    """A relation name in the SQL of `dialect`: BigQuery's backticks, double quotes elsewhere."""
    if dialect == "bigquery":
        return relation.render()
    return ".".join(f'"{p}"' for p in (relation.database, relation.schema, relation.identifier) if p)


class _RenderedRelation:
    """A relation as dbt's Relation object: prints as its quoted name; `database`, `schema`, `identifier`,
    `name`, `include()` and `render()`."""

    def __init__(self, relation: Relation, dialect: str):
        self.relation = relation
        self._dialect = dialect

    database = property(lambda self: self.relation.database)
    schema = property(lambda self: self.relation.schema)
    identifier = property(lambda self: self.relation.identifier)
    name = property(lambda self: self.relation.identifier)
    table = property(lambda self: self.relation.identifier)
    is_table = True
    is_view = False

    def render(self) -> str:
        return render_relation(self.relation, self._dialect)

    def get(self, key: str, default: Any = None) -> Any:
        """dbt's Relation as a mapping (see RelationText.get)."""
        return _relation_get(self, key, default)

    def include(self, database: bool = True, schema: bool = True, identifier: bool = True) -> _RenderedRelation:
        r = self.relation
        return _RenderedRelation(Relation(r.database if database else None, r.schema if schema else "",
                                          r.identifier if identifier else ""), self._dialect)

    def __str__(self) -> str:
        return self.render()

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


# dbt's Relations are mappings (`ref('x') is mapping` holds in dbt); the virtual subclasses say so to Jinja.
Mapping.register(RelationText)
Mapping.register(_RenderedRelation)


class _Api:
    """dbt's `api`: `api.Relation.create(...)` and `api.Column.translate_type(...)`."""

    def __init__(self, dialect: str):
        dialect_ = dialect

        class RelationApi:
            @staticmethod
            def create(database: str | None = None, schema: str | None = None, identifier: str | None = None,
                       type: str | None = None, **_: Any) -> _RenderedRelation:
                return _RenderedRelation(Relation(database, schema or "", identifier or ""), dialect_)

            @staticmethod
            def add_ephemeral_prefix(name: str) -> str:
                return EPHEMERAL_PREFIX + name

        class ColumnApi:
            @staticmethod
            def translate_type(name: str) -> str:
                bq = {"string": "string", "timestamp": "timestamp", "float": "float64", "integer": "int64"}
                other = {"string": "TEXT", "timestamp": "TIMESTAMP", "float": "FLOAT", "integer": "INT"}
                return (bq if dialect_ == "bigquery" else other).get(name.lower(), name)

            @staticmethod
            def numeric_type(dtype: str, precision: Any, scale: Any) -> str:
                return dtype if precision is None or scale is None else f"{dtype}({precision},{scale})"

        self.Relation = RelationApi
        self.Column = ColumnApi


class _Config:
    """dbt's `config`: callable as `config(...)`, plus `config.get(key, default)` and `config.require(key)`."""

    def __init__(self, captured: _Captured):
        self._captured = captured

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        if args and isinstance(args[0], dict):
            kwargs = {**args[0], **kwargs}
        self._captured.config = merge_configs(self._captured.config, kwargs)
        return ""

    def get(self, key: str, default: Any = None, validator: Any = None) -> Any:
        return self._captured.config.get(key, default)

    def require(self, key: str, validator: Any = None) -> Any:
        if key not in self._captured.config:
            raise CompileError(f"config({key!r}) is required but not set")
        return self._captured.config[key]

    def set(self, key: str, value: Any) -> str:
        return self(**{key: value})

    def persist_relation_docs(self) -> bool:
        return False

    def persist_column_docs(self) -> bool:
        return False


class _ModelContext(dict):  # type: ignore[type-arg]
    """dbt's `model` (the node being rendered) as a mapping with attribute access in templates."""

    def __init__(self, model: ModelFile, captured: _Captured, package: str, this: _ThisRelation):
        super().__init__(
            name=model.name, resource_type="model", package_name=package, path=str(model.path),
            original_file_path=str(model.path), fqn=list(model.fqn), unique_id=f"model.{package}.{model.name}",
            raw_code=model.raw_sql, raw_sql=model.raw_sql, description=model.description,
            columns={k: {"name": c.name, "description": c.description, "data_type": c.data_type}
                     for k, c in model.columns.items()},
        )
        self._captured = captured
        self._this = this

    def __getitem__(self, key: Any) -> Any:
        if key == "config":  # as dbt's node config: the materialization is always there
            config = self._captured.config
            return config if "materialized" in config else {"materialized": "view", **config}
        if key == "tags":
            tags = self._captured.config.get("tags", [])
            return [tags] if isinstance(tags, str) else list(tags)
        if key in ("schema", "alias", "database"):
            relation = self._this.relation
            return {"schema": relation.schema, "alias": relation.identifier, "database": relation.database}[key]
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        return key in ("config", "tags", "schema", "alias", "database") or super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


class _LazyGraph(Mapping[str, Any]):
    """dbt's `graph`: `graph.nodes` (models and seeds by unique id) and `graph.sources`, built on first use."""

    def __init__(self, compiler: Compiler):
        self._compiler = compiler

    def _data(self) -> dict[str, Any]:
        compiler = self._compiler
        if compiler._graph is None:
            project = compiler.project
            nodes: dict[str, Any] = {}
            for kind, items in (("model", project.models), ("seed", project.seeds)):
                for name, item in items.items():
                    package = getattr(item, "package", None) or project.name
                    relation = compiler.node_relation(kind, name, item.config, item.fqn, str(item.path))
                    nodes[f"{kind}.{package}.{name}"] = {
                        "unique_id": f"{kind}.{package}.{name}", "name": name, "resource_type": kind,
                        "package_name": package, "path": str(item.path), "original_file_path": str(item.path),
                        "fqn": list(item.fqn), "config": dict(item.config), "tags": item.config.get("tags", []),
                        "schema": relation.schema, "alias": relation.identifier, "database": relation.database,
                        "description": item.description,
                        "columns": {k: {"name": c.name, "description": c.description} for k, c in item.columns.items()},
                        "raw_code": getattr(item, "raw_sql", ""),
                    }
            sources = {}
            for (source_name, table_name), table in project.sources.items():
                uid = f"source.{project.name}.{source_name}.{table_name}"
                sources[uid] = {"unique_id": uid, "name": table_name, "source_name": source_name,
                                "resource_type": "source", "schema": table.schema, "database": table.database,
                                "identifier": table.identifier, "description": table.description,
                                "package_name": project.name}
            compiler._graph = {"nodes": nodes, "sources": sources, "exposures": {}, "metrics": {},
                               "groups": {}, "semantic_models": {}, "saved_queries": {}}
        return compiler._graph

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Any:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


# ---------------------------------------------------------------------------------------------
# Compiling


# ---------------------------------------------------------------------------------------------
# Partial parsing

# project.PARTIAL_PARSE_ENV (BATCHFLOW_PARTIAL_PARSE=0) turns this cache off, with the yml cache of load_project.
PARTIAL_PARSE_FILE = "partial_parse.batchflow.pickle"
_CACHE_FORMAT = 2
_MISSING_ENV_VAR = "\0missing"


def _digest(*parts: str | bytes) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.digest()


def _code_fingerprint() -> str:
    """What the cached results were computed with: batchflow's compiling code and sqlglot's version
    (without importing sqlglot)."""
    import importlib.util

    here = Path(__file__).parent
    parts = [__version__, str(_CACHE_FORMAT)]
    for name in ("compiler.py", "compile_steps.py", "project.py", "sql.py", "jinja_context.py", "packages.py"):
        try:
            parts.append((here / name).read_text())
        except OSError:
            parts.append(name)
    for package, version_file in (("sqlglot", "_version.py"), ("jinja2", "__init__.py")):
        spec = importlib.util.find_spec(package)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        found = origin.parent / version_file if origin else None
        parts.append(found.read_text() if found and found.is_file() else str(origin))
    return _digest(*parts)


# A cached render (a plain tuple: quick to unpickle): the SQL, config, refs and sources it captured, and
# what it read from outside the model file, which must be unchanged for the render to be reused:
# ("ref", name, result) | ("source", (source, table), result) | ("env", name, value or _MISSING_ENV_VAR).
_Render = tuple  # (sql, config, refs, sources, reads)


class PartialParse:
    """`target/partial_parse.batchflow.pickle`: what compiling this project produced last time, like dbt's
    partial parsing. A model's render is reused when its file, its base config (project file and yml),
    the macros, the vars, the target and batchflow's own code are unchanged and every ref(), source() and
    env_var() it made still returns the same value. The SQL steps after rendering (batchflow.compile_steps)
    are remembered by their input (`step_result`), so unchanged SQL is not parsed or transpiled again.
    Writes are atomic; an unreadable file is ignored."""

    def __init__(self, path: Path, context_key: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.context_key = context_key
        self.renders: dict[bytes, _Render] = {}
        self.steps: dict[bytes, str] = {}
        self.macros_ok: set[bytes] = set()
        self._used_renders: dict[bytes, _Render] = {}
        self._used_steps: dict[bytes, str] = {}
        self._lock = threading.Lock()  # the runner's workers finish SQL too (sql_for_build)
        self._dirty = False
        if enabled:
            self._load()

    def _load(self) -> None:
        data = read_cache(self.path)
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("code") != _code_fingerprint():
            return
        self.macros_ok = set(data.get("macros_ok", ()))
        self.steps = dict(data.get("steps", {}))
        if data.get("context") == self.context_key:
            self.renders = dict(data.get("renders", {}))

    def get(self, key: bytes) -> _Render | None:
        return self.renders.get(key) if self.enabled else None

    def keep(self, key: bytes, entry: _Render, new: bool) -> None:
        if self.enabled:
            self._used_renders[key] = entry
            self._dirty = self._dirty or new

    def step_result(self, key: bytes) -> str | None:
        """What a compile step returned for this input before (compile_steps.cached)."""
        found = self.steps.get(key) if self.enabled else None
        if found is not None:
            with self._lock:
                self._used_steps[key] = found
        return found

    def add_step_result(self, key: bytes, sql: str) -> None:
        if self.enabled:
            with self._lock:
                self.steps[key] = self._used_steps[key] = sql
                self._dirty = True

    def macros_known_good(self, macro_key: bytes) -> bool:
        return self.enabled and macro_key in self.macros_ok

    def add_macros_ok(self, macro_key: bytes) -> None:
        if self.enabled and macro_key not in self.macros_ok:
            self.macros_ok = {macro_key}
            self._dirty = True

    def save(self) -> None:
        """Write what this compile used (stale entries are dropped) if anything changed."""
        if not self.enabled:
            return
        if not self._dirty and len(self._used_renders) == len(self.renders) and len(self._used_steps) == len(
            self.steps
        ):
            return
        data = {
            "format": _CACHE_FORMAT,
            "code": _code_fingerprint(),
            "context": self.context_key,
            "macros_ok": sorted(self.macros_ok),
            "renders": self._used_renders,
            "steps": dict(self._used_steps),
        }
        write_cache(self.path, data)
        self._dirty = False


class Compiler:
    """Renders the models of a project for one target and assembles the manifest."""

    def __init__(self, project: Project, target: Target, partial_parse: bool | None = None):
        """`partial_parse`: reuse and update target/partial_parse.batchflow.pickle (default: on, unless
        BATCHFLOW_PARTIAL_PARSE=0)."""
        self.project = project
        self.target = target
        self._rendered: dict[str, tuple[str, _Captured]] = {}
        self._text_cache: dict[str | None, str | None] = {}
        self._ref_relations: dict[str, str] = {}
        self._names: dict[tuple[Any, ...], Relation] = {}
        self._graph: dict[str, Any] | None = None
        self.dialect = written_dialect(project, target)
        enabled = partial_parse_enabled() if partial_parse is None else partial_parse
        macro_source = _macro_source(project, self.dialect)
        self._macro_key = _digest(macro_source[0])
        context_key = _digest(
            self._macro_key,
            project.name,
            repr(sorted(project.vars.items(), key=lambda kv: str(kv[0]))),
            repr(sorted(_target_context(target).items())),
        )
        self.cache = PartialParse(project.target_path / PARTIAL_PARSE_FILE, context_key, enabled)
        #: the SQL steps after rendering, each remembered by the partial-parse cache
        self.steps = tuple(cached(step, self.cache) for step in STEPS)
        self.manifest: Manifest | None = None  # the last compile's (sql_for_build finishes SQL against it)
        self.renderer = JinjaRenderer(
            project, target, macros_known_good=self.cache.macros_known_good(self._macro_key), macro_source=macro_source
        )
        if self.renderer._macro_module is not None:
            self.cache.add_macros_ok(self._macro_key)
        root_macros = self.renderer.registry.macros.get(project.name, {})
        #: generate_schema_name & co. the project overrides: only those cost a macro call per node
        self._naming = {k for k in ("generate_schema_name", "generate_alias_name", "generate_database_name")
                        if k in root_macros}

    def sql_for_warehouse(self, sql: str) -> str:
        """SQL written in the project's dialect as the warehouse adapters take it (BigQuery SQL, or DuckDB
        SQL marked as such for a DuckDB target)."""
        from batchflow import sql as sqlmod

        return sqlmod.for_target(sql, self.dialect, self.target.type)

    def node_relation(self, resource_type: str, name: str, config: dict[str, Any], fqn: list[str] | None = None,
                      path: str = "") -> Relation:
        """Where a model or seed lives: dbt's rules, or the project's generate_schema_name /
        generate_alias_name / generate_database_name macros where it overrides them."""
        if not self._naming:
            return model_relation(config, name, self.target)
        key = (resource_type, name, repr(config.get("schema")), repr(config.get("alias")),
               repr(config.get("database") or config.get("project")))
        found = self._names.get(key)
        if found is None:
            base = model_relation(config, name, self.target)
            node = {"name": name, "resource_type": resource_type, "fqn": fqn or [name], "config": config,
                    "path": path, "original_file_path": path, "package_name": self.project.name,
                    "unique_id": f"{resource_type}.{self.project.name}.{name}"}
            schema, identifier, database = base.schema, base.identifier, base.database
            call = self.renderer.call_macro
            if "generate_schema_name" in self._naming:
                schema = call("generate_schema_name", config.get("schema"), node)
            if "generate_alias_name" in self._naming:
                identifier = call("generate_alias_name", config.get("alias"), node)
            if "generate_database_name" in self._naming:
                database = call("generate_database_name", config.get("database"), node) or None
                if self.target.type == "duckdb" or database == "None":
                    database = None
            found = self._names[key] = Relation(database, schema, identifier)
        return found

    def model_node_relation(self, name: str, config: dict[str, Any]) -> Relation:
        """Where a model or snapshot of the project lives; a snapshot's `target_schema` / `target_database`
        (dbt < 1.9) are used as they are."""
        model = self.project.models[name]
        relation = self.node_relation(model.resource_type, name, config, model.fqn, str(model.path))
        if model.resource_type == "snapshot" and (config.get("target_schema") or config.get("target_database")):
            relation = Relation(config.get("target_database") or relation.database,
                                config.get("target_schema") or relation.schema, relation.identifier)
        return relation

    # -- context ---------------------------------------------------------------------------------
    def _resolve_ref(self, name: str) -> str:
        """What `ref(name)` renders as, at this point of compiling."""
        project = self.project
        if name in project.models:
            if self._materialized(name) == "ephemeral":
                return EPHEMERAL_PREFIX + name
            rendered = self._ref_relations.get(name)
            if rendered is None:  # base configs do not change while compiling
                rendered = self._ref_relations[name] = render_relation(
                    self.model_node_relation(name, self._base_config(name)), self.dialect)
            return rendered
        if name in project.seeds:
            seed = project.seeds[name]
            return render_relation(self.node_relation("seed", name, seed.config, seed.fqn, str(seed.path)),
                                   self.dialect)
        choices = list(project.models) + list(project.seeds)
        raise CompileError(f"ref({name!r}) names no model or seed{_suggest(name, choices)}")

    def _resolve_source(self, source_name: str, table_name: str) -> str:
        """What `source(source_name, table_name)` renders as."""
        table = self.project.sources.get((source_name, table_name))
        if table is None:
            choices = [f"{s}.{t}" for s, t in self.project.sources]
            raise CompileError(
                f"source({source_name!r}, {table_name!r}) is not declared"
                f"{_suggest(f'{source_name}.{table_name}', choices)}"
            )
        return render_relation(source_relation(self._render_text(table.database),
                                               self._render_text(table.schema) or "",
                                               self._render_text(table.identifier) or table.identifier, self.target),
                               self.dialect)

    def _reads_hold(self, reads: list[tuple[str, Any, Any]]) -> bool:
        """Whether every ref()/source()/env_var() a cached render made would return the same now."""
        try:
            for kind, arg, result in reads:
                if kind == "ref":
                    if self._resolve_ref(arg) != result:
                        return False
                elif kind == "source":
                    if self._resolve_source(*arg) != result:
                        return False
                elif kind == "late":
                    continue
                elif os.environ.get(arg, _MISSING_ENV_VAR) != result:
                    return False
        except BatchflowError:
            return False
        return True

    def _context(
        self, model: ModelFile, captured: _Captured, is_incremental: bool,
        reads: list[tuple[str, Any, Any]] | None = None, warehouse: Any = None,
    ) -> dict[str, Any]:
        """The Jinja context of one render. `warehouse` is given only when the runner builds the model
        (sql_for_build): then `execute` is true and run_query, statement and adapter introspection ask it;
        otherwise (parsing, compiling) `execute` is false and they return nothing, as in dbt."""
        from batchflow.jinja_context import DbtExceptions, arrow_to_table, static_context

        project, target = self.project, self.target
        record = reads.append if reads is not None else (lambda item: None)

        def ref(*args: str, **kwargs: Any) -> str:
            name = args[-1] if args else kwargs.get("name", "")
            result = self._resolve_ref(name)
            captured.refs.append(name)
            record(("ref", name, result))
            return RelationText(result)

        def source(source_name: str, table_name: str) -> str:
            result = self._resolve_source(source_name, table_name)
            captured.sources.append((source_name, table_name))
            record(("source", (source_name, table_name), result))
            return RelationText(result)

        def var(name: str, default: Any = _MISSING) -> Any:
            if name in project.vars:
                return project.vars[name]
            if default is _MISSING:
                raise CompileError(f"var({name!r}) is not defined; set it under vars: or pass --vars")
            return default

        var.has_var = lambda name: name in project.vars  # type: ignore[attr-defined]

        def env_var(name: str, default: Any = _MISSING) -> Any:
            record(("env", name, os.environ.get(name, _MISSING_ENV_VAR)))
            if name in os.environ:
                return os.environ[name]
            if default is _MISSING:
                raise CompileError(f"env_var({name!r}) is not set and has no default")
            return default

        results: dict[str, Any] = {}

        def run_query(sql: str) -> Any:
            captured.late = True
            if warehouse is None:
                return None
            return arrow_to_table(warehouse.query_arrow(self.sql_for_warehouse(str(sql))))

        def statement(name: str | None = None, fetch_result: bool = False, auto_begin: bool = True,
                      language: str = "sql", caller: Any = None) -> str:
            captured.late = True
            if warehouse is None or caller is None:
                return ""
            sql = str(caller())
            if fetch_result:
                table = run_query(sql)
                results[name or "main"] = {"response": {"rows_affected": len(table)},
                                           "data": [tuple(r) for r in table.rows], "table": table}
            else:
                warehouse.execute(self.sql_for_warehouse(sql))
                results[name or "main"] = {"response": {}, "data": [], "table": None}
            return ""

        def load_result(name: str) -> Any:
            captured.late = True
            return results.get(name)

        def doc(*args: str) -> str:
            name = args[-1]
            docs = getattr(project, "docs", {})
            if name not in docs:
                raise CompileError(f"doc({name!r}): no {{% docs {name} %}} block{_suggest(name, docs)}")
            return docs[name]

        def warn(message: str) -> None:
            import sys

            sys.stderr.write(f"warning: {model.path}: {message}\n")

        this = _ThisRelation(lambda: self.model_node_relation(model.name, captured.config)
                             if getattr(model, "resource_type", "model") == "snapshot"
                             else self.node_relation("model", model.name, captured.config, model.fqn,
                                                     str(model.path)), self.dialect,
                             lambda: str(captured.config.get("materialized", "view")))
        package = getattr(model, "package", None) or project.name
        adapter = _Adapter(self.renderer, target, warehouse)
        context = static_context()
        context.update({
            "ref": ref,
            "source": source,
            "config": _Config(captured),
            "var": var,
            "env_var": env_var,
            "this": this,
            "target": _target_context(target),
            "is_incremental": lambda: is_incremental,
            "project_name": project.name,
            "model": _ModelContext(model, captured, package, this),
            "execute": warehouse is not None,
            "run_query": run_query,
            "statement": statement,
            "load_result": load_result,
            "adapter": adapter,
            "load_relation": adapter.load_relation,
            "api": _Api(self.dialect),
            "exceptions": DbtExceptions(warn),
            "graph": _LazyGraph(self),
            "doc": doc,
            "database": target.database,
            "schema": target.schema,
        })
        return context

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
        sql, captured, _ = self._render(name, is_incremental)
        return sql, captured

    def _render(self, name: str, is_incremental: bool, warehouse: Any = None,
                ) -> tuple[str, _Captured, list[tuple[str, Any, Any]]]:
        """The render step: one model's Jinja with its context (execute true only with a `warehouse`);
        returns the SQL, what the render captured and what it read from outside the model file."""
        model = self.project.models[name]
        base = self.render_config(model.config)
        captured = _Captured(base)
        reads: list[tuple[str, Any, Any]] = []

        def noticed(key: str) -> None:  # reading `execute` means the SQL may differ once executing
            if key == "execute":
                captured.late = True

        sql = self.renderer.render_fast(model, self._context(model, captured, is_incremental, reads, warehouse),
                                        noticed)
        if sql is None:  # needs Jinja's compiler (or failed: Jinja renders again and reports where)
            captured = _Captured(base)
            reads = []
            sql = self.renderer.render(model, self._context(model, captured, is_incremental, reads, warehouse),
                                       noticed)
        if captured.late:
            reads.append(("late", None, True))
        return sql, captured, reads

    def _render_cached(self, name: str) -> tuple[str, _Captured]:
        """`render_model` for compile(), through the partial-parse cache."""
        model = self.project.models[name]
        key = _digest(name, str(model.path), model.raw_sql, repr(model.config))
        entry = self.cache.get(key)
        if entry is not None and self._reads_hold(entry[4]):
            captured = _Captured({})
            captured.config, captured.refs, captured.sources = entry[1], list(entry[2]), list(entry[3])
            captured.late = any(r[0] == "late" for r in entry[4])
            self.cache.keep(key, entry, new=False)
            return entry[0], captured
        sql, captured, reads = self._render(name, is_incremental=False)
        entry = (sql, captured.config, list(captured.refs), list(captured.sources), reads)
        self.cache.keep(key, entry, new=True)
        return sql, captured

    def compile(self, keep_going: bool = False) -> Manifest:
        """Render every model, build the graph, then run each model's SQL steps (compile_steps: parse,
        validate, transpile, inline ephemerals) in dependency order. The first model that fails to render
        or parse raises, unless `keep_going`: then each such failure (a CompileError) stays with its model
        — `Manifest.errors`, `Node.error`; building it raises the error and what depends on it is
        skipped, as in dbt. Configuration errors (ConfigError: a config() key, a batch model's columns)
        always raise: they stop the command before anything runs."""
        self._rendered = {}
        self._errors: dict[str, BatchflowError] = {}

        def attempt(name: str, step: Callable[[], Any]) -> Any:
            try:
                return step()
            except CompileError as exc:
                if not keep_going:
                    raise
                self._errors.setdefault(name, exc)
                return None

        # Materialization of a ref'd model may be set by its own config() call: render the
        # ephemeral candidates' configs first by rendering in two passes (cheap: no SQL parsing).
        for name in self.project.models:
            self._rendered[name] = attempt(name, lambda: self._render_cached(name)) or (
                "", _Captured(self.project.models[name].config))
        # Disabled models (config enabled=false) disappear, as in dbt; a ref to one is an error.
        disabled = [n for n, (_, c) in self._rendered.items() if c.config.get("enabled", True) is False]
        for name in disabled:
            del self._rendered[name]
        for name, (_, captured) in self._rendered.items():
            hit = next((r for r in captured.refs if r in disabled), None)
            if hit:
                error = CompileError(f"ref({hit!r}) points at a disabled model", self.project.models[name].path)
                attempt(name, lambda: (_ for _ in ()).throw(error))
        # A config(schema=/alias=/database=) in a model file moves it: refs to it, rendered from base
        # configs in pass 1, must point at where it is built.
        moved = set()
        for name, (_, captured) in self._rendered.items():
            if any(k in captured.config for k in ("schema", "alias", "database", "project", "target_schema",
                                                  "target_database")):
                where = render_relation(self.model_node_relation(name, captured.config), self.dialect)
                if self._resolve_ref(name) != where and self._materialized(name) != "ephemeral":
                    self._ref_relations[name] = where
                    moved.add(name)
        # Second pass only for models that ref an ephemeral (its name was unknown during pass 1) or a moved one.
        for name, (_, captured) in list(self._rendered.items()):
            if name not in self._errors and any(r in moved or self._materialized(r) == "ephemeral"
                                                for r in captured.refs if r in self.project.models):
                self._rendered[name] = attempt(name, lambda: self._render_cached(name)) or self._rendered[name]

        custom = self.renderer.registry.materializations
        for name, (_, captured) in self._rendered.items():
            materialized = captured.config.get("materialized")
            if materialized in custom and materialized not in MATERIALIZATIONS:
                where = self.renderer._display(custom[materialized].path)
                raise ConfigError(f"custom materialization {materialized!r} ({where}) is not supported by "
                                  f"batchflow; use one of {', '.join(MATERIALIZATIONS)}",
                                  self.project.models[name].path,
                                  _config_line(self.project.models[name].raw_sql, "materialized"))
        nodes: dict[str, Node] = {}
        checker = SettingsChecker()
        for (source_name, table_name), table in self.project.sources.items():
            key = f"source:{source_name}.{table_name}"
            nodes[key] = Node(
                name=key,
                resource_type="source",
                path=str(table.yml_path.relative_to(self.project.root)) if table.yml_path else "",
                relation=source_relation(self._render_text(table.database), self._render_text(table.schema) or "",
                                         self._render_text(table.identifier) or table.identifier, self.target),
                description=self._render_text(table.description) or "",
                columns={k: v.__dict__ for k, v in table.columns.items()},
                sample=table.sample,
            )
        for name, seed in self.project.seeds.items():
            seed_config = self.render_config(seed.config)
            if seed_config.get("enabled", True) is False:
                continue  # `+enabled: "{{ var('load_source_data', false) }}"` in jaffle-shop
            nodes[name] = Node(
                name=name,
                resource_type="seed",
                path=str(seed.path),
                relation=self.node_relation("seed", name, seed_config, seed.fqn, str(seed.path)),
                config=seed_config,
                description=self._render_text(seed.description) or "",
                columns={k: v.__dict__ for k, v in seed.columns.items()},
            )
        for name, (sql, captured) in self._rendered.items():
            model = self.project.models[name]
            config = captured.config
            kind = model.resource_type
            if name not in self._errors:
                attempt(name, lambda: _check_snapshot_config(model, config, checker) if kind == "snapshot"
                        else _check_config(model, config, checker, self.project.batch_defaults))
            deps = list(dict.fromkeys(captured.refs + [f"source:{s}.{t}" for s, t in captured.sources]))
            relation = self.model_node_relation(name, config)
            nodes[name] = Node(
                name=name,
                resource_type=kind,
                path=str(model.path),
                relation=relation,
                config=config,
                depends_on=deps,
                raw_sql=model.raw_sql,
                compiled_sql=sql,
                description=self._render_text(model.description) or "",
                columns={k: v.__dict__ for k, v in model.columns.items()},
                renders_at_build=captured.late and name not in self._errors,
            )
        # A source that is a seed's table (jaffle-shop's `raw` schema) waits for the seed, so `build` loads
        # the seed before the models that read it.
        seeded = {n.relation: n.name for n in nodes.values() if n.resource_type == "seed"}
        for node in nodes.values():
            if node.resource_type == "source" and node.relation in seeded:
                node.depends_on = [seeded[node.relation]]
        graph = Graph(
            {n.name: set(n.depends_on) for n in nodes.values()},
            {n.name: _node_info(n) for n in nodes.values()},
        )
        manifest = Manifest(self.project, self.target, nodes, graph)
        self.manifest = manifest
        for name in graph.topological_order():
            node = nodes[name]
            if node.resource_type not in ("model", "snapshot") or node.renders_at_build:
                continue  # a model rendered at build: its parse-time SQL need not be valid, it is checked then
            failed_ephemerals = [d for d in node.depends_on if d in self._errors and nodes[d].materialized == "ephemeral"]
            if name not in self._errors and failed_ephemerals:
                self._errors[name] = CompileError(f"inlines ephemeral model(s) that failed to compile: "
                                                  f"{', '.join(failed_ephemerals)}", node.path)
            if name not in self._errors:
                sql = attempt(name, lambda: self.finish_sql(manifest, node, node.compiled_sql))
                if sql is not None:
                    node.compiled_sql = sql
        for name, error in self._errors.items():
            if name in nodes:
                nodes[name].error = error
                nodes[name].compiled_sql = f"-- not compiled: {error}\n"
        manifest.errors = dict(self._errors)
        self.cache.save()
        known = {w.key for w in self.project.warnings}
        manifest.warnings = [*self.project.warnings, *self.target.warnings,
                             *(w for w in checker.warnings if w.key not in known)]
        return manifest

    def sql_for_build(self, node: Node, warehouse: Any, is_incremental: bool = False) -> str:
        """The SQL the runner builds `node` with, called by the runner when it builds the node (its
        upstream models are built by then). This is the one render where `execute` is true: a model that
        reads `execute` or runs queries (`Node.renders_at_build`), and an incremental model whose table
        exists (`is_incremental`), is rendered again against `warehouse` and goes through the SQL steps
        then; any other model's SQL is the compile's. A model that did not compile raises its error."""
        if node.error is not None:
            raise node.error
        if not (node.renders_at_build or is_incremental):
            return node.compiled_sql
        sql, _, _ = self._render(node.name, is_incremental=is_incremental, warehouse=warehouse)
        return self.finish_sql(self.manifest, node, sql)

    def render_text(self, model: ModelFile, text: str, overrides: dict[str, Any] | None = None,
                    warehouse: Any = None) -> tuple[str, _Captured]:
        """Render `text` with the context a model gets (ref, source, config, var, this, macros), for nodes
        that are not models: data tests, unit tests, snapshots, analyses, hooks. `model` stands for the
        node (its name, path, package and base config); `overrides` replace context names (a unit test's
        ref, a test's kwargs). With a `warehouse`, `execute` is true. Errors name the node's file and line."""
        from batchflow.jinja_context import render_template

        captured = _Captured(self.render_config(model.config))
        context = self._context(model, captured, False, None, warehouse)
        context.update(overrides or {})
        try:
            template = self.renderer.env.from_string(text)
            return render_template(template, self.renderer.scope(context, model.package)), captured
        except Exception as exc:  # noqa: BLE001 - every render failure is reported with its location
            import dataclasses as _dc

            raise self.renderer.map_error(exc, _dc.replace(model, name="<template>")) from None

    def render_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A config with its Jinja values rendered (`+enabled: "{{ var('x', false) }}"`), natively as dbt
        does: a value that is one expression keeps its type."""
        def jinja(v: Any) -> bool:
            return isinstance(v, str) and "{{" in v

        hooks = ("pre-hook", "post-hook", "pre_hook", "post_hook")  # rendered when they run, with `this`
        if not any(jinja(v) or isinstance(v, list) and any(map(jinja, v)) for k, v in config.items() if k not in hooks):
            return config
        rendered: dict[str, Any] = {}
        for key, value in config.items():
            if key in hooks:
                pass
            elif jinja(value):
                value = self.render_value(value)
            elif isinstance(value, list):  # tags accumulate as lists: `+tags: "{{ [...] }}"` is an item
                items: list[Any] = []
                for item in value:
                    done = self.render_value(item) if jinja(item) else item
                    items.extend(done if isinstance(done, list) else [done])
                value = items
            rendered[key] = value
        return rendered

    def render_value(self, text: str) -> Any:
        """One yml value rendered with target, var and env_var; `{{ x }}` alone keeps x's type."""
        import jinja2.nativetypes

        from batchflow.jinja_context import DBT_FILTERS

        env = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
        env.filters.update(DBT_FILTERS)
        context = {"target": _target_context(self.target), "var": lambda n, d=None: self.project.vars.get(n, d),
                   "env_var": lambda n, d="": os.environ.get(n, d)}
        try:
            value = env.from_string(text).render(context)
        except Exception as exc:  # noqa: BLE001 - reported as a config problem
            raise ConfigError(f"cannot render {text!r}: {exc}", self.project.project_file) from None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value

    def _render_text(self, text: str | None) -> str | None:
        """Render Jinja in a yml value such as `schema: "{{ target.schema }}"`."""
        if not text or "{{" not in text:
            return text
        if text in self._text_cache:  # one render per distinct text, not one per source() call
            return self._text_cache[text]
        env_context = {"target": _target_context(self.target), "var": lambda n, d=None: self.project.vars.get(n, d),
                       "env_var": lambda n, d="": os.environ.get(n, d),
                       "doc": lambda *a: getattr(self.project, "docs", {}).get(a[-1], "")}
        pieces = simple_template(text)
        rendered = render_simple(pieces, env_context) if pieces is not None else None
        if rendered is None:
            rendered = self.renderer.env.from_string(text).render(env_context)
        if "env_var" not in text:  # the environment may change between calls
            self._text_cache[text] = rendered.strip()
        return rendered.strip()

    def sql_unit(self, manifest: Manifest, node: Node, sql: str) -> SqlUnit:
        """A rendered model as the input of the SQL steps (plain data: compile_steps.SqlUnit)."""
        key = node.config.get("key") if node.materialized == "batch" else None
        keys = tuple(str(k) for k in ([key] if isinstance(key, str) else list(key or [])))
        return SqlUnit(
            sql=sql, dialect=self.dialect,
            writes=self.target.type if node.materialized != "batch" else "bigquery",
            materialized=node.materialized, key=keys,
            key_line=_config_line(node.raw_sql, "key") if keys else None,
            ctes=tuple((EPHEMERAL_PREFIX + e.name, _strip_semicolon(e.compiled_sql))
                       for e in _ephemeral_chain(manifest, node)),
            path=node.path, raw_sql=node.raw_sql)

    def finish_sql(self, manifest: Manifest, node: Node, sql: str) -> str:
        """Rendered SQL through the SQL steps (parse, validate, transpile, inline ephemerals), each
        wrapped by the partial-parse cache: what the warehouse adapter runs."""
        return run_steps(self.sql_unit(manifest, node, sql), self.steps).sql


_MISSING = object()
UNBUILT_PREFIX = "__bf_unbuilt__"


class NeedsBatchResults(CompileError):
    """A model reads a batch model whose results do not exist yet, so it cannot be inlined."""


def inline_unbuilt(manifest: Manifest, name: str, exists: Callable[[Node], bool], sql: str | None = None) -> str:
    """The model's SQL (`sql`, default its compiled SQL) with every ref to a model that is not built yet
    replaced by a CTE of that model's own SQL (recursively), so a dry run can validate and count on a
    fresh dataset. Raises NeedsBatchResults when the chain reaches a batch model with no results, and the
    error of an upstream model that did not compile."""
    chain: dict[str, Node] = {}

    def visit(node: Node) -> None:
        for dep in node.depends_on:
            upstream = manifest.nodes.get(dep)
            if (upstream is None or upstream.resource_type != "model" or upstream.materialized == "ephemeral"
                    or dep in chain or exists(upstream)):
                continue
            if upstream.error is not None:
                raise CompileError(f"reads model {dep!r}, which did not compile ({upstream.error})",
                                   manifest.nodes[name].path)
            if upstream.materialized == "batch":
                raise NeedsBatchResults(f"needs the answers of batch model {dep!r}, which has none yet",
                                        manifest.nodes[name].path)
            visit(upstream)
            chain[dep] = upstream

    visit(manifest.nodes[name])

    def swap(sql: str) -> str:
        for dep, upstream in chain.items():
            for dialect in ("bigquery", "duckdb"):
                sql = sql.replace(render_relation(upstream.relation, dialect), UNBUILT_PREFIX + dep)
        return _strip_semicolon(sql)

    sql = swap(manifest.nodes[name].compiled_sql if sql is None else sql)
    if not chain:
        return sql
    from batchflow import sql as sqlmod

    return sqlmod.add_ctes(sql, [(UNBUILT_PREFIX + dep, swap(up.compiled_sql)) for dep, up in chain.items()])


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
        "target_name": target.name,
        "location": target.settings.get("location"),
        "path": target.settings.get("path"),
    }


def _check_snapshot_config(model: ModelFile, config: dict[str, Any], checker: SettingsChecker) -> None:
    """A snapshot's merged config: every key against the snapshot config section, then what its strategy needs."""
    from batchflow.snapshots import snapshot_spec

    for key, value in config.items():
        line = _config_line(model.raw_sql, str(key)) or model.yml_line
        try:
            checker.section("snapshot_config", {key: value}, model.yml_path if model.yml_line and not
                            _written_in_config(model.raw_sql, str(key)) else model.path, line)
        except ConfigError as exc:
            raise ConfigError(exc.message, exc.path or model.path, line) from None
    start = model.raw_sql.count("\n", 0, len(model.raw_sql) - len(model.raw_sql.lstrip("\n"))) + 1
    snapshot_spec(config, model.yml_path if model.yml_line and "config(" not in model.raw_sql else model.path,
                  _config_line(model.raw_sql, "strategy") or model.yml_line or start)


def _check_config(model: ModelFile, config: dict[str, Any], checker: SettingsChecker | None = None,
                  batch_defaults: dict[str, Any] | None = None) -> None:
    """A model's merged config, after config() ran: every key and value (the project file and yml parts
    were checked with their lines at load, so an error here comes from a config() call, reported at the
    line of its key in the model file), then what its materialization needs."""
    checker = checker or SettingsChecker()
    fields = settings_spec()["model_config"]["fields"]
    materialized = config.get("materialized", "view")
    memo = repr(config)  # models of one folder share a config: check each distinct one once
    quiet: SettingsChecker | None = None
    if memo not in _CONFIGS_OK:
        try:  # the whole config at once (most are fine); a key's line is looked up only when needed
            quiet = SettingsChecker()
            quiet.section("model_config", config, model.path, None, required=False)
        except ConfigError:
            quiet = None
        if quiet is not None and not quiet.warnings and len(_CONFIGS_OK) < 10_000:
            _CONFIGS_OK.add(memo)
    if memo not in _CONFIGS_OK:
        for key, value in config.items():
            line = _config_line(model.raw_sql, str(key))
            try:
                checker.section("model_config", {key: value}, model.path, line)
            except ConfigError as exc:
                raise ConfigError(exc.message, model.path, line) from None
    for key in config:
        applies = fields[key].get("applies_to") if key in fields else None
        if applies and materialized not in applies and _written_in_config(model.raw_sql, key):
            checker.warn(f"`{key}` has no effect on a {materialized} model (it applies to {', '.join(applies)})",
                         str(model.path), _config_line(model.raw_sql, str(key)), str(key))
    if materialized == "batch":
        merged = {k: v for k, v in (batch_defaults or {}).items() if k in fields}
        merged.update(config)
        if not merged.get("model"):
            raise ConfigError("a batch model needs config(model='gemini-...')", model.path,
                              _config_line(model.raw_sql, "materialized"))
        config.setdefault("model", merged["model"])  # a project-wide default model, as the lifecycle reads it
        from batchflow.requests import batch_model_problem  # models whose batch contract is not BigQuery

        problem = batch_model_problem(str(merged["model"]), merged.get("fallback_model"))
        if problem is not None:
            raise ConfigError(problem[1], model.path, _config_line(model.raw_sql, problem[0]))


_CONFIG_CALL = re.compile(r"\bconfig\s*\(")
_CONFIGS_OK: set[str] = set()  # repr() of model configs that passed every check without a warning


def _written_in_config(raw_sql: str, key: Any) -> bool:
    """Whether `key` is written inside a config() call of the model file (not inherited from a folder)."""
    return _key_in_config(raw_sql, str(key)) is not None


def _key_in_config(raw_sql: str, key: str) -> int | None:
    pattern = re.compile(rf"""(?<![\w.])(?:{re.escape(key)}\s*=(?!=)|['"]{re.escape(key)}['"]\s*:)""")
    for call in _CONFIG_CALL.finditer(raw_sql):
        found = pattern.search(raw_sql, call.end(), call.end() + 4000)
        if found:
            return found.start()
    return None


def _config_line(raw_sql: str, key: str) -> int | None:
    """Line of `key` in a config() call of the model file, else of the first config() call, else None."""
    offset = _key_in_config(raw_sql, key)
    if offset is None:
        call = _CONFIG_CALL.search(raw_sql)
        if call is None:
            return None
        offset = call.start()
    return raw_sql.count("\n", 0, offset) + 1


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
