"""Reading a batchflow project from disk: project file, profiles, models, macros, sources, seeds, yml docs.

`load_project` reads `batchflow_project.yml` (or a dbt project's `dbt_project.yml`) and everything it points
at; `load_profile` reads the chosen target of `profiles.yml`. Every configuration error names file and line.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchflow.errors import ConfigError
from batchflow.yamlio import LineDict, LineList, ParseCache, line_of, load_yaml, parse_yaml, to_plain


@dataclass
class ColumnDoc:
    """A documented column with its data tests (e.g. ["not_null", {"accepted_values": {...}}])."""

    name: str
    description: str = ""
    data_type: str | None = None
    tests: list[Any] = field(default_factory=list)
    line: int | None = None  # line of the column entry in its yml file


@dataclass
class ModelFile:
    """A `models/**/*.sql` file before compiling."""

    name: str  # file stem, unique across the project
    path: Path  # relative to the project root, e.g. models/staging/stg_reviews.sql
    abs_path: Path
    raw_sql: str
    fqn: list[str]  # [project, *subfolders, name], used for `models:` config blocks and path: selection
    config: dict[str, Any]  # merged from batchflow_project.yml `models:` blocks and the model's yml entry
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)
    yml_path: Path | None = None  # the yml file that documents this model, if any
    yml_line: int | None = None  # line of the model's entry in yml_path
    tests: list[Any] = field(default_factory=list)  # model-level data tests of the yml entry
    package: str | None = None  # the dbt package it comes from (None: the project itself)
    resource_type: str = "model"  # "snapshot": a `{% snapshot %}` block or a yml `snapshots:` entry


@dataclass
class Seed:
    """A `seeds/*.csv` file."""

    name: str
    path: Path  # relative to the project root
    abs_path: Path
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)
    fqn: list[str] = field(default_factory=list)  # [project, *subfolders, name], for `seeds:` config blocks
    yml_path: Path | None = None
    yml_line: int | None = None


@dataclass
class SourceTable:
    """A table declared under `sources:` in a models yml file."""

    source_name: str
    name: str
    schema: str  # dataset (defaults to the source name)
    database: str | None  # BigQuery project; None means the target's
    identifier: str  # physical table name (defaults to name)
    sample: Path | None  # absolute path of a CSV that stands in for the table on the local target
    yml_path: Path
    line: int
    description: str = ""
    columns: dict[str, ColumnDoc] = field(default_factory=dict)
    tests: list[Any] = field(default_factory=list)  # table-level data tests


@dataclass
class Project:
    """Everything read from the project directory."""

    name: str
    root: Path
    project_file: Path
    profile: str
    target_path: Path  # absolute, default <root>/target
    vars: dict[str, Any]
    models: dict[str, ModelFile]
    seeds: dict[str, Seed]
    sources: dict[tuple[str, str], SourceTable]
    macro_files: list[Path]  # absolute paths of the project's macros/*.sql
    batch_defaults: dict[str, Any] = field(default_factory=dict)  # `batch:` block of the project file
    key_lines: dict[str, int] = field(default_factory=dict)  # line of each top-level key of project_file
    #: problems that do not stop the command: dbt keys batchflow ignores, config paths matching nothing, ...
    warnings: list[ConfigWarning] = field(default_factory=list)
    dialect: str | None = None  # the SQL dialect the models are written in (`dialect:`; None: not set)
    dispatch: list[dict[str, Any]] = field(default_factory=list)  # dbt's `dispatch:` search orders
    packages: list[Any] = field(default_factory=list)  # batchflow.packages.Package, in load order
    package_macro_files: list[tuple[str, Path]] = field(default_factory=list)  # (package name, macro file)
    docs: dict[str, str] = field(default_factory=dict)  # `{% docs name %}` blocks of the docs folders
    hooks: dict[str, Any] = field(default_factory=dict)  # `on-run-start` / `on-run-end` of the project file
    analysis_paths: list[str] = field(default_factory=list)  # folders of analyses (compiled, never run)


@dataclass
class Target:
    """One output of profiles.yml: where models are built and which batch backend answers requests."""

    name: str  # e.g. "local", "prod"
    profile: str
    type: str  # "duckdb" | "bigquery"
    schema: str  # DuckDB schema / BigQuery dataset for models
    database: str | None = None  # BigQuery project; None on DuckDB
    threads: int = 4
    settings: dict[str, Any] = field(default_factory=dict)  # the whole target block, env_var() resolved
    batch: dict[str, Any] = field(default_factory=dict)  # the target's `batch:` block (backend, provider, ...)
    profiles_file: Path | None = None
    warnings: list[ConfigWarning] = field(default_factory=list)  # dbt connection keys batchflow ignores, ...


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------

PROJECT_FILE_NAMES = ("batchflow_project.yml", "dbt_project.yml")
#: Set to 0 to load and compile without reading or writing the partial-parse caches in target/.
PARTIAL_PARSE_ENV = "BATCHFLOW_PARTIAL_PARSE"
#: Parsed property (yml) files by content (see yamlio.ParseCache); compiling has its own cache file.
YML_CACHE_FILE = "partial_parse_yml.batchflow.pickle"
PROFILES_FILE_NAME = "profiles.yml"
PROFILES_DIR_ENV = "BATCHFLOW_PROFILES_DIR"
TARGET_TYPES = ("duckdb", "bigquery")

_PROJECT_KEYS = (
    "name", "profile", "model-paths", "macro-paths", "seed-paths", "target-path", "vars", "models", "seeds", "batch",
)
# Keys of a dbt_project.yml that batchflow has no use for: accepted so dbt projects load unchanged.
_IGNORED_PROJECT_KEYS = frozenset({
    "version", "config-version", "test-paths", "analysis-paths", "snapshot-paths", "clean-targets",
    "require-dbt-version", "packages-install-path", "docs-paths", "asset-paths", "flags", "quoting",
    "on-run-start", "on-run-end", "query-comment", "dispatch", "tests", "data_tests", "sources", "snapshots",
    "analyses", "metrics", "semantic-models", "saved-queries", "exposures", "log-path", "modules-path",
    "restrict-access", "vars-file",
})
_YML_KEYS = ("version", "models", "sources", "seeds")
_IGNORED_YML_KEYS = frozenset({
    "macros", "exposures", "metrics", "semantic_models", "saved_queries", "analyses", "snapshots", "groups",
    "unit_tests", "data_tests", "tests",
})

# Configs whose value is a mapping: without a `+` they would otherwise read as a sub-folder.
_DICT_CONFIGS = frozenset({
    "meta", "docs", "persist_docs", "grants", "partition_by", "labels", "column_types", "contract", "quoting",
    "batch", "config",
})
_APPEND_CONFIGS = frozenset({"tags", "pre-hook", "post-hook", "pre_hook", "post_hook"})
_UPDATE_CONFIGS = frozenset({"meta", "batch", "labels", "grants", "persist_docs", "docs"})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def partial_parse_enabled() -> bool:
    """Whether the partial-parse caches are on (BATCHFLOW_PARTIAL_PARSE is not 0/false/no/off)."""
    return os.environ.get(PARTIAL_PARSE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def merge_configs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, dbt's way: tags and hooks accumulate, meta-like dicts update,
    anything else is replaced. Neither argument is modified."""
    merged = dict(base)
    for key, value in override.items():
        if key in _APPEND_CONFIGS:
            merged[key] = list(dict.fromkeys(_as_list(merged.get(key)) + _as_list(value)))
        elif key in _UPDATE_CONFIGS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _rel(root: Path, path: Path) -> Path:
    """`path` relative to `root` when it is inside it (a model folder may live elsewhere)."""
    prefix = str(root) + os.sep
    text = str(path)
    return Path(text[len(prefix):]) if text.startswith(prefix) else path


