"""The graph dbt selects on, built from a compiled project: every model, seed and source under its dbt
unique id and fqn, plus the project's data tests (generic ones from yml, singular ones from `test-paths`)
and unit tests, each named as dbt names it. Also `selectors.yml` and `--state DIR` (a previous
manifest.json and run_results.json) for `--selector`, `state:` and `result:`.

The compiler's `Manifest.graph` orders the nodes a run builds; this graph answers `--select`,
`--exclude` and `--selector` exactly as dbt-core 1.11 does (see `batchflow.graph` for the rules), and
`batchflow ls` prints from it in dbt's order and formats.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from batchflow.errors import ConfigError
from batchflow.graph import (INDIRECT_SELECTION, Graph, NodeInfo, PreviousState, SetOp, Spec, parse_cli,
                             parse_criterion)

if TYPE_CHECKING:
    from batchflow.compiler import Manifest, Node
    from batchflow.relation import Relation

#: dbt's test-only keys of a generic test entry: configs, not arguments (TestBuilder.CONFIG_ARGS)
TEST_CONFIG_ARGS = ("severity", "tags", "enabled", "where", "limit", "warn_if", "error_if", "fail_calc",
                    "store_failures", "store_failures_as", "meta", "database", "schema", "alias")
_TEST_NAME = re.compile(r"^(?:(?P<namespace>[a-zA-Z_]\w*)\.)?(?P<name>[a-zA-Z_]\w*)$")
_REF = re.compile(r"""\bref\(\s*['"]([^'"]+)['"]\s*(?:,\s*['"]([^'"]+)['"]\s*)?\)""")
_SOURCE = re.compile(r"""\bsource\(\s*['"]([^'"]+)['"]\s*,\s*['"]([^'"]+)['"]\s*\)""")
#: config keys dbt fills in for every node of a kind (so `config.enabled:true` selects what dbt selects)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"enabled": True, "tags": [], "meta": {}, "materialized": "view", "persist_docs": {},
              "on_schema_change": "ignore", "on_configuration_change": "apply", "grants": {}, "packages": [],
              "docs": {"show": True, "node_color": None}, "contract": {"enforced": False, "alias_types": True},
              "access": "protected", "quoting": {}, "column_types": {}, "lookback": 1},
    "seed": {"enabled": True, "tags": [], "meta": {}, "materialized": "seed", "persist_docs": {},
             "on_schema_change": "ignore", "on_configuration_change": "apply", "grants": {}, "packages": [],
             "docs": {"show": True, "node_color": None}, "contract": {"enforced": False, "alias_types": True},
             "quoting": {}, "column_types": {}, "delimiter": ",", "lookback": 1},
    "test": {"enabled": True, "tags": [], "meta": {}, "materialized": "test", "severity": "ERROR",
             "schema": "dbt_test__audit", "fail_calc": "count(*)", "warn_if": "!= 0", "error_if": "!= 0"},
    "snapshot": {"enabled": True, "tags": [], "meta": {}, "materialized": "snapshot", "persist_docs": {},
                 "on_schema_change": "ignore", "grants": {}, "packages": [], "quoting": {}, "column_types": {},
                 "docs": {"show": True, "node_color": None}, "hard_deletes": "ignore"},
    "source": {"enabled": True, "meta": {}, "tags": []},
    "unit_test": {"enabled": True, "tags": [], "meta": {}},
}


@dataclass
class TestRef:
    """Which yml data test a test node is: batchflow.testing's (node, column, kind)."""

    node: str
    column: str | None
    kind: str
    namespace: Optional[str] = None  # `dbt_utils` of `dbt_utils.expression_is_true`
    args: dict[str, Any] = field(default_factory=dict)  # the test's arguments (column_name included)
    line: Optional[int] = None  # line of the test entry in its yml file


