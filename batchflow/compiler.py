"""Compiling a project: render every model's Jinja, capture config and dependencies, parse the SQL.

The pipeline per model is render → parse → inline ephemerals, each step a plain function over
plain data. The result is a `Manifest`: nodes with compiled BigQuery SQL and their dependencies.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from batchflow import __version__
from batchflow.cachefile import read_cache, write_cache
from batchflow.errors import BatchflowError, CompileError, ConfigError
from batchflow.graph import Graph, NodeInfo
from batchflow.project import (
    ConfigWarning,
    ModelFile,
    Project,
    SettingsChecker,
    Target,
    did_you_mean,
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

    def __init__(
        self, project: Project, target: Target, macros_known_good: bool = False,
        macro_source: tuple[str, list[tuple[int, Path]]] | None = None,
    ):
        """`macros_known_good`: this exact macro text compiled before (the partial-parse cache says so),
        so compiling it can wait until a macro is needed; otherwise syntax errors surface here."""
        self.project = project
        self.target = target
        self._env: jinja2.Environment | None = None
        self._macro_module: jinja2.Template | None = None
        self._macro_text, self._macro_offsets = macro_source or _macro_source(project)
        self._macro_words: frozenset[str] | None = None
        self._simple: dict[str, list[Any] | None] = {}
        if not macros_known_good:
            self._check_macro_files()
            self._macro_module = self._template(self.MACROS)

    @property
    def macro_text(self) -> str:
        """Every macro file (built-in, then the project's) as one template."""
        return self._macro_text

    @property
    def env(self) -> jinja2.Environment:
        """The Jinja environment (created on first use)."""
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(
                loader=jinja2.FunctionLoader(self._load),
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.do"],
                keep_trailing_newline=True,
                auto_reload=False,
            )
        return self._env

    @property
    def _macros(self) -> jinja2.Template:
        if self._macro_module is None:
            self._check_macro_files()
            self._macro_module = self._template(self.MACROS)
        return self._macro_module

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]]:
        # The filename becomes the code object's filename, which map_error reads from tracebacks.
        if name == self.MACROS:
            return self._macro_text, name, lambda: True
        return self.project.models[name].raw_sql, name, lambda: True

    def _check_macro_files(self) -> None:
        """Syntax-check each macro file alone, so an error names the right file and line."""
        import jinja2

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
        import jinja2

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
        module = self._macros.make_module(vars={"target": _target_context(self.target)})
        return str(getattr(module, name)(*args, **kwargs)).strip()

    def render(self, model: ModelFile, context: dict[str, Any]) -> str:
        """Render one model with `context` (ref, source, config, ...) and the macros bound to it."""
        try:
            return self._template(model.name).render(self._with_macros(context))
        except Exception as exc:  # noqa: BLE001 - every render failure is reported with its location
            raise self.map_error(exc, model) from None

    def _with_macros(self, context: dict[str, Any]) -> dict[str, Any]:
        macros = self._macros.make_module(vars=context)
        names = {k: getattr(macros, k) for k in dir(macros) if not k.startswith("_")}
        return {**context, **names}

    def render_fast(self, model: ModelFile, context: dict[str, Any]) -> str | None:
        """`render` without Jinja's template compiler, for models that are literal SQL plus
        `{{ expression }}`s of calls, names, attributes and literals (see project.render_simple).
        None when the model needs Jinja, or when evaluating failed (the caller then calls `render`
        with a fresh context: calls made here may have recorded refs and configs)."""
        pieces = self._simple.get(model.name, False)
        if pieces is False:
            pieces = self._simple[model.name] = simple_template(model.raw_sql)
        if pieces is None:
            return None
        if self._may_use_macros(pieces):
            context = self._with_macros(context)
        return render_simple(pieces, context)

    def _may_use_macros(self, pieces: list[Any]) -> bool:
        """Whether an expression names something the macro module could export. Any exported name
        (macro, top-level set, import alias) is written inside some `{% ... %}` tag of the macro text,
        so those words are a safe superset; a model using none of them renders without the module."""
        if self._macro_words is None:
            tags = re.findall(r"\{%.*?%\}", self._macro_text, re.DOTALL)
            self._macro_words = frozenset(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(tags)))
        words = self._macro_words
        return any(
            isinstance(n, ast.Name) and n.id in words for p in pieces if not isinstance(p, str) for n in ast.walk(p)
        )