def _entry_name(entry: Any, kind: str, path: Path, fallback_line: int | None) -> str:
    """The `name:` of a yml list entry, which must be a mapping with a non-empty scalar name."""
    if not isinstance(entry, dict):
        raise ConfigError(f"each {kind} entry must be a mapping with a `name:`", path, line_of(entry) or fallback_line)
    name = entry.get("name")
    if name is None or isinstance(name, (dict, list, bool)) or str(name) == "":
        raise ConfigError(f"{kind} entry without a `name:`", path, line_of(entry) or fallback_line)
    return str(name)


def _mapping(value: Any, what: str, path: Path, line: int | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}", path, line)
    return value


def _list(value: Any, what: str, path: Path, line: int | None) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list, got {type(value).__name__}", path, line)
    return value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# ---- strict settings: every key and value checked where it is written --------------------------------------
#
# The declarations live in batchflow/settings.py (pydantic); settings_spec.json is generated from them and read
# here, so loading a project never imports pydantic (start-up time of `batchflow ls`).

_SPEC_FILE = Path(__file__).with_name("settings_spec.json")
_spec_cache: dict[str, Any] | None = None


def settings_spec() -> dict[str, Any]:
    """The generated declarations of every configuration section (see batchflow.settings.build_spec)."""
    global _spec_cache
    if _spec_cache is None:
        import json

        _spec_cache = json.loads(_SPEC_FILE.read_text(encoding="utf-8"))
    return _spec_cache


@dataclass(frozen=True)
class ConfigWarning:
    """A configuration problem that does not stop the command (a dbt key batchflow ignores, an unused
    config path). `str()` gives `path:line: message`."""

    message: str
    path: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = "" if self.path is None else f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return where + self.message

    def startswith(self, prefix: str) -> bool:  # noqa: D102 - lets callers treat it as its text
        return str(self).startswith(prefix)

    def __contains__(self, text: str) -> bool:
        return text in str(self)


_KIND_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "list": "a list", "dict": "a mapping", "section": "a mapping", "any": "anything"}


def _unchecked(value: Any) -> bool:
    """Values left to a later step: unrendered Jinja, an env_var() whose absence is reported with its line."""
    return isinstance(value, str) and ("{{" in value or _MISSING_ENV in value)


def _kind_text(kind: dict[str, Any]) -> str:
    t = kind["type"]
    if t == "choice":
        return "one of " + ", ".join(repr(c) for c in kind["choices"])
    if t == "union":
        return " or ".join(_kind_text(o) for o in kind["options"])
    if t == "list" and kind["items"]["type"] not in ("any",):
        return f"a list of {_kind_text(kind['items']).removeprefix('a ').removeprefix('an ')}s" \
            if kind["items"]["type"] in ("str", "int", "float") else f"a list ({_kind_text(kind['items'])} each)"
    return _KIND_WORDS.get(t, t)


class _BadValue(Exception):
    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


class SettingsChecker:
    """Checks mappings against the declared sections, raising ConfigError at the first error (file:line, key,
    did-you-mean) and collecting warnings (each dbt key once per section)."""

    def __init__(self) -> None:
        self.warnings: list[ConfigWarning] = []
        self._warned: set[tuple[str, str]] = set()

    def warn(self, message: str, path: Path | str | None, line: int | None, key: str | None = None,
             once: tuple[str, str] | None = None) -> None:
        """Record a warning; with `once`, only the first warning of that identity is kept."""
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        self.warnings.append(ConfigWarning(message, None if path is None else str(path), line, key))

    def section(self, section_id: str, data: Any, path: Path | str, line: int | None = None, *,
                prefix: str = "", skip: Iterable[str] = (), extra: Mapping[str, Any] | None = None,
                required: bool = True) -> None:
        """Check every key and value of `data` (a mapping written at `path`) against section `section_id`.
        `skip`: keys the caller checks itself; `extra`: more fields allowed here; `prefix`: how keys are
        spelt in this place (`+` in folder configs)."""
        spec = settings_spec()[section_id]
        fields: dict[str, Any] = {**spec["fields"], **(extra or {})}
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{spec['name']} must be a mapping, got {type(data).__name__}", path, line)
        skip = set(skip)
        for key, value in data.items():
            name = str(key)
            key_line = line_of(data, key) or line
            if name in skip:
                continue
            kind = fields.get(name)
            if kind is not None:
                self.value(kind, value, f"{prefix}{name}", path, key_line)
            elif name in spec["dbt"]:
                self.warn(f"`{prefix}{name}` is a dbt setting batchflow does not act on ({spec['dbt'][name]}); "
                          "it is ignored", path, key_line, name, once=(section_id, name))
            elif name not in spec["inert"]:
                known = [prefix + k for k in list(fields) + list(spec["dbt"])]
                raise ConfigError(
                    f"unknown key {prefix + name!r} in {spec['name']}{did_you_mean(prefix + name, known)}",
                    path, key_line,
                )
        if required:
            for name, kind in fields.items():
                if kind.get("required") and name not in data and name not in skip:
                    raise ConfigError(f"{spec['name']} needs a `{prefix}{name}:`", path, line_of(data) or line)

    def value(self, kind: dict[str, Any], value: Any, key: str, path: Path | str, line: int | None) -> None:
        """Check one value against its declared kind; ConfigError names the key and the value."""
        try:
            self._value(kind, value, path, line)
        except _BadValue as bad:
            raise ConfigError(f"`{key}:` {bad.message}", path, bad.line or line) from None

    def _value(self, kind: dict[str, Any], value: Any, path: Path | str, line: int | None) -> None:
        t = kind["type"]
        if value is None:
            if kind.get("nullable") or kind.get("default") is None or t in ("list", "dict", "section", "any"):
                return
            raise _BadValue(f"needs a value ({_kind_text(kind)})")
        if _unchecked(value) or t == "any":
            return
        if t == "union":
            errors = []
            for option in kind["options"]:
                try:
                    self._value(option, value, path, line)
                    return
                except _BadValue as bad:
                    errors.append((option, bad))
            shaped = [e for o, e in errors if (o["type"] == "list") == isinstance(value, list)]
            if shaped and (kind["options"][0]["type"] == "choice" or isinstance(value, list)):
                raise shaped[0]
            raise _BadValue(f"must be {_kind_text(kind)}, got {value!r}")
        if t == "choice":
            choices = kind["choices"]
            folded = str(value).upper() if kind.get("case_insensitive") and isinstance(value, str) else value
            if folded in choices and not isinstance(value, bool):
                return
            hint = did_you_mean(str(folded), [str(c) for c in choices])
            raise _BadValue(f"must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")
        if t == "int":
            number = value
            if isinstance(value, str):
                try:
                    number = int(value.strip())
                except ValueError:
                    raise _BadValue(f"must be an integer, got {value!r}") from None
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            if isinstance(number, bool) or not isinstance(number, int):
                raise _BadValue(f"must be an integer, got {value!r}")
            self._bounds(kind, number, value)
            return
        if t == "float":
            number = value
            if isinstance(value, str):
                try:
                    number = float(value.strip())
                except ValueError:
                    raise _BadValue(f"must be a number, got {value!r}") from None
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise _BadValue(f"must be a number, got {value!r}")
            self._bounds(kind, number, value)
            return
        if t == "bool":
            if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
                return
            raise _BadValue(f"must be true or false, got {value!r}")
        if t == "str":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise _BadValue(f"must be a string, got {type(value).__name__} {_short(value)}")
            return
        if t == "list":
            if not isinstance(value, list):
                raise _BadValue(f"must be {_kind_text(kind)}, got {type(value).__name__} {_short(value)}")
            for index, item in enumerate(value):
                item_line = value.item_line(index) if isinstance(value, LineList) else line
                if kind["items"]["type"] == "section":
                    self.section(kind["items"]["section"], item, path, item_line)
                else:
                    try:
                        self._value(kind["items"], item, path, item_line)
                    except _BadValue as bad:
                        raise _BadValue(f"item {index + 1}: {bad.message}", item_line) from None
            return
        if t in ("dict", "section"):
            if not isinstance(value, dict):
                raise _BadValue(f"must be a mapping, got {type(value).__name__} {_short(value)}")
            if t == "section":
                self.section(kind["section"], value, path, line)
                return
            values = kind["values"]
            for name, item in value.items():
                item_line = line_of(value, name) or line
                if values["type"] == "section":
                    self.section(values["section"], item, path, item_line)
                elif values["type"] != "any":
                    try:
                        self._value(values, item, path, item_line)
                    except _BadValue as bad:
                        raise _BadValue(f"{name}: {bad.message}", item_line) from None
            return
        raise _BadValue(f"has an undeclared type {t!r}")  # a mistake in settings.py, not in the file

    @staticmethod
    def _bounds(kind: dict[str, Any], number: float, raw: Any) -> None:
        for name, test, text in (("ge", lambda n, b: n >= b, "≥"), ("gt", lambda n, b: n > b, ">"),
                                 ("le", lambda n, b: n <= b, "≤"), ("lt", lambda n, b: n < b, "<")):
            if name in kind and not test(number, kind[name]):
                raise _BadValue(f"must be {text} {kind[name]:,}, got {raw!r}")


