"""dbt's Jinja world: macros by package, `adapter.dispatch`, `return`, and the context objects dbt offers.

Macros are taken from their files the way dbt takes them: each `{% macro %}` block (and `{% test %}` block,
as the macro `test_<name>`) is its own small template, compiled the first time it is called. A name in a
template resolves through a `Scope`: the render's own context (ref, source, config, ...), then macros visible
from the package the template belongs to (its own, the root project's, then the internal ones: batchflow's
built-ins and the `dbt.*` cross-database macros), then package namespaces (`dbt_utils.star`). Each macro
call goes through a `MacroGenerator`, which turns dbt's `{{ return(x) }}` (an exception here, as in dbt)
into the call's value.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from batchflow.errors import CompileError

if TYPE_CHECKING:
    import jinja2

INTERNAL = "dbt"  # the package of batchflow's built-in macros and dbt's cross-database macros
_BLOCK = re.compile(
    r"\{%(-?)\s*(macro|test|materialization|snapshot)\s+(\w+)(.*?)(-?)%\}(.*?)\{%(-?)\s*end\2\s*(-?)%\}", re.DOTALL)
_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_DOCS = re.compile(r"\{%-?\s*docs\s+(\w+)\s*-?%\}(.*?)\{%-?\s*enddocs\s*-?%\}", re.DOTALL)


class MacroReturn(Exception):
    """dbt's `{{ return(value) }}`: ends the macro; its MacroGenerator returns `value`."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


def do_return(value: Any = None) -> None:
    """The `return()` of dbt's context."""
    raise MacroReturn(value)


@dataclass
class MacroDef:
    """One macro block of a file."""

    package: str
    name: str
    path: Path
    source: str  # the block alone, preceded by as many newlines as lines before it in the file
    kind: str = "macro"  # "macro" | "test" | "materialization"
    adapter: str = "default"  # materializations: the adapter they are written for


def _blank(match: re.Match[str]) -> str:
    return "\n" * match.group(0).count("\n")


def macro_blocks(text: str, path: Path, package: str) -> list[MacroDef]:
    """Every macro, test and materialization block of one file (the text between them is ignored, as dbt
    ignores it)."""
    text = _COMMENT.sub(_blank, text)
    found: list[MacroDef] = []
    for m in _BLOCK.finditer(text):
        kind, name, header = m.group(2), m.group(3), m.group(4)
        pad = "\n" * text.count("\n", 0, m.start())
        if kind == "macro":
            found.append(MacroDef(package, name, path, pad + m.group(0)))
        elif kind == "test":
            source = (f"{{%{m.group(1)} macro test_{name}{header}{m.group(5)}%}}{m.group(6)}"
                      f"{{%{m.group(7)} endmacro {m.group(8)}%}}")
            found.append(MacroDef(package, f"test_{name}", path, pad + source, kind="test"))
        elif kind == "materialization":
            adapter = re.search(r"adapter\s*=\s*['\"](\w+)['\"]", header)
            found.append(MacroDef(package, name, path, "", kind="materialization",
                                  adapter=adapter.group(1) if adapter else "default"))
    return found


def docs_blocks(text: str) -> dict[str, str]:
    """`{% docs name %}...{% enddocs %}` blocks of a markdown file."""
    return {m.group(1): m.group(2).strip() for m in _DOCS.finditer(text)}