@dataclass
class Selection:
    """The selection graph of one compiled project."""

    graph: Graph
    keys: dict[str, str]  # unique_id -> Manifest.nodes key, for models, seeds and sources
    tests: dict[str, TestRef] = field(default_factory=dict)  # unique_id -> the yml test it is
    selectors: dict[str, Spec] = field(default_factory=dict)  # selectors.yml, by name
    default_selector: Optional[str] = None
    with_state: bool = False  # seed checksums were read (state: selectors compare them)

    def select(self, select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None,
               selector: Optional[str] = None, state: Optional[PreviousState] = None) -> set[str]:
        """Unique ids chosen the way dbt chooses: `selector` (a selectors.yml name) wins; else --select /
        --exclude; with neither, the selector marked `default: true`, else every node."""
        select, exclude = list(select or []), list(exclude or [])
        if selector is not None:
            spec = self.selector(selector)
        elif not any(s.split() for s in select + exclude) and self.default_selector:
            spec = self.selectors[self.default_selector]
        else:
            spec = parse_cli(select, exclude)
        return self.graph.select_spec(spec, state)

    def selector(self, name: str) -> Spec:
        """A selectors.yml definition by name."""
        if name not in self.selectors:
            from batchflow.graph import _suggestion

            known = ", ".join(sorted(self.selectors)) or "none: the project has no selectors.yml"
            raise ConfigError(f"no selector named {name!r} in selectors.yml{_suggestion(name, self.selectors)}; "
                              f"selectors: {known}")
        return self.selectors[name]

    def ordered(self, unique_ids: Iterable[str]) -> list[NodeInfo]:
        """The nodes in dbt's `ls` order (by unique id)."""
        return [self.graph.info[u] for u in sorted(unique_ids)]


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _rel(path: Path | str, root: Path) -> str:
    p = Path(path)
    try:
        p = p.relative_to(root)
    except ValueError:
        pass
    return p.as_posix()


def _folders(relative: str) -> list[str]:
    """The folders of a node's file below its resource folder (dbt drops the first path part)."""
    return relative.split("/")[1:-1]


def build(manifest: "Manifest", with_state: bool = False) -> Selection:
    """The selection graph of a compiled project. `with_state` also reads each seed file for its
    checksum (needed only for `state:` selectors)."""
    project = manifest.project
    root, pname = project.root, project.name
    infos: dict[str, NodeInfo] = {}
    parents: dict[str, set[str]] = {}
    keys: dict[str, str] = {}
    uid_of: dict[str, str] = {}  # Manifest.nodes key -> unique id
    for name, node in manifest.nodes.items():
        info = _node_info(manifest, name, node, with_state)
        infos[info.unique_id] = info
        keys[info.unique_id] = name
        uid_of[name] = info.unique_id
    for uid, name in keys.items():
        node = manifest.nodes[name]
        # a source has no parents in dbt's graph (batchflow's runner still waits for a seed loading its table)
        parents[uid] = set() if node.resource_type == "source" else {uid_of[d] for d in node.depends_on if d in uid_of}
    tests: dict[str, TestRef] = {}
    for info, deps, ref in _generic_tests(manifest, uid_of):
        infos[info.unique_id], parents[info.unique_id], tests[info.unique_id] = info, deps, ref
    for info, deps in _singular_tests(manifest, uid_of):
        infos[info.unique_id], parents[info.unique_id] = info, deps
    for info, deps in _unit_tests(manifest, uid_of):
        infos[info.unique_id], parents[info.unique_id] = info, deps
    for uid, info in infos.items():
        info.depends_on = sorted(parents[uid])
    selectors, default = load_selectors(root)
    return Selection(Graph(parents, infos, root_package=pname), keys, tests, selectors, default, with_state)