def _short(value: Any) -> str:
    text = repr(to_plain(value))
    return text if len(text) <= 40 else text[:37] + "..."


# ---- hierarchical `models:` / `seeds:` configs ----------------------------------------------------


@dataclass
class _ConfigLevel:
    """One level of a `models:`/`seeds:` block: its configs and the folders/names below it."""

    configs: dict[str, Any]
    children: dict[str, _ConfigLevel]
    line: int | None
    used: bool = False


def _config_level(value: Any, path: Path, line: int | None, checker: SettingsChecker | None = None,
                  section: str = "model_config") -> _ConfigLevel:
    level = _ConfigLevel({}, {}, line)
    for key, child in _mapping(value, "a `models:`/`seeds:` level", path, line).items():
        key = str(key)
        key_line = line_of(value, key)
        if key.startswith("+"):
            name, prefix = key[1:].strip(), "+"
        elif (child is None or isinstance(child, dict)) and key not in _DICT_CONFIGS:
            level.children[key] = _config_level(child, path, key_line, checker, section)
            continue
        else:  # dbt's rule: a key without `+` whose value is not a mapping is a config
            name, prefix = key, ""
        if checker is not None:
            checker.section(section, {name: child}, path, key_line, prefix=prefix)
        # A Jinja value (`+enabled: "{{ var('load_source_data', false) }}"`) is rendered by the compiler,
        # which knows the target, natively as dbt renders it.
        level.configs[name] = to_plain(child)
    return level


def _resolve_config(root: _ConfigLevel, fqn: list[str]) -> dict[str, Any]:
    """Configs along `fqn` from the top of the block down; deeper levels win, tags accumulate."""
    config = merge_configs({}, root.configs)
    level = root
    for part in fqn:
        level = level.children.get(part)  # type: ignore[assignment]
        if level is None:
            break
        level.used = True
        config = merge_configs(config, level.configs)
    return config


def _unused_config_paths(level: _ConfigLevel, prefix: str) -> Iterator[tuple[str, int | None]]:
    for name, child in level.children.items():
        dotted = f"{prefix}.{name}"
        if not child.used:
            yield dotted, child.line
        else:
            yield from _unused_config_paths(child, dotted)


# ---- the project file ------------------------------------------------------------------------------


def find_project_file(project_dir: Path) -> Path:
    """`batchflow_project.yml`, else `dbt_project.yml`, in `project_dir`."""
    for file_name in PROJECT_FILE_NAMES:
        candidate = project_dir / file_name
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {' or '.join(PROJECT_FILE_NAMES)} in {project_dir} (use --project-dir to point at a project)",
        project_dir,
    )


def _check_project_keys(data: LineDict, path: Path, checker: SettingsChecker | None = None) -> None:
    """Every top-level key and value of the project file (folder configs are checked level by level)."""
    (checker or SettingsChecker()).section("project", data, path, data.line, skip=("models", "seeds"),
                                          required=False)


def _project_name(data: LineDict, path: Path) -> str:
    name = data.get("name")
    if name is None:
        raise ConfigError("the project file needs a `name:`", path, data.line or 1)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"project name {name!r} must be letters, digits and underscores, not starting with a digit",
            path,
            data.key_line("name"),
        )
    return name


_NO_DEFAULT_SETTING = object()


def render_setting(value: Any, project_vars: dict[str, Any], path: Path | None = None,
                   line: int | None = None) -> Any:
    """A project-file value holding Jinja, rendered with var() and env_var() as dbt renders
    dbt_project.yml (natively: `{{ [..] }}` alone stays a list); lists are rendered item by item."""
    if isinstance(value, list):
        return [render_setting(v, project_vars, path, line) for v in value]
    if not isinstance(value, str) or "{{" not in value and "{%" not in value:
        return value
    import jinja2
    import jinja2.nativetypes

    env = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)
    context = {"var": lambda n, d=None: project_vars.get(n, d), "env_var": _env_var_strict}
    try:
        return env.from_string(value).render(context)
    except Exception as exc:  # noqa: BLE001 - any failure is a config problem at the key's line
        raise ConfigError(f"cannot render {value!r}: {exc}", path, line) from None


def _env_var_strict(name: str, default: Any = _NO_DEFAULT_SETTING) -> Any:
    if name in os.environ:
        return os.environ[name]
    if default is _NO_DEFAULT_SETTING:
        raise ConfigError(f"env_var({name!r}) is not set and has no default")
    return default


def _path_list(data: LineDict, key: str, default: str, path: Path, project_vars: dict[str, Any] | None = None,
               ) -> list[str]:
    value = render_setting(data.get(key, [default]), project_vars or {}, path, data.key_line(key))
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"`{key}:` must be a folder name or a list of folder names", path, data.key_line(key))
    return list(items)