class MacroRegistry:
    """Every macro of the project, its packages and batchflow, by package; compiles them on first use."""

    def __init__(self, root_package: str, dialect: str, dispatch: list[dict[str, Any]] | None = None):
        self.root = root_package
        self.dialect = dialect
        self.macros: dict[str, dict[str, MacroDef]] = {INTERNAL: {}, root_package: {}}
        self.materializations: dict[str, MacroDef] = {}
        self.search_orders: dict[str, list[str]] = {}
        for item in dispatch or []:
            if isinstance(item, dict) and item.get("macro_namespace"):
                self.search_orders[str(item["macro_namespace"])] = [str(p) for p in item.get("search_order") or []]
        self._templates: dict[tuple[str, str], jinja2.Template] = {}
        #: (path, text) of what macro files hold outside their blocks, when it holds Jinja tags: parsed by
        #: the syntax check so a broken block (`{% macro bad( %}` with no end) is an error, not ignored
        self.loose: list[tuple[Path, str]] = []
        self._lock = threading.Lock()
        self.env: jinja2.Environment | None = None

    def add_file(self, text: str, path: Path, package: str) -> None:
        """Register the blocks of one macro file (later files of a package win, as later definitions do)."""
        rest = _DOCS.sub(_blank, _BLOCK.sub(_blank, _COMMENT.sub(_blank, text)))
        if "{%" in rest or "{{" in rest:
            self.loose.append((path, rest))
        for block in macro_blocks(text, path, package):
            if block.kind == "materialization":
                self.materializations[block.name] = block
            else:
                self.macros.setdefault(package, {})[block.name] = block

    @property
    def packages(self) -> set[str]:
        """Names usable as namespaces."""
        return set(self.macros)

    def find(self, package: str | None, name: str) -> MacroDef | None:
        """Macro `name` as a template of `package` sees it: its own, the root project's, then internal."""
        for pkg in (package, self.root, INTERNAL):
            if pkg is not None:
                found = self.macros.get(pkg, {}).get(name)
                if found is not None:
                    return found
        return None

    def template(self, macro: MacroDef) -> jinja2.Template:
        """The compiled template of one macro (its filename is the macro file, for error lines)."""
        key = (macro.package, macro.name)
        found = self._templates.get(key)
        if found is None:
            assert self.env is not None
            with self._lock:
                found = self._templates.get(key)
                if found is None:
                    code = self.env.compile(macro.source, name=f"{macro.package}.{macro.name}",
                                            filename=str(macro.path))
                    found = self.env.template_class.from_code(self.env, code, self.env.make_globals(None), None)
                    self._templates[key] = found
        return found

    def dispatch_candidates(self, name: str, namespace: str | None) -> list[tuple[str | None, str]]:
        """(package, macro name) in dispatch order: per package of the search order, `<dialect>__name`
        then `default__name` (dbt's order; the dialect is the one the project is written in)."""
        prefixes = [self.dialect, "default"] if self.dialect != "default" else ["default"]
        if namespace is None:
            packages: list[str | None] = [None]
        else:
            packages = list(self.search_orders.get(namespace) or [namespace])
        return [(pkg, f"{prefix}__{name}") for pkg in packages for prefix in prefixes]


class Namespace:
    """A package's macros as attributes (`dbt_utils.star`), bound to the render's scope."""

    def __init__(self, scope: Scope, package: str):
        self._scope = scope
        self._package = package

    def __getattr__(self, name: str) -> Any:
        macro = self._scope.registry.macros.get(self._package, {}).get(name)
        if macro is None and self._package == INTERNAL:
            macro = self._scope.registry.find(None, name)  # dbt.<x> also reaches root overrides of internals
        if macro is None:
            if name.startswith("__"):
                raise AttributeError(name)
            raise CompileError(f"macro '{self._package}.{name}' is not defined"
                               f"{_close(name, self._scope.registry.macros.get(self._package, {}))}")
        return self._scope.generator(macro)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