def _node_info(manifest: "Manifest", name: str, node: "Node", with_state: bool) -> NodeInfo:
    project = manifest.project
    pname = project.name
    kind = node.resource_type
    config = {**_DEFAULTS.get(kind, {}), **node.config}
    if kind in ("model", "snapshot"):
        model = project.models[name]
        package = model.package or pname
        return NodeInfo(name=name, resource_type=kind, path=_rel(model.path, project.root), tags=node.tags,
                        materialized=node.materialized, fqn=list(model.fqn), config={**config, "tags": node.tags},
                        unique_id=f"{kind}.{package}.{name}", package=package,
                        patch_path=_rel(model.yml_path, project.root) if model.yml_path else "",
                        checksum=_sha(model.raw_sql), relation=node.relation.render(),
                        description=node.description)
    if kind == "seed":
        seed = project.seeds[name]
        checksum = _sha(seed.abs_path.read_bytes()) if with_state and seed.abs_path.exists() else ""
        return NodeInfo(name=name, resource_type="seed", path=_rel(seed.path, project.root), tags=node.tags,
                        materialized="seed", fqn=list(seed.fqn), config={**config, "tags": node.tags},
                        unique_id=f"seed.{pname}.{name}", package=pname,
                        patch_path=_rel(seed.yml_path, project.root) if seed.yml_path else "",
                        checksum=checksum, relation=node.relation.render(), description=node.description)
    source_name, _, table_name = name[len("source:"):].partition(".")
    table = project.sources[(source_name, table_name)]
    path = _rel(table.yml_path, project.root) if table.yml_path else node.path
    return NodeInfo(name=table_name, resource_type="source", path=path, tags=[], materialized=None,
                    fqn=[pname, *_folders(path), source_name, table_name], config=config,
                    unique_id=f"source.{pname}.{source_name}.{table_name}", package=pname, source_name=source_name,
                    relation=node.relation.render(), description=node.description)  # dbt keeps no source checksum


def _test_entries(manifest: "Manifest") -> Iterable[tuple[str, str, str | None, list[str], Any]]:
    """(node key, yml path, column or None, column tags, test spec) of every yml data test."""
    project = manifest.project
    for name, node in manifest.nodes.items():
        if node.resource_type in ("model", "snapshot"):
            item: Any = project.models[name]
            yml = item.yml_path
            level = list(item.tests or [])
        elif node.resource_type == "seed":
            item = project.seeds[name]
            yml, level = item.yml_path, []
        else:
            source_name, _, table_name = name[len("source:"):].partition(".")
            item = project.sources[(source_name, table_name)]
            yml, level = item.yml_path, list(item.tests or [])
        if yml is None:
            continue
        where = _rel(yml, project.root)
        for spec in level:
            yield name, where, None, [], spec
        for column in item.columns.values():
            raw = getattr(column, "tags", None) or []
            for spec in column.tests or []:
                yield name, where, column.name, list(raw) if isinstance(raw, list) else [raw], spec


def _generic_tests(manifest: "Manifest", uid_of: dict[str, str]) -> Iterable[tuple[NodeInfo, set[str], TestRef]]:
    for node_key, yml, column, column_tags, spec in _test_entries(manifest):
        if isinstance(spec, str):
            test_name, args = spec, {}
        elif isinstance(spec, Mapping) and "test_name" in spec:
            args = dict(spec)
            test_name = str(args.pop("test_name"))
        elif isinstance(spec, Mapping) and len(spec) == 1:
            test_name, args = next(iter(spec.items()))
            args = dict(args or {})
        else:
            continue  # the loader reported the malformed entry
        found = _TEST_NAME.match(str(test_name))
        if found is None:
            continue
        args = json.loads(json.dumps(args, default=str))
        if column is not None:
            args["column_name"] = column
        arguments = args.pop("arguments", None)
        if isinstance(arguments, dict):
            args.update(arguments)
        config = dict(args.pop("config", None) or {})
        for key in TEST_CONFIG_ARGS:
            if key in args:
                config[key] = args.pop(key)
        args.pop("description", None)
        custom = args.pop("name", None)
        if config.get("enabled", True) is False:
            continue
        namespace, short = found["namespace"], found["name"]
        node = manifest.nodes[node_key]
        if node.resource_type == "source":
            prefix, target = "source_" + short, node_key[len("source:"):].replace(".", "_")
        else:
            prefix, target = short, node.name
        if namespace:
            prefix = f"{namespace}_{prefix}"
        full = str(custom) if custom else _synthesized_name(prefix, target, args)
        package = uid_of[node_key].split(".")[1]
        tags = config.get("tags") or []
        tags = sorted(set(column_tags) | set([tags] if isinstance(tags, str) else tags))
        deps = {uid_of[node_key]} | _refs_in(json.dumps(args), manifest, uid_of)
        digest = hashlib.md5(f"{full}{yml}{json.dumps(args, sort_keys=True)}".encode()).hexdigest()[-10:]
        info = NodeInfo(name=full, resource_type="test", path=yml, tags=tags, materialized="test",
                        fqn=[package, *_folders(yml), full],
                        config={**_DEFAULTS["test"], **config, "tags": tags}, unique_id=f"test.{package}.{full}.{digest}",
                        package=package, test_type="generic", test_name=short,
                        checksum=_sha(json.dumps([short, namespace, args, config], sort_keys=True, default=str)))
        yield info, deps, TestRef(node_key, column, short, namespace, args, _line_of(spec))