def _project_vars(data: LineDict, name: str, cli_vars: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    """Global vars, then the vars scoped to this project (dbt's `vars: {<project>: {...}}`), then --vars."""
    raw = to_plain(_mapping(data.get("vars"), "`vars:`", path, data.key_line("vars")))
    merged = dict(raw)
    if isinstance(raw.get(name), dict):
        merged.update(raw[name])
    merged.update(cli_vars or {})
    return merged


# ---- discovery --------------------------------------------------------------------------------------


def _discover(root: Path, folders: list[str], suffixes: tuple[str, ...]) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(absolute path, sub-folders below its search folder) of every file with one of `suffixes`,
    sorted. Hidden files and folders (editor droppings, .git) are skipped. Works on strings: pathlib
    per file is a visible share of loading a 2,000-model project."""
    seen: set[str] = set()
    for folder in folders:
        base = os.path.realpath(root / folder)
        found: list[tuple[str, tuple[str, ...]]] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            sub = tuple(os.path.relpath(dirpath, base).split(os.sep)) if dirpath != base else ()
            found.extend(
                (os.path.join(dirpath, f), sub) for f in filenames if f.endswith(suffixes) and not f.startswith(".")
            )
        for abs_path, sub in sorted(found):
            if abs_path not in seen:
                seen.add(abs_path)
                yield Path(abs_path), sub


def _read_text(path: Path) -> str:
    """The file's text, newlines translated as Path.read_text does (binary read: a text-mode open
    costs a decoder per file, visible over thousands of models)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", path, 1) from None
    if "\r" in text:  # universal newlines: \r\n and \r become \n
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class _ProjectLoader:
    """Discovers and documents the project's models, seeds and sources."""

    def __init__(self, root: Path, name: str, project_file: Path, yml_cache: ParseCache | None = None,
                 checker: SettingsChecker | None = None, test_folders: list[str] | None = None):
        self.checker = checker or SettingsChecker()
        self.test_folders = test_folders or []
        self._custom_tests: frozenset[str] | None = None
        self.root = root
        self.name = name
        self.project_file = project_file
        self.yml_cache = yml_cache or ParseCache(None)
        self.models: dict[str, ModelFile] = {}
        self.seeds: dict[str, Seed] = {}
        self.sources: dict[tuple[str, str], SourceTable] = {}

    def load_models(self, folders: list[str], tree: _ConfigLevel) -> None:
        for abs_path, sub in _discover(self.root, folders, (".sql",)):
            name = abs_path.stem
            if name in self.models:
                raise ConfigError(
                    f"two models named {name!r}: {self.models[name].path} and {_rel(self.root, abs_path)}"
                    " (model names must be unique across folders)",
                    abs_path,
                    1,
                )
            fqn = [self.name, *sub, name]
            self.models[name] = ModelFile(
                name=name,
                path=_rel(self.root, abs_path),
                abs_path=abs_path,
                raw_sql=_read_text(abs_path),
                fqn=fqn,
                config=_resolve_config(tree, fqn),
            )

    def load_package_models(self, package: Any, tree: _ConfigLevel) -> None:
        """A package's models (fqn starts with the package name, so `models: <package>:` configures them)."""
        for abs_path, sub in _discover(package.root, package.model_paths, (".sql",)):
            name = abs_path.stem
            if name in self.models:
                raise ConfigError(f"model {name!r} of package {package.name} has the same name as "
                                  f"{self.models[name].path}", abs_path, 1)
            fqn = [package.name, *sub, name]
            self.models[name] = ModelFile(name=name, path=_rel(self.root, abs_path), abs_path=abs_path,
                                          raw_sql=_read_text(abs_path), fqn=fqn, config=_resolve_config(tree, fqn),
                                          package=package.name)

    def load_seeds(self, folders: list[str], tree: _ConfigLevel) -> None:
        for abs_path, sub in _discover(self.root, folders, (".csv",)):
            name = abs_path.stem
            if name in self.seeds:
                raise ConfigError(
                    f"two seeds named {name!r}: {self.seeds[name].path} and {_rel(self.root, abs_path)}",
                    abs_path,
                    1,
                )
            if name in self.models:
                raise ConfigError(
                    f"seed {name!r} has the same name as model {self.models[name].path}; ref() would be ambiguous",
                    abs_path,
                    1,
                )
            fqn = [self.name, *sub, name]
            self.seeds[name] = Seed(
                name=name,
                path=_rel(self.root, abs_path),
                abs_path=abs_path,
                config=_resolve_config(tree, fqn),
                fqn=fqn,
            )

    # ---- property (yml) files ----

    def load_snapshot_blocks(self, path: Path, sub: tuple[str, ...], tree: _ConfigLevel) -> None:
        """Each `{% snapshot name %} ... {% endsnapshot %}` of a file becomes a snapshot node; its body keeps
        its line numbers (blank lines stand for what precedes it)."""
        text = _read_text(path)
        for found in _SNAPSHOT_BODY.finditer(text):
            name = found.group(1)
            self._add_snapshot(name, path, "\n" * text.count("\n", 0, found.start(2)) + found.group(2),
                               [self.name, *sub, path.stem, name], tree)  # dbt's fqn names the file too

    def _add_snapshot(self, name: str, path: Path, raw_sql: str, fqn: list[str], tree: _ConfigLevel,
                      config: dict[str, Any] | None = None) -> None:
        if name in self.models or name in self.seeds:
            other = self.models[name].path if name in self.models else self.seeds[name].path
            raise ConfigError(f"snapshot {name!r} has the same name as {other}; ref() would be ambiguous", path,
                              raw_sql.count("\n", 0, len(raw_sql) - len(raw_sql.lstrip("\n"))) + 1)
        self.models[name] = ModelFile(name=name, path=_rel(self.root, path), abs_path=path, raw_sql=raw_sql, fqn=fqn,
                                      config=merge_configs({**_resolve_config(tree, fqn), "materialized": "snapshot"},
                                                           config or {}),
                                      resource_type="snapshot")

    def _declare_snapshot(self, entry: Any, path: Path, list_line: int | None, sub: tuple[str, ...],
                          tree: _ConfigLevel | None) -> None:
        """A yml `snapshots:` entry: with `relation:` it defines a snapshot (dbt 1.9+), else it documents one."""
        name = _entry_name(entry, "snapshot", path, list_line)
        line = line_of(entry) if hasattr(entry, "key_line") else list_line
        config = to_plain(entry.get("config") or {})
        if not isinstance(config, dict):
            raise ConfigError("a snapshot's `config:` must be a mapping", path, line)
        if entry.get("relation") is not None:
            relation = str(entry["relation"]).strip()
            if not re.fullmatch(r"(ref|source)\(.*\)", relation):
                raise ConfigError(f"snapshot {name!r}: `relation: {relation}` must be ref('...') or source('...', "
                                  "'...')", path, line)
            self._add_snapshot(name, path, "\n" * ((line or 1) - 1) + f"select * from {{{{ {relation} }}}}",
                               [self.name, *sub, name], tree or _ConfigLevel({}, {}, None), config)
        elif name in self.models and self.models[name].resource_type == "snapshot":
            self.models[name].config = merge_configs(self.models[name].config, config)
        else:
            raise ConfigError(f"yml snapshot {name!r} has no `relation:` and documents no {{% snapshot %}} block"
                              f"{did_you_mean(name, [m for m, f in self.models.items() if f.resource_type == 'snapshot'])}",
                              path, line)
        snapshot = self.models[name]
        snapshot.description = _text(entry.get("description") or snapshot.description)
        snapshot.yml_path, snapshot.yml_line = _rel(self.root, path), line
        if entry.get("columns"):
            snapshot.columns = self._columns(entry, path)

    def apply_yml(self, path: Path, sub: tuple[str, ...] = (), tree: _ConfigLevel | None = None) -> None:
        data = self.yml_cache.load(path)
        if data is None:
            return
        if not isinstance(data, LineDict):
            raise ConfigError("a properties file must be a mapping (version:, models:, sources:, ...)", path, 1)
        self.checker.section("yml", data, path, 1, skip=("version", "models", "seeds", "sources", "snapshots"))
        if "version" in data and data["version"] != 2:
            raise ConfigError("only `version: 2` property files are supported", path, data.key_line("version"))
        for entry in _list(data.get("models"), "`models:`", path, data.key_line("models")):
            self._document_model(entry, path, data.key_line("models"))
        for entry in _list(data.get("seeds"), "`seeds:`", path, data.key_line("seeds")):
            self._document_seed(entry, path, data.key_line("seeds"))
        for entry in _list(data.get("sources"), "`sources:`", path, data.key_line("sources")):
            self._declare_source(entry, path, data.key_line("sources"))
        for entry in _list(data.get("snapshots"), "`snapshots:`", path, data.key_line("snapshots")):
            self._declare_snapshot(entry, path, data.key_line("snapshots"), sub, tree)

    def _document_model(self, entry: Any, path: Path, list_line: int | None) -> None:
        model = self._document(entry, path, list_line, "model", self.models, "models/**/{}.sql")
        model.tests = self._tests(entry, path, "model")

    def _document_seed(self, entry: Any, path: Path, list_line: int | None) -> None:
        seed = self._document(entry, path, list_line, "seed", self.seeds, "seeds/**/{}.csv")
        self._tests(entry, path, "seed")  # checked and warned about: seed-level tests are not run
        del seed

    def _document(self, entry: Any, path: Path, list_line: int | None, kind: str, known: dict[str, Any],
                  file_pattern: str) -> Any:
        """Attach a yml entry (description, columns, config) to the model or seed it names."""
        name = _entry_name(entry, kind, path, list_line)
        node = known.get(name)
        if node is None:
            raise ConfigError(
                f"yml entry for {kind} {name!r}, but there is no {file_pattern.format(name)}{did_you_mean(name, known)}",
                path,
                entry.key_line("name"),
            )
        if node.yml_path is not None:
            raise ConfigError(
                f"{kind} {name!r} is already documented at {_rel(self.root, node.yml_path)}:{node.yml_line}",
                path,
                entry.line,
            )
        node.yml_path, node.yml_line = path, entry.line
        self.checker.section(f"yml.{kind}", entry, path, entry.line, skip=("columns", "config", "data_tests", "tests"))
        node.description = _text(entry.get("description"))
        node.columns = self._columns(entry, path)
        config = _mapping(entry.get("config"), "`config:`", path, entry.key_line("config"))
        self.checker.section(f"{kind}_config", config, path, entry.key_line("config"))
        node.config = merge_configs(node.config, to_plain(config))
        return node

    def _declare_source(self, entry: Any, path: Path, list_line: int | None) -> None:
        source_name = _entry_name(entry, "source", path, list_line)
        self.checker.section("yml.source", entry, path, entry.line, skip=("tables",))
        schema = entry.get("schema", source_name)
        database = entry.get("database", entry.get("project"))
        tables = _list(entry.get("tables"), "`tables:`", path, entry.key_line("tables"))
        for table in tables:
            name = _entry_name(table, "source table", path, line_of(tables))
            self.checker.section("yml.source_table", table, path, table.line, skip=("columns", "data_tests", "tests"))
            existing = self.sources.get((source_name, name))
            if existing is not None:
                raise ConfigError(
                    f"source table {source_name}.{name} is already declared at "
                    f"{_rel(self.root, existing.yml_path)}:{existing.line}",
                    path,
                    table.line,
                )
            self.sources[(source_name, name)] = SourceTable(
                source_name=source_name,
                name=name,
                schema=_text(schema),
                database=None if database is None else str(database),
                identifier=_text(table.get("identifier", name)),
                sample=self._sample_path(table, path),
                yml_path=path,
                line=table.line,
                description=_text(table.get("description")),
                columns=self._columns(table, path),
                tests=self._tests(table, path, "source table"),
            )

    def _sample_path(self, table: LineDict, path: Path) -> Path | None:
        """The table's `sample:` (or `meta: {sample:}`) CSV, relative to the yml file or the project root."""
        holder: Any = table
        value = table.get("sample")
        if value is None and isinstance(table.get("meta"), dict):
            holder, value = table["meta"], table["meta"].get("sample")
        if value is None:
            return None
        line = line_of(holder, "sample")
        if not isinstance(value, str) or not value:
            raise ConfigError("`sample:` must be the path of a CSV file", path, line)
        candidate = Path(value).expanduser()
        candidates = [candidate] if candidate.is_absolute() else [path.parent / candidate, self.root / candidate]
        for option in candidates:
            if option.is_file():
                return option.resolve()
        raise ConfigError(
            f"sample file {value!r} not found (looked in {path.parent} and {self.root})", path, line
        )


    def _tests(self, entry: LineDict, path: Path, level: str) -> list[Any]:
        """`data_tests:` then `tests:` (dbt's older name) of a model, table or column entry, each checked:
        an unknown test is an error; a package or custom generic test, or one batchflow does not run at
        this level, is a warning."""
        tests: list[Any] = []
        for key in ("data_tests", "tests"):
            items = _list(entry.get(key), f"`{key}:`", path, entry.key_line(key))
            for index, spec in enumerate(items):
                line = items.item_line(index) if isinstance(items, LineList) else entry.key_line(key)
                self._check_test(spec, path, line, level)
            tests.extend(items)
        return tests

    def _check_test(self, spec: Any, path: Path, line: int | None, level: str) -> None:
        if isinstance(spec, str):
            name, args = spec, None
        elif isinstance(spec, dict) and len(spec) == 1:
            name, args = str(next(iter(spec))), next(iter(spec.values()))
        else:
            raise ConfigError("a data test is a name, or a mapping of one name to its arguments", path, line)
        if name in DATA_TESTS:
            args = _mapping(args, f"arguments of `{name}`", path, line)
            inner = args.get("arguments")  # dbt 1.10 nests the arguments; the rest is the test's config
            if inner is not None:
                self.checker.section(f"test.{name}", inner, path, line_of(args, "arguments") or line)
            self.checker.section(f"test.{name}", args, path, line, skip=("arguments",), required=inner is None)
            return
        if "." in name or name in self.custom_tests():
            return  # a package's or the project's generic test: its macro renders it (batchflow.testing)
        else:
            raise ConfigError(
                f"unknown data test `{name}`: neither dbt's ({', '.join(DATA_TESTS)}) nor a `{{% test {name}(...) %}}` "
                f"block of the project{did_you_mean(name, [*DATA_TESTS, *self.custom_tests()])}", path, line,
            )

    def custom_tests(self) -> frozenset[str]:
        """Generic tests the project defines (`{% test name(...) %}` in macro or test folders)."""
        if self._custom_tests is None:
            found: set[str] = set()
            for abs_path, _ in _discover(self.root, self.test_folders, (".sql",)):
                found.update(_TEST_BLOCK.findall(_read_text(abs_path)))
            self._custom_tests = frozenset(found)
        return self._custom_tests

    def _columns(self, entry: LineDict, path: Path) -> dict[str, ColumnDoc]:
        columns: dict[str, ColumnDoc] = {}
        items = _list(entry.get("columns"), "`columns:`", path, entry.key_line("columns"))
        for column in items:
            name = _entry_name(column, "column", path, line_of(items))
            if name in columns:
                raise ConfigError(f"column {name!r} is listed twice (first at line {columns[name].line})", path,
                                  column.line)
            self.checker.section("yml.column", column, path, column.line, skip=("data_tests", "tests"))
            data_type = column.get("data_type")
            columns[name] = ColumnDoc(
                name=name,
                description=_text(column.get("description")),
                data_type=None if data_type is None else str(data_type),
                tests=self._tests(column, path, "column"),
                line=column.line,
            )
        return columns