# ---------------------------------------------------------------------------------------------
# Compiling


# ---------------------------------------------------------------------------------------------
# Partial parsing

# project.PARTIAL_PARSE_ENV (BATCHFLOW_PARTIAL_PARSE=0) turns this cache off, with the yml cache of load_project.
PARTIAL_PARSE_FILE = "partial_parse.batchflow.pickle"
_CACHE_FORMAT = 1
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
    for name in ("compiler.py", "project.py", "sql.py"):
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
    env_var() it made still returns the same value. SQL that parsed without error is remembered by its
    hash, so unchanged SQL is not parsed again. Writes are atomic; an unreadable file is ignored."""

    def __init__(self, path: Path, context_key: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.context_key = context_key
        self.renders: dict[bytes, _Render] = {}
        self.parsed: set[bytes] = set()
        self.with_ctes: dict[bytes, str] = {}
        self.columns: dict[bytes, list[str] | None] = {}
        self._used_columns: dict[bytes, list[str] | None] = {}
        self.macros_ok: set[bytes] = set()
        self._used_renders: dict[bytes, _Render] = {}
        self._used_parsed: set[bytes] = set()
        self._used_ctes: dict[bytes, str] = {}
        self._dirty = False
        if enabled:
            self._load()

    def _load(self) -> None:
        data = read_cache(self.path)
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("code") != _code_fingerprint():
            return
        self.macros_ok = set(data.get("macros_ok", ()))
        self.parsed = set(data.get("parsed", ()))
        self.with_ctes = dict(data.get("with_ctes", {}))
        self.columns = dict(data.get("columns", {}))
        if data.get("context") == self.context_key:
            self.renders = dict(data.get("renders", {}))

    def get(self, key: bytes) -> _Render | None:
        return self.renders.get(key) if self.enabled else None

    def keep(self, key: bytes, entry: _Render, new: bool) -> None:
        if self.enabled:
            self._used_renders[key] = entry
            self._dirty = self._dirty or new

    def parsed_ok(self, sql_key: bytes) -> bool:
        if sql_key in self.parsed:
            self._used_parsed.add(sql_key)
            return True
        return False

    def add_parsed(self, sql_key: bytes) -> None:
        if self.enabled:
            self._used_parsed.add(sql_key)
            self._dirty = True

    def cte_result(self, key: bytes) -> str | None:
        found = self.with_ctes.get(key)
        if found is not None:
            self._used_ctes[key] = found
        return found

    def add_cte_result(self, key: bytes, sql: str) -> None:
        if self.enabled:
            self._used_ctes[key] = sql
            self._dirty = True

    def output_columns(self, sql: str, path: str, raw_sql: str) -> list[str] | None:
        """The SELECT's output column names (None for `*`), parsed once per distinct SQL."""
        key = _digest("columns", sql)
        if key in self.columns:
            found = self.columns[key]
        else:
            from batchflow import sql as sqlmod

            found = sqlmod.output_columns(sqlmod.parse_bigquery(sql, path=path, raw_source=raw_sql))
            self._dirty = self._dirty or self.enabled
        if self.enabled:
            self._used_columns[key] = found
        return found

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
        if not self._dirty and len(self._used_renders) == len(self.renders) and len(self._used_parsed) == len(
            self.parsed
        ):
            return
        data = {
            "format": _CACHE_FORMAT,
            "code": _code_fingerprint(),
            "context": self.context_key,
            "macros_ok": sorted(self.macros_ok),
            "renders": self._used_renders,
            "parsed": sorted(self._used_parsed),
            "with_ctes": self._used_ctes,
            "columns": self._used_columns,
        }
        write_cache(self.path, data)


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
        enabled = partial_parse_enabled() if partial_parse is None else partial_parse
        macro_source = _macro_source(project)
        self._macro_key = _digest(macro_source[0])
        context_key = _digest(
            self._macro_key,
            project.name,
            repr(sorted(project.vars.items(), key=lambda kv: str(kv[0]))),
            repr(sorted(_target_context(target).items())),
        )
        self.cache = PartialParse(project.target_path / PARTIAL_PARSE_FILE, context_key, enabled)
        self.renderer = JinjaRenderer(
            project, target, macros_known_good=self.cache.macros_known_good(self._macro_key), macro_source=macro_source
        )
        if self.renderer._macro_module is not None:
            self.cache.add_macros_ok(self._macro_key)

    # -- context ---------------------------------------------------------------------------------
    def _resolve_ref(self, name: str) -> str:
        """What `ref(name)` renders as, at this point of compiling."""
        project, target = self.project, self.target
        if name in project.models:
            if self._materialized(name) == "ephemeral":
                return EPHEMERAL_PREFIX + name
            rendered = self._ref_relations.get(name)
            if rendered is None:  # base configs do not change while compiling
                rendered = self._ref_relations[name] = model_relation(self._base_config(name), name, target).render()
            return rendered
        if name in project.seeds:
            return model_relation(project.seeds[name].config, name, target).render()
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
        return source_relation(self._render_text(table.database), self._render_text(table.schema) or "",
                               table.identifier, self.target).render()

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
                elif os.environ.get(arg, _MISSING_ENV_VAR) != result:
                    return False
        except BatchflowError:
            return False
        return True

    def _context(
        self, model: ModelFile, captured: _Captured, is_incremental: bool,
        reads: list[tuple[str, Any, Any]] | None = None,
    ) -> dict[str, Any]:
        project, target = self.project, self.target
        record = reads.append if reads is not None else (lambda item: None)

        def ref(*args: str, **kwargs: Any) -> str:
            name = args[-1] if args else kwargs.get("name", "")
            result = self._resolve_ref(name)
            captured.refs.append(name)
            record(("ref", name, result))
            return result

        def source(source_name: str, table_name: str) -> str:
            result = self._resolve_source(source_name, table_name)
            captured.sources.append((source_name, table_name))
            record(("source", (source_name, table_name), result))
            return result

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
            record(("env", name, os.environ.get(name, _MISSING_ENV_VAR)))
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
        sql, captured, _ = self._render(name, is_incremental)
        return sql, captured

    def _render(self, name: str, is_incremental: bool) -> tuple[str, _Captured, list[tuple[str, Any, Any]]]:
        model = self.project.models[name]
        captured = _Captured(model.config)
        reads: list[tuple[str, Any, Any]] = []
        sql = self.renderer.render_fast(model, self._context(model, captured, is_incremental, reads))
        if sql is None:  # needs Jinja's compiler (or failed: Jinja renders again and reports where)
            captured = _Captured(model.config)
            reads = []
            sql = self.renderer.render(model, self._context(model, captured, is_incremental, reads))
        return sql, captured, reads

    def _render_cached(self, name: str) -> tuple[str, _Captured]:
        """`render_model` for compile(), through the partial-parse cache."""
        model = self.project.models[name]
        key = _digest(name, str(model.path), model.raw_sql, repr(model.config))
        entry = self.cache.get(key)
        if entry is not None and self._reads_hold(entry[4]):
            captured = _Captured({})
            captured.config, captured.refs, captured.sources = entry[1], list(entry[2]), list(entry[3])
            self.cache.keep(key, entry, new=False)
            return entry[0], captured
        sql, captured, reads = self._render(name, is_incremental=False)
        entry = (sql, captured.config, list(captured.refs), list(captured.sources), reads)
        self.cache.keep(key, entry, new=True)
        return sql, captured

    def compile(self) -> Manifest:
        """Render and parse every model; build the graph; inline ephemeral models."""
        self._rendered = {}
        # Materialization of a ref'd model may be set by its own config() call: render the
        # ephemeral candidates' configs first by rendering in two passes (cheap: no SQL parsing).
        for name in self.project.models:
            self._rendered[name] = self._render_cached(name)
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
                self._rendered[name] = self._render_cached(name)

        nodes: dict[str, Node] = {}
        checker = SettingsChecker()
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
            _check_config(model, config, checker, self.project.batch_defaults)
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
                if node.materialized == "batch":
                    self._check_batch_key(node)
        self.cache.save()
        known = {w.key for w in self.project.warnings}
        manifest.warnings = [*self.project.warnings, *self.target.warnings,
                             *(w for w in checker.warnings if w.key not in known)]
        return manifest

    def _check_batch_key(self, node: Node) -> None:
        """A batch model's columns, once the SQL is compiled: a `request` column, no reserved names (in
        any letter case), and a `key` naming columns of its SELECT. A SELECT * is checked by the run."""
        from batchflow.requests import reserved_column_problems

        key = node.config.get("key")
        keys = [key] if isinstance(key, str) else list(key or [])
        columns = self.cache.output_columns(node.compiled_sql, node.path, node.raw_sql)
        if columns is None:  # SELECT *: the columns are known only to the warehouse
            return
        problems = reserved_column_problems(columns)
        if problems:
            raise ConfigError("; ".join(problems) + "; nothing was run", node.path)
        folded = {c.lower() for c in columns}  # BigQuery column names are case-insensitive
        for name in keys:
            if str(name).lower() not in folded:
                raise ConfigError(
                    f"`key:` {name!r} is not a column of the model's SELECT{did_you_mean(str(name), columns)}; "
                    f"columns: {', '.join(columns)}",
                    node.path, _config_line(node.raw_sql, "key"),
                )

    def _render_text(self, text: str | None) -> str | None:
        """Render Jinja in a yml value such as `schema: "{{ target.schema }}"`."""
        if not text or "{{" not in text:
            return text
        if text in self._text_cache:  # one render per distinct text, not one per source() call
            return self._text_cache[text]
        env_context = {"target": _target_context(self.target), "var": lambda n, d=None: self.project.vars.get(n, d),
                       "env_var": lambda n, d="": os.environ.get(n, d)}
        pieces = simple_template(text)
        rendered = render_simple(pieces, env_context) if pieces is not None else None
        if rendered is None:
            rendered = self.renderer.env.from_string(text).render(env_context)
        if "env_var" not in text:  # the environment may change between calls
            self._text_cache[text] = rendered.strip()
        return rendered.strip()

    def finish_sql(self, manifest: Manifest, node: Node, sql: str) -> str:
        """Parse rendered SQL (errors name the source file and line) and inline ephemeral refs."""
        sql_key = _digest("parse", sql)
        if not self.cache.parsed_ok(sql_key):
            from batchflow import sql as sqlmod

            sqlmod.parse_bigquery(sql, path=node.path, raw_source=node.raw_sql)
            self.cache.add_parsed(sql_key)
        ephemerals = _ephemeral_chain(manifest, node)
        if not ephemerals:
            return sql
        ctes = [(EPHEMERAL_PREFIX + e.name, _strip_semicolon(e.compiled_sql)) for e in ephemerals]
        key = _digest("ctes", sql, *(part for cte in ctes for part in cte))
        done = self.cache.cte_result(key)
        if done is None:
            from batchflow import sql as sqlmod

            done = sqlmod.add_ctes(_strip_semicolon(sql), ctes)
            self.cache.add_cte_result(key, done)
        return done

    def compile_for_run(self, manifest: Manifest, name: str, is_incremental: bool) -> str:
        """Re-render an incremental model once the runner knows whether its table exists."""
        sql, _ = self.render_model(name, is_incremental=is_incremental)
        return self.finish_sql(manifest, manifest.nodes[name], sql)