def _line_of(spec: Any) -> Optional[int]:
    from batchflow.yamlio import line_of

    return line_of(spec)


def _synthesized_name(prefix: str, target: str, args: dict[str, Any]) -> str:
    """dbt's synthesize_generic_test_names (the full name: the unique id and the fqn use it)."""
    flat: list[str] = []
    for key in sorted(args):
        if key == "model":
            continue
        value = args[key]
        parts = list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, list) else [value]
        flat.extend(str(p) if not isinstance(p, bool) else str(p) for p in parts)
    unique = "__".join(re.sub(r"[^0-9a-zA-Z_]+", "_", a) for a in flat)
    return f"{prefix}_{target}_{unique}"


def _refs_in(text: str, manifest: "Manifest", uid_of: dict[str, str]) -> set[str]:
    """Nodes a test's arguments or a singular test's SQL point at with ref() and source()."""
    found = set()
    for one, two in _REF.findall(text):
        name = two or one
        if name in uid_of:
            found.add(uid_of[name])
    for source, table in _SOURCE.findall(text):
        key = f"source:{source}.{table}"
        if key in uid_of:
            found.add(uid_of[key])
    return found


def _project_setting(manifest: "Manifest", key: str, default: list[str]) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(manifest.project.project_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return default
    value = data.get(key) or default
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _singular_tests(manifest: "Manifest", uid_of: dict[str, str]) -> Iterable[tuple[NodeInfo, set[str]]]:
    """`.sql` files of the test paths (not `generic/`, which holds test macros), as dbt reads them."""
    project = manifest.project
    for folder in _project_setting(manifest, "test-paths", ["tests"]):
        base = project.root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.sql")):
            inner = path.relative_to(base).parts
            if inner[0] == "generic":
                continue
            text = path.read_text()
            relative = _rel(path, project.root)
            info = NodeInfo(name=path.stem, resource_type="test", path=relative, tags=[], materialized="test",
                            fqn=[project.name, *inner[:-1], path.stem], config=dict(_DEFAULTS["test"]),
                            unique_id=f"test.{project.name}.{path.stem}", package=project.name,
                            test_type="singular", checksum=_sha(text))
            yield info, _refs_in(text, manifest, uid_of)


def _unit_tests(manifest: "Manifest", uid_of: dict[str, str]) -> Iterable[tuple[NodeInfo, set[str]]]:
    """`unit_tests:` entries of the project's yml files (batchflow lists and selects them; see the
    README for running them)."""
    from batchflow.yamlio import load_yaml

    project = manifest.project
    for folder in _project_setting(manifest, "model-paths", ["models"]):
        base = project.root / folder
        if not base.is_dir():
            continue
        for path in sorted([*base.rglob("*.yml"), *base.rglob("*.yaml")]):
            text = path.read_text()
            if "unit_tests" not in text:
                continue
            data = load_yaml(path) or {}
            relative = _rel(path, project.root)
            for entry in data.get("unit_tests") or []:
                if not isinstance(entry, Mapping) or not entry.get("name") or not entry.get("model"):
                    continue
                model = str(entry["model"])
                config = {**_DEFAULTS["unit_test"], **dict(entry.get("config") or {})}
                tags = config.get("tags") or []
                tags = [tags] if isinstance(tags, str) else list(tags)
                name = str(entry["name"])
                info = NodeInfo(name=name, resource_type="unit_test", path=relative, tags=tags, materialized=None,
                                fqn=[project.name, *_folders(relative), model, name], config=config,
                                unique_id=f"unit_test.{project.name}.{model}.{name}", package=project.name,
                                test_type="unit", checksum=_sha(json.dumps(entry, sort_keys=True, default=str)))
                yield info, {uid_of[model]} if model in uid_of else set()


# ---- selectors.yml ------------------------------------------------------------------------------------


def load_selectors(root: Path) -> tuple[dict[str, Spec], Optional[str]]:
    """The selectors of `<root>/selectors.yml` (dbt's format) and the name of the default one."""
    path = root / "selectors.yml"
    if not path.exists():
        return {}, None
    from batchflow.yamlio import line_of, load_yaml

    data = load_yaml(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("selectors"), list):
        raise ConfigError("selectors.yml needs a `selectors:` list", path, 1)
    extra = set(data) - {"selectors"}
    if extra:
        raise ConfigError(f"unknown key {sorted(extra)[0]!r} in selectors.yml; it holds only `selectors:`",
                          path, line_of(data, sorted(extra)[0]))
    specs: dict[str, Spec] = {}
    default = None
    for entry in data["selectors"]:
        line = line_of(entry)
        if not isinstance(entry, Mapping) or "name" not in entry or "definition" not in entry:
            raise ConfigError("each selector needs `name:` and `definition:`", path, line)
        unknown = set(entry) - {"name", "description", "definition", "default"}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in selector {entry['name']!r}; "
                              "a selector has name, description, definition, default", path,
                              line_of(entry, sorted(unknown)[0]))
        name = str(entry["name"])
        if name in specs:
            raise ConfigError(f"selector {name!r} is defined twice", path, line)
        try:
            specs[name] = _definition(entry["definition"], specs, root=True)
        except ConfigError as exc:
            raise ConfigError(f"selector {name!r}: {exc.message}", path, line_of(entry, "definition")) from None
        if entry.get("default") is True:
            if default is not None:
                raise ConfigError(f"selectors {default!r} and {name!r} are both `default: true`", path, line)
            default = name
    return specs, default