DATA_TESTS = ("not_null", "unique", "accepted_values", "relationships")
_SNAPSHOT_BODY = re.compile(r"\{%-?\s*snapshot\s+([A-Za-z_][A-Za-z0-9_]*)\s*-?%\}(.*?)\{%-?\s*endsnapshot\s*-?%\}",
                            re.DOTALL)
_TEST_BLOCK = re.compile(r"\{%-?\s*test\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _macro_files(root: Path, folders: list[str]) -> list[Path]:
    return sorted(abs_path for abs_path, _ in _discover(root, folders, (".sql",)))


def _read_project_file(root: Path, checker: SettingsChecker | None = None) -> tuple[Path, LineDict]:
    project_file = find_project_file(root)
    data = load_yaml(project_file)
    if not isinstance(data, LineDict):
        raise ConfigError("the project file must be a mapping (name:, profile:, ...)", project_file, 1)
    _check_project_keys(data, project_file, checker)
    return project_file, data


def _name_setting(data: LineDict, key: str, default: str, what: str, path: Path) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"`{key}:` must be {what}", path, data.key_line(key))
    return value


def _config_warnings(project_file: Path, trees: dict[str, _ConfigLevel],
                     nodes: dict[str, Iterable[Any]]) -> list[ConfigWarning]:
    """dbt warns about config paths that apply to nothing (usually a misspelt folder): so do we, with the
    closest folder or file name (`nodes`: the models and seeds, per block)."""
    warnings = []
    for block, tree in trees.items():
        names = sorted({part for node in nodes[block] for part in node.fqn})
        for dotted, line in _unused_config_paths(tree, ""):
            hint = did_you_mean(dotted[1:].rsplit(".", 1)[-1], names)
            warnings.append(ConfigWarning(f"`{block}:` config path {dotted[1:]!r} matches no {block[:-1]}{hint}",
                                          str(project_file), line, dotted[1:]))
    return warnings


