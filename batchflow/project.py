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
from batchflow.yamlio import LineDict, ParseCache, line_of, load_yaml, parse_yaml, to_plain


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
    warnings: list[str] = field(default_factory=list)  # "file:line: message", e.g. unused config paths


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


# ---- hierarchical `models:` / `seeds:` configs ----------------------------------------------------


@dataclass
class _ConfigLevel:
    """One level of a `models:`/`seeds:` block: its configs and the folders/names below it."""

    configs: dict[str, Any]
    children: dict[str, _ConfigLevel]
    line: int | None
    used: bool = False


def _config_level(value: Any, path: Path, line: int | None) -> _ConfigLevel:
    level = _ConfigLevel({}, {}, line)
    for key, child in _mapping(value, "a `models:`/`seeds:` level", path, line).items():
        key = str(key)
        key_line = line_of(value, key)
        if key.startswith("+"):
            level.configs[key[1:].strip()] = to_plain(child)
        elif (child is None or isinstance(child, dict)) and key not in _DICT_CONFIGS:
            level.children[key] = _config_level(child, path, key_line)
        else:  # dbt's rule: a key without `+` whose value is not a mapping is a config
            level.configs[key] = to_plain(child)
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


def _check_project_keys(data: LineDict, path: Path) -> None:
    for key in data:
        if key not in _PROJECT_KEYS and key not in _IGNORED_PROJECT_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in the project file{did_you_mean(str(key), _PROJECT_KEYS)}",
                path,
                data.key_line(key),
            )


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


def _path_list(data: LineDict, key: str, default: str, path: Path) -> list[str]:
    value = data.get(key, [default])
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

    def __init__(self, root: Path, name: str, project_file: Path, yml_cache: ParseCache | None = None):
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

    def apply_yml(self, path: Path) -> None:
        data = self.yml_cache.load(path)
        if data is None:
            return
        if not isinstance(data, LineDict):
            raise ConfigError("a properties file must be a mapping (version:, models:, sources:, ...)", path, 1)
        for key in data:
            if key not in _YML_KEYS and key not in _IGNORED_YML_KEYS:
                raise ConfigError(f"unknown key {key!r}{did_you_mean(str(key), _YML_KEYS)}", path, data.key_line(key))
        if "version" in data and data["version"] != 2:
            raise ConfigError("only `version: 2` property files are supported", path, data.key_line("version"))
        for entry in _list(data.get("models"), "`models:`", path, data.key_line("models")):
            self._document_model(entry, path, data.key_line("models"))
        for entry in _list(data.get("seeds"), "`seeds:`", path, data.key_line("seeds")):
            self._document_seed(entry, path, data.key_line("seeds"))
        for entry in _list(data.get("sources"), "`sources:`", path, data.key_line("sources")):
            self._declare_source(entry, path, data.key_line("sources"))

    def _document_model(self, entry: Any, path: Path, list_line: int | None) -> None:
        model = self._document(entry, path, list_line, "model", self.models, "models/**/{}.sql")
        model.tests = _tests(entry, path)

    def _document_seed(self, entry: Any, path: Path, list_line: int | None) -> None:
        self._document(entry, path, list_line, "seed", self.seeds, "seeds/**/{}.csv")

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
        node.description = _text(entry.get("description"))
        node.columns = _columns(entry, path)
        config = _mapping(entry.get("config"), "`config:`", path, entry.key_line("config"))
        node.config = merge_configs(node.config, to_plain(config))
        return node

    def _declare_source(self, entry: Any, path: Path, list_line: int | None) -> None:
        source_name = _entry_name(entry, "source", path, list_line)
        schema = entry.get("schema", source_name)
        database = entry.get("database", entry.get("project"))
        tables = _list(entry.get("tables"), "`tables:`", path, entry.key_line("tables"))
        for table in tables:
            name = _entry_name(table, "source table", path, line_of(tables))
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
                columns=_columns(table, path),
                tests=_tests(table, path),
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


def _tests(entry: LineDict, path: Path) -> list[Any]:
    """`data_tests:` then `tests:` (dbt's older name) of a model, table or column entry."""
    tests: list[Any] = []
    for key in ("data_tests", "tests"):
        tests.extend(_list(entry.get(key), f"`{key}:`", path, entry.key_line(key)))
    return tests