def _close(name: str, choices: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class MacroGenerator:
    """A callable macro: runs the macro in `scope` (its package's view of names) and honours `return()`."""

    def __init__(self, scope: Scope, macro: MacroDef):
        self.scope = scope
        self.macro = macro
        self._bound: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._bound is None:
            template = self.scope.registry.template(self.macro)
            context = template.new_context(self.scope.for_package(self.macro.package), shared=True)
            for _ in template.root_render_func(context):  # defines the macro in the context
                pass
            self._bound = context.vars[self.macro.name]
        try:
            return self._bound(*args, **kwargs)
        except MacroReturn as returned:
            return returned.value

    def __str__(self) -> str:  # `{{ some_macro }}` without a call, as Jinja prints a macro
        return f"<macro {self.macro.package}.{self.macro.name}>"


class Scope(Mapping[str, Any]):
    """Name lookup of one template render: the context, then macros, package namespaces and Jinja's globals.
    Jinja reads names through `__contains__` and `__getitem__` (templates run with a shared context)."""

    def __init__(self, registry: MacroRegistry, base: dict[str, Any], package: str | None = None,
                 reads: Callable[[str], None] | None = None, parent: Scope | None = None):
        self.registry = registry
        self.base = base
        self.package = package or registry.root
        self._reads = reads
        self._generators: dict[tuple[str, str], MacroGenerator] = parent._generators if parent else {}
        self._scopes: dict[str, Scope] = parent._scopes if parent else {}
        if parent is None:
            self._scopes[self.package] = self

    def for_package(self, package: str) -> Scope:
        """The same render seen from a macro of `package`."""
        found = self._scopes.get(package)
        if found is None:
            found = self._scopes[package] = Scope(self.registry, self.base, package, self._reads, self)
        return found

    def generator(self, macro: MacroDef) -> MacroGenerator:
        key = (macro.package, macro.name)
        found = self._generators.get(key)
        if found is None:
            found = self._generators[key] = MacroGenerator(self, macro)
        return found

    def _lookup(self, key: str) -> Any:
        if key in self.base:
            if self._reads is not None:
                self._reads(key)
            return self.base[key]
        macro = self.registry.find(self.package, key)
        if macro is not None:
            return self.generator(macro)
        if key in self.registry.macros:
            return Namespace(self, key)
        assert self.registry.env is not None
        if key in self.registry.env.globals:
            return self.registry.env.globals[key]
        return _NOTHING

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is _NOTHING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key) is not _NOTHING

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def copy(self) -> dict[str, Any]:  # Jinja's traceback rewriting copies the context's names
        return dict(self.base)

    def __len__(self) -> int:
        return len(self.base)


_NOTHING = object()