def load_project(project_dir: Path, cli_vars: dict[str, Any] | None = None,
                 partial_parse: bool | None = None) -> Project:
    """Read the project in `project_dir`: project file, models, seeds, sources, yml docs and macros.
    `partial_parse`: reuse and update the parsed yml files in target/ (default: on, unless
    BATCHFLOW_PARTIAL_PARSE=0)."""
    root = Path(project_dir).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError("project directory does not exist", root)
    checker = SettingsChecker()
    project_file, data = _read_project_file(root, checker)
    name = _project_name(data, project_file)
    profile = _name_setting(data, "profile", name, "a profile name", project_file)
    project_vars = _project_vars(data, name, cli_vars, project_file)
    target_path = str(render_setting(_name_setting(data, "target-path", "target", "a folder name", project_file),
                                     project_vars, project_file, data.key_line("target-path")))
    model_paths = _path_list(data, "model-paths", "models", project_file, project_vars)
    seed_paths = _path_list(data, "seed-paths", "seeds", project_file, project_vars)
    macro_paths = _path_list(data, "macro-paths", "macros", project_file, project_vars)
    batch_defaults = _mapping(data.get("batch"), "`batch:`", project_file, data.key_line("batch"))
    trees = {
        block: _config_level(data.get(block), project_file, data.key_line(block), checker, f"{block[:-1]}_config")
        for block in ("models", "seeds", "snapshots")
    }

    target_dir = (root / target_path).resolve()
    enabled = partial_parse_enabled() if partial_parse is None else partial_parse
    yml_cache = ParseCache(target_dir / YML_CACHE_FILE if enabled else None)

    test_paths = data.get("test-paths") or ["tests"]
    loader = _ProjectLoader(root, name, project_file, yml_cache, checker,
                            macro_paths + ([test_paths] if isinstance(test_paths, str) else list(test_paths)))
    loader.load_models(model_paths, trees["models"])
    from batchflow.packages import load_packages

    install_path = str(render_setting(data.get("packages-install-path") or "dbt_packages", project_vars))
    packages = [p for p in load_packages(root, install_path) if p.name != name]
    package_macros: list[tuple[str, Path]] = []
    for package in packages:
        package_macros += [(package.name, f) for f in _macro_files(package.root, package.macro_paths)]
        for var_name, value in package.vars.items():  # a package's own defaults, under the project's
            project_vars.setdefault(var_name, value)
        loader.load_package_models(package, trees["models"])
    loader.load_seeds(seed_paths, trees["seeds"])
    # Property files live next to models (dbt also reads seed properties from the seed folders).
    for yml_path, _ in _discover(root, model_paths + seed_paths, (".yml", ".yaml")):
        loader.apply_yml(yml_path)
    yml_cache.save()
    docs: dict[str, str] = {}
    docs_paths = render_setting(data.get("docs-paths") or model_paths, project_vars)
    for md_path, _ in _discover(root, [docs_paths] if isinstance(docs_paths, str) else list(docs_paths), (".md",)):
        from batchflow.jinja_context import docs_blocks

        docs.update(docs_blocks(_read_text(md_path)))
    # snapshots: `{% snapshot %}` blocks in .sql files and (dbt 1.9+) `snapshots:` entries with `relation:`
    snapshot_paths = data.get("snapshot-paths") or ["snapshots"]
    snapshot_folders = [str(p) for p in (snapshot_paths if isinstance(snapshot_paths, list) else [snapshot_paths])]
    for snap_path, sub in _discover(root, snapshot_folders, (".sql",)):
        loader.load_snapshot_blocks(snap_path, sub, trees["snapshots"])
    for yml_path, sub in _discover(root, snapshot_folders, (".yml", ".yaml")):
        loader.apply_yml(yml_path, sub, trees["snapshots"])
    dialect = data.get("dialect")
    dispatch = to_plain(data.get("dispatch") or [])
    return Project(
        hooks={k: to_plain(data[k]) for k in ("on-run-start", "on-run-end") if data.get(k)},
        analysis_paths=_path_list(data, "analysis-paths", "analyses", project_file, project_vars),
        dialect=None if dialect is None else str(dialect),
        dispatch=dispatch,
        packages=packages,
        package_macro_files=package_macros,
        docs=docs,
        name=name,
        root=root,
        project_file=project_file,
        profile=profile,
        target_path=target_dir,
        vars=project_vars,
        models=loader.models,
        seeds=loader.seeds,
        sources=loader.sources,
        # dbt reads generic tests in `<test path>/generic/` as macros
        macro_files=_macro_files(root, macro_paths) + _macro_files(
            root, [f"{t}/generic" for t in ([test_paths] if isinstance(test_paths, str) else test_paths)]),
        batch_defaults=to_plain(batch_defaults),
        key_lines={str(key): line for key, line in data.key_lines.items()},
        warnings=[*checker.warnings, *_config_warnings(project_file, trees, {
            "models": loader.models.values(), "seeds": loader.seeds.values(),
            "snapshots": [m for m in loader.models.values() if m.resource_type == "snapshot"]})],
    )


# ---- simple templates ---------------------------------------------------------------------------------
#
# Most files a project renders are literal text plus `{{ call(args) }}` expressions: `ref('x')`,
# `config(materialized='table')`, `env_var('NAME', 'default')`, a macro call. Compiling such a file with
# Jinja costs about 5 ms (lexer, parser, code generator, Python's compile()), a large part of compiling
# a 2,000-model project. `render_simple` evaluates that subset directly, with Jinja's semantics, and
# returns None for anything outside it so the caller falls back to Jinja (which also produces the
# error messages: the fast path never reports an error itself).


class _NotSimple(Exception):
    """The template (or an expression in it) is outside the subset `render_simple` evaluates."""


_SIMPLE_EXPR = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SIMPLE_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Jinja's literal names (the lexer turns these into constants whatever the context holds).
_JINJA_CONSTANTS = {"true": True, "false": False, "none": None, "True": True, "False": False, "None": None}
_MISSING_NAME = object()
_parsed_expressions: dict[str, Any] = {}


def _simple_expression(text: str) -> ast.expr:
    """The Python AST of a Jinja expression that is also valid Python with the same meaning."""
    tree = _parsed_expressions.get(text)
    if tree is None:
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except (SyntaxError, ValueError):
            tree = False
        else:
            if not _simple_tree(tree, text):
                tree = False
        if len(_parsed_expressions) < 100_000:
            _parsed_expressions[text] = tree
    if tree is False:
        raise _NotSimple(text)
    return tree


def _simple_tree(node: ast.AST, source: str) -> bool:
    """Whether every node is one `_evaluate` handles with Jinja's meaning (literals checked by their text:
    Python string prefixes, escapes and number forms differ from Jinja's lexer)."""
    if isinstance(node, ast.Constant):
        value = node.value
        segment = ast.get_source_segment(source.strip(), node) or ""
        if isinstance(value, str):
            return segment[:1] in ("'", '"') and segment[:3] not in ("'''", '"""') and "\\" not in segment
        if isinstance(value, bool) or value is None:
            return True
        if isinstance(value, (int, float)):
            return bool(_SIMPLE_NUMBER.fullmatch(segment))
        return False
    if isinstance(node, ast.Name):
        return isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.Attribute):
        return _simple_tree(node.value, source)
    if isinstance(node, ast.Subscript):
        return not isinstance(node.slice, ast.Slice) and _simple_tree(node.value, source) and _simple_tree(
            node.slice, source
        )
    if isinstance(node, ast.Call):
        return (
            _simple_tree(node.func, source)
            and all(not isinstance(a, ast.Starred) and _simple_tree(a, source) for a in node.args)
            and all(k.arg is not None and _simple_tree(k.value, source) for k in node.keywords)
        )
    if isinstance(node, (ast.List, ast.Tuple)):
        return all(not isinstance(e, ast.Starred) and _simple_tree(e, source) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _simple_tree(k, source) for k in node.keys) and all(
            _simple_tree(v, source) for v in node.values
        )
    return False