def _columns(entry: LineDict, path: Path) -> dict[str, ColumnDoc]:
    columns: dict[str, ColumnDoc] = {}
    items = _list(entry.get("columns"), "`columns:`", path, entry.key_line("columns"))
    for column in items:
        name = _entry_name(column, "column", path, line_of(items))
        if name in columns:
            raise ConfigError(f"column {name!r} is listed twice (first at line {columns[name].line})", path, column.line)
        data_type = column.get("data_type")
        columns[name] = ColumnDoc(
            name=name,
            description=_text(column.get("description")),
            data_type=None if data_type is None else str(data_type),
            tests=_tests(column, path),
            line=column.line,
        )
    return columns


def _macro_files(root: Path, folders: list[str]) -> list[Path]:
    return sorted(abs_path for abs_path, _ in _discover(root, folders, (".sql",)))


def _read_project_file(root: Path) -> tuple[Path, LineDict]:
    project_file = find_project_file(root)
    data = load_yaml(project_file)
    if not isinstance(data, LineDict):
        raise ConfigError("the project file must be a mapping (name:, profile:, ...)", project_file, 1)
    _check_project_keys(data, project_file)
    return project_file, data


def _name_setting(data: LineDict, key: str, default: str, what: str, path: Path) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"`{key}:` must be {what}", path, data.key_line(key))
    return value


def _config_warnings(project_file: Path, trees: dict[str, _ConfigLevel]) -> list[str]:
    """dbt warns about config paths that apply to nothing (usually a misspelt folder): so do we."""
    return [
        f"{project_file}:{line}: `{block}:` config path {dotted[1:]!r} matches no {block[:-1]}"
        for block, tree in trees.items()
        for dotted, line in _unused_config_paths(tree, "")
    ]


def load_project(project_dir: Path, cli_vars: dict[str, Any] | None = None,
                 partial_parse: bool | None = None) -> Project:
    """Read the project in `project_dir`: project file, models, seeds, sources, yml docs and macros.
    `partial_parse`: reuse and update the parsed yml files in target/ (default: on, unless
    BATCHFLOW_PARTIAL_PARSE=0)."""
    root = Path(project_dir).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError("project directory does not exist", root)
    project_file, data = _read_project_file(root)
    name = _project_name(data, project_file)
    profile = _name_setting(data, "profile", name, "a profile name", project_file)
    target_path = _name_setting(data, "target-path", "target", "a folder name", project_file)
    model_paths = _path_list(data, "model-paths", "models", project_file)
    seed_paths = _path_list(data, "seed-paths", "seeds", project_file)
    macro_paths = _path_list(data, "macro-paths", "macros", project_file)
    project_vars = _project_vars(data, name, cli_vars, project_file)
    batch_defaults = _mapping(data.get("batch"), "`batch:`", project_file, data.key_line("batch"))
    trees = {
        block: _config_level(data.get(block), project_file, data.key_line(block)) for block in ("models", "seeds")
    }

    target_dir = (root / target_path).resolve()
    enabled = partial_parse_enabled() if partial_parse is None else partial_parse
    yml_cache = ParseCache(target_dir / YML_CACHE_FILE if enabled else None)

    loader = _ProjectLoader(root, name, project_file, yml_cache)
    loader.load_models(model_paths, trees["models"])
    loader.load_seeds(seed_paths, trees["seeds"])
    # Property files live next to models (dbt also reads seed properties from the seed folders).
    for yml_path, _ in _discover(root, model_paths + seed_paths, (".yml", ".yaml")):
        loader.apply_yml(yml_path)
    yml_cache.save()
    return Project(
        name=name,
        root=root,
        project_file=project_file,
        profile=profile,
        target_path=target_dir,
        vars=project_vars,
        models=loader.models,
        seeds=loader.seeds,
        sources=loader.sources,
        macro_files=_macro_files(root, macro_paths),
        batch_defaults=to_plain(batch_defaults),
        key_lines={str(key): line for key, line in data.key_lines.items()},
        warnings=_config_warnings(project_file, trees),
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


def _duckdb_path(settings: dict[str, Any], root: Path) -> str:
    raw = str(settings.get("path") or "target/batchflow.duckdb")
    if raw == ":memory:" or raw.startswith(("md:", "motherduck:")):
        return raw  # not files
    path = Path(raw).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())


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
    settings = to_plain(output)
    if type_ == "duckdb":
        settings["path"] = _duckdb_path(settings, project.root)
    batch_defaults = {"backend": "local", "provider": "mock"} if type_ == "duckdb" else {"backend": "vertex"}
    batch = _mapping(output.get("batch"), "`batch:`", path, output.key_line("batch"))
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
    )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)