def render_template(template: jinja2.Template, scope: Scope) -> str:
    """`template.render` with `scope` as its shared context (so names resolve lazily through it)."""
    context = template.new_context(scope, shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - rewritten to template lines, as Template.render does
        return template.environment.handle_exception()


# ---- the objects of dbt's context ---------------------------------------------------------------------


class DbtExceptions:
    """`exceptions.*` of dbt's context."""

    def __init__(self, warn: Callable[[str], None]):
        self._warn = warn

    @staticmethod
    def raise_compiler_error(message: str, node: Any = None) -> None:
        raise CompileError(f"Compilation Error: {message}")

    def warn(self, message: str, node: Any = None) -> str:
        self._warn(str(message))
        return ""

    @staticmethod
    def raise_not_implemented(message: str) -> None:
        raise CompileError(f"not implemented: {message}")

    @staticmethod
    def raise_fail_fast_error(message: str, node: Any = None) -> None:
        raise CompileError(f"fail fast: {message}")


def log(message: Any, info: bool = False) -> str:
    """dbt's `log()`: printed (on standard error, so JSON output on stdout stays clean)."""
    sys.stderr.write(f"{message}\n")
    return ""


class Modules:
    """`modules.*`: the Python modules dbt exposes."""

    datetime = datetime
    re = re
    itertools = itertools
    json = json

    @property
    def pytz(self) -> Any:
        return _Pytz()


class _Pytz:
    """`modules.pytz` as dbt packages use it (`timezone(name)`, `utc`, `all_timezones`), on the standard
    library's zoneinfo (pytz is not a dependency). A zone given to `datetime(..., tzinfo=...)` works as
    pytz's does for the zone's standard offsets; pytz's `localize()` is not there."""

    utc = UTC = datetime.timezone.utc

    @staticmethod
    def timezone(name: str) -> Any:
        import zoneinfo

        if str(name).upper() == "UTC":
            return datetime.timezone.utc
        try:
            return zoneinfo.ZoneInfo(str(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            from batchflow.errors import CompileError

            raise CompileError(f"modules.pytz.timezone: unknown time zone {name!r}") from None

    @property
    def all_timezones(self) -> list[str]:
        import zoneinfo

        return sorted(zoneinfo.available_timezones())


def _tojson(value: Any, default: Any = None, sort_keys: bool = False) -> Any:
    try:
        return json.dumps(value, sort_keys=sort_keys, default=str)
    except (TypeError, ValueError):
        return default


def _fromjson(text: str, default: Any = None) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _toyaml(value: Any, default: Any = None, sort_keys: bool = False) -> Any:
    import yaml

    try:
        return yaml.safe_dump(value, sort_keys=sort_keys)
    except yaml.YAMLError:
        return default


def _fromyaml(text: str, default: Any = None) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return default


def _set(value: Any, default: Any = None) -> Any:
    try:
        return set(value)
    except TypeError:
        return default


def _zip(*args: Any, default: Any = None) -> Any:
    try:
        return list(zip(*args))
    except TypeError:
        return default


INVOCATION_ID = str(uuid.uuid4())
RUN_STARTED_AT = datetime.datetime.now(datetime.timezone.utc)


def static_context() -> dict[str, Any]:
    """The parts of dbt's context that do not depend on the node (functions, modules, run identity)."""
    return {
        "return": do_return,
        "log": log,
        "modules": Modules(),
        "fromjson": _fromjson,
        "tojson": _tojson,
        "fromyaml": _fromyaml,
        "toyaml": _toyaml,
        "set": _set,
        "set_strict": set,
        "zip": _zip,
        "zip_strict": lambda *a: list(zip(*a)),
        "local_md5": lambda text: hashlib.md5(str(text).encode("utf-8")).hexdigest(),
        "run_started_at": RUN_STARTED_AT,
        "invocation_id": INVOCATION_ID,
        "dbt_version": "1.11.0",
        "flags": _Flags(),
        "selected_resources": [],
        "print": _print,
    }


def _print(*args: Any) -> str:
    """dbt's `print()`: to standard output, rendering nothing."""
    print(*args, flush=True)
    return ""


def as_bool(value: Any) -> Any:
    """dbt's `as_bool` filter: 'true'/'false' text as a boolean (anything else unchanged)."""
    text = str(value).strip().lower()
    return {"true": True, "false": False}.get(text, value)


def as_number(value: Any) -> Any:
    """dbt's `as_number` filter: numeric text as an int or float (anything else unchanged)."""
    try:
        return int(str(value))
    except ValueError:
        try:
            return float(str(value))
        except ValueError:
            return value


def as_native(value: Any) -> Any:
    """dbt's `as_native` filter: a Python literal in text as its value (anything else unchanged)."""
    import ast

    try:
        return ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        return value


#: dbt's filters for native values in rendered text (`{{ var('on') | as_bool }}`)
DBT_FILTERS = {"as_bool": as_bool, "as_number": as_number, "as_native": as_native, "as_text": str}


class _Flags:
    """`flags.*`: dbt's invocation flags, as a plain run has them."""

    FULL_REFRESH = False
    STORE_FAILURES = False
    WHICH = "run"

    def __getattr__(self, name: str) -> Any:
        return None


# ---- query results (dbt returns agate tables) -------------------------------------------------------------


class _Named(list):
    """A list whose items are also reachable by name (agate's MappedSequence)."""

    def __init__(self, items: list[Any], keys: list[str]):
        super().__init__(items)
        self._keys = keys

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return list.__getitem__(self, self._keys.index(key))
        return list.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> list[Any]:
        return list(self)

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(self._keys, self))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._keys else default


@dataclass
class ResultColumn:
    """One column of a query result: `name`, `values()`."""

    name: str
    _values: list[Any] = field(default_factory=list)
    data_type: str = ""

    def values(self) -> list[Any]:
        return list(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class ResultTable:
    """The part of agate.Table that dbt macros use: `rows`, `columns`, `column_names`, `print_table()`."""

    def __init__(self, column_names: list[str], rows: list[tuple[Any, ...]], types: list[str] | None = None):
        self.column_names = list(column_names)
        self.rows = _Named([_Named(list(r), self.column_names) for r in rows], [])
        self.columns = _Named([ResultColumn(n, [r[i] for r in rows], (types or [""] * len(column_names))[i])
                               for i, n in enumerate(column_names)], self.column_names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def print_table(self, *args: Any, **kwargs: Any) -> None:
        for row in self.rows[:20]:
            sys.stderr.write(" | ".join(map(str, row)) + "\n")


def arrow_to_table(table: Any) -> ResultTable:
    """A pyarrow Table as a ResultTable."""
    names = list(table.column_names)
    columns = [table.column(i).to_pylist() for i in range(len(names))]
    rows = list(zip(*columns)) if columns else []
    return ResultTable(names, rows, [str(t) for t in table.schema.types])