def _is_jinja_macro(obj: Any) -> bool:
    kind = type(obj)
    return kind.__name__ == "Macro" and kind.__module__ == "jinja2.runtime"


def _evaluate(node: ast.expr, context: Mapping[str, Any]) -> Any:
    """The value of a `_simple_tree` expression, as Jinja computes it. Raises _NotSimple wherever
    Jinja would produce an Undefined or do something this evaluator does not (pass_context callables)."""
    kind = type(node)
    if kind is ast.Constant:
        return node.value  # type: ignore[attr-defined]
    if kind is ast.Name:
        name = node.id  # type: ignore[attr-defined]
        if name in _JINJA_CONSTANTS:
            return _JINJA_CONSTANTS[name]
        value = context.get(name, _MISSING_NAME)
        if value is _MISSING_NAME:
            raise _NotSimple(name)
        return value
    if kind is ast.Call:
        func = _evaluate(node.func, context)  # type: ignore[attr-defined]
        # Jinja passes the context (or environment) to callables marked for it. A macro's __call__ takes
        # the eval context only for its autoescape flag, which without one comes from the environment:
        # the same value, as batchflow's environments never switch autoescaping per template.
        if not callable(func) or hasattr(func, "jinja_pass_arg") or (
            hasattr(getattr(func, "__call__", None), "jinja_pass_arg") and not _is_jinja_macro(func)
        ):
            raise _NotSimple("call")
        args = [_evaluate(a, context) for a in node.args]  # type: ignore[attr-defined]
        kwargs = {k.arg: _evaluate(k.value, context) for k in node.keywords}  # type: ignore[attr-defined]
        try:
            return func(*args, **kwargs)
        except StopIteration:  # Jinja turns this into an Undefined
            raise _NotSimple("call") from None
    if kind is ast.Attribute:  # Jinja's Environment.getattr: the attribute, else the item
        obj = _evaluate(node.value, context)  # type: ignore[attr-defined]
        attr = node.attr  # type: ignore[attr-defined]
        try:
            return getattr(obj, attr)
        except AttributeError:
            pass
        try:
            return obj[attr]
        except (TypeError, LookupError, AttributeError):
            raise _NotSimple(attr) from None
    if kind is ast.Subscript:  # Jinja's Environment.getitem: the item, else the attribute
        obj = _evaluate(node.value, context)  # type: ignore[attr-defined]
        key = _evaluate(node.slice, context)  # type: ignore[attr-defined]
        try:
            return obj[key]
        except (AttributeError, TypeError, LookupError):
            if isinstance(key, str):
                try:
                    return getattr(obj, key)
                except AttributeError:
                    pass
            raise _NotSimple(str(key)) from None
    if kind is ast.List:
        return [_evaluate(e, context) for e in node.elts]  # type: ignore[attr-defined]
    if kind is ast.Tuple:
        return tuple(_evaluate(e, context) for e in node.elts)  # type: ignore[attr-defined]
    if kind is ast.Dict:
        return {
            _evaluate(k, context): _evaluate(v, context)  # type: ignore[arg-type]
            for k, v in zip(node.keys, node.values)  # type: ignore[attr-defined]
        }
    raise _NotSimple(kind.__name__)


def simple_template(source: str) -> list[str | ast.expr] | None:
    """`source` as literal text and expressions, or None when it needs Jinja: statements, comments,
    whitespace control, carriage returns (Jinja normalises newlines) or an expression outside the subset."""
    if "{%" in source or "{#" in source or "\r" in source:
        return None
    pieces: list[str | ast.expr] = []
    pos = 0
    try:
        for found in _SIMPLE_EXPR.finditer(source):
            inner = found.group(1)
            # Whitespace control, and Python syntax Jinja lacks (comments, line continuations).
            if inner[:1] in ("-", "+") or inner[-1:] == "-" or not inner.strip() or "#" in inner or "\\" in inner:
                return None
            if found.start() > pos:
                pieces.append(source[pos:found.start()])
            pieces.append(_simple_expression(inner))
            pos = found.end()
    except _NotSimple:
        return None
    if "{{" in source[pos:]:
        return None
    if pos < len(source):
        pieces.append(source[pos:])
    return pieces


def render_simple(pieces: list[str | ast.expr], context: Mapping[str, Any]) -> str | None:
    """Render `simple_template` pieces with `context`; None when Jinja must render instead (an
    undefined name or attribute, a failing call, ...). Callables with side effects may have run."""
    out: list[str] = []
    try:
        for piece in pieces:
            out.append(piece if type(piece) is str else str(_evaluate(piece, context)))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - Jinja renders again and reports it properly
        return None
    return "".join(out)


# ---- profiles ---------------------------------------------------------------------------------------


# A missing env_var() without default renders as this marker instead of failing at once: like dbt, only
# the chosen target has to be complete (a laptop without the prod variables can still run `local`), and
# after parsing the marker sits on the exact line of the key that needs the variable.
_MISSING_ENV = "__batchflow_missing_env_var__"
_MISSING_ENV_RE = re.compile(re.escape(_MISSING_ENV) + r"\[([^\]]*)\]")
_NO_DEFAULT = object()


def _env_var(name: str, default: Any = _NO_DEFAULT) -> Any:
    value = os.environ.get(name)
    if value is not None:
        return value
    if default is _NO_DEFAULT:
        return f"{_MISSING_ENV}[{name}]"
    return default


def _as_number(value: Any) -> Any:
    text = str(value)
    if _MISSING_ENV in text:
        return text  # reported with its line once the chosen target is known
    return float(text) if "." in text else int(text)


def _as_bool(value: Any) -> Any:
    text = str(value)
    return text if _MISSING_ENV in text else text.strip().lower() in ("1", "true", "yes", "on")


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised from (Jinja maps its frames to `<template>`)."""
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    return line


def render_profiles_text(text: str, path: Path) -> str:
    """Render the Jinja in a profiles file (`env_var('NAME', 'default')`, `as_number`, ...) as a whole,
    so the YAML parsed afterwards keeps its line numbers."""
    if "{{" not in text and "{%" not in text:
        return text
    pieces = simple_template(text)
    if pieces is not None:
        fast = render_simple(pieces, {"env_var": _env_var})
        if fast is not None:
            return fast
    import jinja2  # only for profiles the simple renderer does not cover

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["env_var"] = _env_var
    env.filters.update(as_number=_as_number, as_bool=_as_bool, as_text=str, as_native=lambda v: v)
    try:
        return env.from_string(text).render()
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"Jinja syntax error: {exc.message}", path, exc.lineno) from None
    except Exception as exc:  # noqa: BLE001 - any failure while rendering is a config problem at a line
        raise ConfigError(f"cannot render: {exc}", path, _template_line(exc)) from None


def _check_env_vars(value: Any, path: Path, line: int | None) -> None:
    """Fail on the first env_var() without value or default inside `value` (a target's settings)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_env_vars(item, path, line_of(value, key))
    elif isinstance(value, list):
        for item in value:
            _check_env_vars(item, path, line_of(item) or line_of(value))
    elif isinstance(value, str) and _MISSING_ENV in value:
        found = _MISSING_ENV_RE.search(value)
        name = found.group(1) if found else "?"
        raise ConfigError(f"environment variable {name!r} is not set and env_var() has no default", path, line)


def find_profiles_file(project_root: Path, profiles_dir: Path | None = None) -> Path:
    """profiles.yml from `profiles_dir`, else $BATCHFLOW_PROFILES_DIR, else the project root, else
    ~/.batchflow/. Like dbt, an explicit directory (argument or variable) is not second-guessed."""
    env_dir = os.environ.get(PROFILES_DIR_ENV)
    if profiles_dir is not None:
        folders = [Path(profiles_dir)]
    elif env_dir:
        folders = [Path(env_dir)]
    else:
        folders = [project_root, Path.home() / ".batchflow"]
    for folder in folders:
        candidate = folder.expanduser() / PROFILES_FILE_NAME
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(folder.expanduser()) for folder in folders)
    raise ConfigError(
        f"{PROFILES_FILE_NAME} not found; looked in: {looked} (use --profiles-dir or {PROFILES_DIR_ENV})",
        folders[0].expanduser() / PROFILES_FILE_NAME,
    )