def _definition(definition: Any, known: dict[str, Spec], root: bool = False, indirect: str = "eager") -> Spec:
    """dbt's parse_from_definition: a string, {method: value}, {method:, value:, ...}, union, intersection."""
    if isinstance(definition, str):
        return parse_criterion(definition, indirect)
    if not isinstance(definition, Mapping):
        raise ConfigError(f"expected a string or a mapping, got {definition!r}")
    if root and len(definition) > 1 and ("union" in definition or "intersection" in definition):
        raise ConfigError("a root definition holds a single `union` or `intersection` key")
    for op in ("union", "intersection"):
        if op in definition:
            items = definition[op]
            if not isinstance(items, list):
                raise ConfigError(f"`{op}` takes a list")
            include, exclude = [], None
            for item in items:
                if isinstance(item, Mapping) and "exclude" in item and len(item) == 1:
                    if exclude is not None:
                        raise ConfigError(f"only one `exclude` per `{op}`")
                    exclude = _exclusions(item["exclude"], known)
                else:
                    include.append(_definition(item, known))
            spec: Spec = SetOp(op, tuple(include))
            return spec if exclude is None else SetOp("difference", (spec, exclude))
    if definition.get("method") == "selector":
        target = str(definition.get("value"))
        if target not in known:
            raise ConfigError(f"selector {target!r} is not defined above this one")
        return known[target]
    keys = {"method", "value", "parents", "children", "childrens_parents", "parents_depth", "children_depth",
            "indirect_selection", "exclude"}
    if len(definition) == 1 and "method" not in definition:
        (method, value), = definition.items()
        return parse_criterion(f"{method}:{value}", indirect)
    if "method" not in definition or "value" not in definition:
        raise ConfigError(f"expected one `method: value` key, or `method:` and `value:`; got {sorted(definition)}")
    unknown = set(definition) - keys
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}; a criterion takes {', '.join(sorted(keys))}")
    mode = str(definition.get("indirect_selection", indirect))
    if mode not in INDIRECT_SELECTION:
        raise ConfigError(f"indirect_selection {mode!r}: expected one of {', '.join(INDIRECT_SELECTION)}")
    raw = ("@" if definition.get("childrens_parents") else "") + (
        f"{definition.get('parents_depth') or ''}+" if definition.get("parents") else "") + (
        f"{definition['method']}:{definition['value']}") + (
        f"+{definition.get('children_depth') or ''}" if definition.get("children") else "")
    base: Spec = parse_criterion(raw, mode)
    if "exclude" in definition:
        return SetOp("difference", (base, _exclusions(definition["exclude"], known)))
    return base