_MISSING = object()
UNBUILT_PREFIX = "__bf_unbuilt__"


class NeedsBatchResults(CompileError):
    """A model reads a batch model whose results do not exist yet, so it cannot be inlined."""


def inline_unbuilt(manifest: Manifest, name: str, exists: Callable[[Node], bool]) -> str:
    """The model's SQL with every ref to a model that is not built yet replaced by a CTE of that
    model's own SQL (recursively), so a dry run can validate and count on a fresh dataset.
    Raises NeedsBatchResults when the chain reaches a batch model with no results."""
    chain: dict[str, Node] = {}

    def visit(node: Node) -> None:
        for dep in node.depends_on:
            upstream = manifest.nodes.get(dep)
            if (upstream is None or upstream.resource_type != "model" or upstream.materialized == "ephemeral"
                    or dep in chain or exists(upstream)):
                continue
            if upstream.materialized == "batch":
                raise NeedsBatchResults(f"needs the answers of batch model {dep!r}, which has none yet",
                                        manifest.nodes[name].path)
            visit(upstream)
            chain[dep] = upstream

    visit(manifest.nodes[name])

    def swap(sql: str) -> str:
        for dep, upstream in chain.items():
            sql = sql.replace(upstream.relation.render(), UNBUILT_PREFIX + dep)
        return _strip_semicolon(sql)

    sql = swap(manifest.nodes[name].compiled_sql)
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
    }


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