def read_profiles(path: Path) -> LineDict:
    """Render and parse a profiles file."""
    data = parse_yaml(render_profiles_text(_read_text(path), path), path)
    if not isinstance(data, LineDict):
        raise ConfigError("profiles.yml must be a mapping of profile names", path, 1)
    return data


def _pick_output(
    profile: LineDict, profile_name: str, target_name: str | None, path: Path, profile_line: int | None
) -> tuple[str, LineDict]:
    outputs = _mapping(profile.get("outputs"), "`outputs:`", path, profile.key_line("outputs"))
    if not outputs:
        raise ConfigError(f"profile {profile_name!r} has no `outputs:`", path, profile_line)
    if target_name is None:
        target_name = profile.get("target")
        if target_name is None:
            raise ConfigError(
                f"profile {profile_name!r} has no default `target:`; pass --target (one of: {', '.join(map(str, outputs))})",
                path,
                profile_line,
            )
        _check_env_vars(target_name, path, profile.key_line("target"))
        where = profile.key_line("target")
    else:
        where = profile.key_line("outputs")
    target_name = str(target_name)
    output = outputs.get(target_name)
    if output is None:
        raise ConfigError(
            f"profile {profile_name!r} has no target {target_name!r}{did_you_mean(target_name, map(str, outputs))}; "
            f"available: {', '.join(map(str, outputs))}",
            path,
            where,
        )
    output = _mapping(output, f"target {target_name!r}", path, line_of(outputs, target_name))
    _check_env_vars(output, path, output.line)
    return target_name, output


def _threads(output: LineDict, path: Path) -> int:
    value = output.get("threads", 4)
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1 or isinstance(value, bool):
        raise ConfigError(f"`threads:` must be a positive integer, got {value!r}", path, output.key_line("threads"))
    return threads


def _target_schema(output: LineDict, type_: str, path: Path) -> str:
    schema = output.get("schema", output.get("dataset"))
    if schema is None:
        if type_ == "bigquery":
            raise ConfigError("a bigquery target needs `dataset:` (or `schema:`)", path, output.line)
        return "main"
    if not isinstance(schema, str) or not schema:
        key = "schema" if "schema" in output else "dataset"
        raise ConfigError("the target's dataset/schema must be a name", path, output.key_line(key))
    return schema


def _duckdb_path(settings: dict[str, Any], root: Path, profiles_file: Path | None = None,
                 line: int | None = None) -> str:
    """The DuckDB file of a target, absolute. Its folder must exist, except a missing last folder inside the
    project whose own parent exists (e.g. `target/`), which the warehouse creates: a typo must never create
    folder trees elsewhere (`/`, a home directory)."""
    raw = str(settings.get("path") or "target/batchflow.duckdb")
    if raw == ":memory:" or raw.startswith(("md:", "motherduck:")):
        return raw  # not files
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else (root / path).resolve()
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"`path:` {raw!r}: {parent} is a file, not a folder", profiles_file, line)
    inside = parent != root and str(parent).startswith(str(root) + os.sep)
    if not parent.exists() and not (inside and parent.parent.is_dir()):
        raise ConfigError(
            f"`path:` {raw!r}: folder {parent} does not exist (batchflow creates one missing folder, and only "
            "inside the project)", profiles_file, line,
        )
    if path.is_dir():
        raise ConfigError(f"`path:` {raw!r} is a folder; name a database file", profiles_file, line)
    return str(path)


def load_profile(project: Project, profiles_dir: Path | None = None, target_name: str | None = None) -> Target:
    """The `target_name` output (default: the profile's `target:`) of the project's profile."""
    path = find_profiles_file(project.root, profiles_dir)
    profiles = read_profiles(path)
    profile = profiles.get(project.profile)
    if profile is None:
        available = [str(name) for name in profiles if name != "config"]
        where = "profile" if "profile" in project.key_lines else "name"
        raise ConfigError(
            f"profile {project.profile!r} not found in {path}{did_you_mean(project.profile, available)}; "
            f"available: {', '.join(available) or 'none'}",
            project.project_file,
            project.key_lines.get(where),
        )
    profile_line = profiles.key_line(project.profile)
    profile = _mapping(profile, f"profile {project.profile!r}", path, profile_line)
    name, output = _pick_output(profile, project.profile, target_name, path, profile_line)
    type_ = output.get("type")
    if type_ not in TARGET_TYPES:
        raise ConfigError(
            f"target {name!r}: `type:` must be one of {', '.join(TARGET_TYPES)}, got {type_!r}",
            path,
            output.key_line("type"),
        )
    checker = SettingsChecker()
    checker.section(f"target.{type_}", output, path, output.line, skip=("batch",), required=False)
    settings = to_plain(output)
    if type_ == "duckdb":
        settings["path"] = _duckdb_path(settings, project.root, path, output.key_line("path"))
    batch_defaults = {"backend": "local", "provider": "mock"} if type_ == "duckdb" else {"backend": "vertex"}
    batch = _mapping(output.get("batch"), "`batch:`", path, output.key_line("batch"))
    check_batch_block(checker, batch, batch_defaults["backend"], path, output.key_line("batch"))
    return Target(
        name=name,
        profile=project.profile,
        type=type_,
        schema=_target_schema(output, type_, path),
        database=None if type_ == "duckdb" else _optional_text(output.get("project", output.get("database"))),
        threads=_threads(output, path),
        settings=settings,
        batch={**batch_defaults, **to_plain(batch)},
        profiles_file=path,
        warnings=checker.warnings,
    )


def check_batch_block(checker: SettingsChecker, batch: Mapping[str, Any], default_backend: str, path: Path,
                      line: int | None) -> None:
    """A target's `batch:` block: its backend's keys, the provider's name and options (mock failure rules
    included), each error at its line. Options of the chosen provider may also sit at the top of the block
    (the provider reads them from there too)."""
    spec = settings_spec()
    backend = batch.get("backend", default_backend)
    checker.value(spec["batch.local"]["fields"]["backend"], backend, "backend", path, line_of(batch, "backend") or line)
    if backend in ("vertex", "online"):
        checker.section(f"batch.{backend}", batch, path, line, required=False)
        return
    local = spec["batch.local"]["fields"]
    provider = batch.get("provider", "mock")
    checker.value(local["provider"], provider, "provider", path, line_of(batch, "provider") or line)
    provider = str(provider)
    options = spec[f"provider.{provider}"]["fields"]
    checker.section("batch.local", batch, path, line, required=False,
                    extra={k: v for k, v in options.items() if k not in local})
    for name in spec["batch.local"]["fields"]:
        if f"provider.{name}" in spec and batch.get(name) is not None:
            checker.section(f"provider.{name}", batch[name], path, line_of(batch, name) or line, required=False)
    section = batch.get(provider) if isinstance(batch.get(provider), dict) else {}
    for name, kind in options.items():
        if kind.get("required") and name not in section and name not in batch:
            raise ConfigError(f"provider {provider!r} needs `{name}:` under `{provider}:`", path,
                              line_of(batch, provider) or line)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)