def _exclusions(items: Any, known: dict[str, Spec]) -> Spec:
    if not isinstance(items, list):
        raise ConfigError("`exclude` takes a list")
    parts = tuple(_definition(item, known) for item in items)
    return parts[0] if len(parts) == 1 else SetOp("union", parts)


# ---- --state DIR ----------------------------------------------------------------------------------------


def load_state(folder: Path | str) -> PreviousState:
    """A previous run's `manifest.json` (required) and `run_results.json` (optional) from `folder`."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"--state {folder}: no manifest.json there (point it at a previous run's target/ "
                          "folder, or a copy of it)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--state {folder}: manifest.json cannot be read: {exc}") from None
    nodes = {**(manifest.get("nodes") or {}), **(manifest.get("sources") or {}), **(manifest.get("unit_tests") or {})}
    if nodes and not all(isinstance(n, Mapping) and "unique_id" in n for n in nodes.values()):
        raise ConfigError(f"--state {folder}: manifest.json is not in dbt's schema (written by an older "
                          "batchflow?); rebuild it with `batchflow compile`")
    results = None
    results_path = folder / "run_results.json"
    if results_path.is_file():
        from batchflow.artifacts import result_statuses

        results = result_statuses(json.loads(results_path.read_text()))
    return PreviousState(nodes=nodes, results=results, path=str(folder))


def deferred_relations(manifest: "Manifest", selected: set[str], state: PreviousState,
                       exists: Callable[["Node"], bool]) -> dict[str, "Relation"]:
    """dbt's --defer: each model or seed that a selected model reads, that is not selected itself and is
    not built in this target, resolves to where the state's manifest says it was built."""
    from batchflow.relation import Relation

    uid_of = {key: uid for uid, key in build_keys(manifest).items()}
    deferred: dict[str, Relation] = {}
    for name in selected:
        for dep in manifest.nodes[name].depends_on:
            parent = manifest.nodes.get(dep)
            if (dep in selected or dep in deferred or parent is None or parent.resource_type not in ("model", "seed")
                    or parent.materialized == "ephemeral" or exists(parent)):
                continue
            old = state.nodes.get(uid_of.get(dep, ""))
            if not old or not old.get("schema"):
                continue
            relation = Relation(old.get("database"), str(old["schema"]), str(old.get("alias") or old.get("name")))
            if relation != parent.relation:
                deferred[dep] = relation
    return deferred


def apply_defer(manifest: "Manifest", selected: set[str], state: PreviousState,
                exists: Callable[["Node"], bool]) -> dict[str, "Relation"]:
    """Point the selected models' compiled SQL at the deferred relations (see `deferred_relations`);
    returns them. A model re-rendered at build time (incremental, run_query) reads the target's own."""
    from batchflow.compiler import render_relation

    deferred = deferred_relations(manifest, selected, state, exists)
    if not deferred:
        return deferred
    for name in selected:
        node = manifest.nodes[name]
        if node.resource_type != "model" or not any(d in deferred for d in node.depends_on):
            continue
        sql = node.compiled_sql
        for dep in node.depends_on:
            if dep in deferred:
                for dialect in ("bigquery", "duckdb"):
                    sql = sql.replace(render_relation(manifest.nodes[dep].relation, dialect),
                                      render_relation(deferred[dep], dialect))
        node.compiled_sql = sql
    return deferred


def build_keys(manifest: "Manifest") -> dict[str, str]:
    """unique_id -> Manifest.nodes key of every model, seed and source (no test discovery)."""
    pname = manifest.project.name
    keys = {}
    for name, node in manifest.nodes.items():
        if node.resource_type in ("model", "snapshot"):
            keys[f"{node.resource_type}.{manifest.project.models[name].package or pname}.{name}"] = name
        elif node.resource_type == "seed":
            keys[f"seed.{pname}.{name}"] = name
        else:
            source, _, table = name[len("source:"):].partition(".")
            keys[f"source.{pname}.{source}.{table}"] = name
    return keys
