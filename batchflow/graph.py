"""The DAG of models, seeds, sources and tests, and dbt's node selection syntax (dbt-core 1.11's rules).

The graph is plain dicts of sets (key -> parents, key -> children): building one for thousands of nodes
and answering a selection takes milliseconds. Keys are whatever the caller uses (the compiler: node
names; `batchflow.selection`: dbt unique ids); selection looks at each node's `NodeInfo`.

Selection (`--select` / `--exclude`, and `selectors.yml` definitions), as dbt does it:

* each list item may hold several space-separated terms: their union; `--exclude` is taken away last;
* a term with commas is the intersection of its parts: `tag:nightly,config.materialized:view`;
* each part is `[@][N]+<selector>[+[N]]`: `+` adds ancestors, a trailing `+` descendants, `N` limits the
  depth, `@` adds the descendants and all of their ancestors;
* a selector without `method:` is a path when it holds a `/`, a file name when it ends in `.sql`/`.py`/
  `.csv`, else an fqn: a node name, a dotted fqn prefix with or without the package
  (`jaffle_shop.staging`, `staging.stg_orders`), a bare folder or package name; wildcards allowed;
* methods: fqn, tag, path, file, package, config.<key> (any key, nested with dots; exact values),
  resource_type, source, test_name, test_type, unit_test, group, access, version, and with a previous
  state (`--state DIR`): state (new, old, modified, unmodified, modified.body|configs|relation|
  persisted_descriptions) and result (statuses of the state's run_results.json);
* tests follow what they test (dbt's eager indirect selection): selecting a node selects the tests
  that depend on it; `indirect_selection: cautious | buildable | empty` in selectors.yml narrows that.

A selector that matches nothing gives an empty set, with one exception: a plain name without wildcards
or dots that names no node is almost always a typo, so it raises ConfigError with the closest name.
"""

from __future__ import annotations

import difflib
import heapq
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Union

from batchflow.errors import CompileError, ConfigError

METHODS = ("fqn", "tag", "path", "file", "package", "config", "resource_type", "source", "test_name", "test_type",
           "unit_test", "group", "access", "version", "state", "result")
#: dbt methods for resources batchflow does not load: refused, never an empty selection in silence
UNSUPPORTED_METHODS = {"exposure": "exposures", "metric": "metrics", "semantic_model": "semantic models",
                       "saved_query": "saved queries", "source_status": "source freshness results"}
RESOURCE_TYPES = ("model", "analysis", "test", "snapshot", "operation", "seed", "rpc", "sql_operation", "doc",
                  "source", "macro", "exposure", "metric", "group", "saved_query", "semantic_model", "unit_test",
                  "fixture", "function")
STATE_CHECKS = ("new", "old", "modified", "unmodified", "modified.body", "modified.configs", "modified.relation",
                "modified.persisted_descriptions")
INDIRECT_SELECTION = ("eager", "cautious", "buildable", "empty")
_WILDCARD = ("*", "?", "[", "]")
# dbt's RAW_SELECTOR_PATTERN: [@][N+]method:value[+N]
_SPEC = re.compile(r"\A(?P<at>@)?(?P<parents>(?P<parents_depth>\d*)\+)?(?:(?P<method>[\w.]+):)?(?P<value>.*?)"
                   r"(?P<children>\+(?P<children_depth>\d*))?\Z")


@dataclass
class NodeInfo:
    """What selection looks at for one node (dbt's names for each field)."""

    name: str
    resource_type: str = "model"  # model | seed | source | test | unit_test
    path: str = ""  # original_file_path: relative to the project root, forward slashes (tests: their yml)
    tags: list[str] = field(default_factory=list)
    materialized: str | None = None
    fqn: list[str] = field(default_factory=list)  # [package, *folders, name]; sources [package, *folders, source, table]
    config: dict[str, Any] = field(default_factory=dict)  # for `config.<key>:` selectors
    unique_id: str = ""  # model.<package>.<name>, source.<package>.<source>.<table>, test.<package>.<name>.<hash>
    package: str = ""  # default: fqn[0]
    patch_path: str = ""  # the yml file that documents the node (path: selects it too)
    source_name: str = ""  # sources only
    test_type: str = ""  # tests: "generic" | "singular"; unit tests: "unit"
    test_name: str = ""  # generic tests: the test's own name (not_null, expression_is_true)
    checksum: str = ""  # sha256 of what defines the node (its file; a test's spec): for state:modified
    relation: str = ""  # where it is built, for state:modified.relation and --defer
    description: str = ""
    depends_on: list[str] = field(default_factory=list)  # keys of its parents (filled in by batchflow.selection)

    @property
    def package_name(self) -> str:
        """The package the node comes from."""
        return self.package or (self.fqn[0] if self.fqn else "")

    @property
    def search_name(self) -> str:
        """What `ls --output name` prints: the name, `source.table` for sources (as dbt does)."""
        if self.resource_type == "source":
            source, table = _source_parts(self.name, self)
            return f"{source}.{table}"
        return self.name

    @property
    def selector(self) -> str:
        """What `ls --output selector` (dbt's default) prints: the fqn, `source:pkg.source.table`, ..."""
        if self.resource_type == "source":
            source, table = _source_parts(self.name, self)
            return f"source:{self.package_name}.{source}.{table}"
        if self.resource_type == "unit_test":
            return f"unit_test:{self.package_name}.{self.name}"
        return ".".join(self.fqn) if self.fqn else self.name


@dataclass
class PreviousState:
    """What `--state DIR` holds: a previous run's manifest nodes and run results, by unique id."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest `nodes` and `sources`
    #: unique_id -> its statuses in run_results.json (dbt's, and batchflow's own where it differs); None: no file
    results: dict[str, tuple[str, ...]] | None = None
    path: str = ""  # the folder, for messages


@dataclass(frozen=True)
class Criterion:
    """One selector with its graph operators (dbt's SelectionCriteria)."""

    raw: str
    method: str
    args: tuple[str, ...]
    value: str
    at: bool = False
    parents: bool = False
    parents_depth: int | None = None
    children: bool = False
    children_depth: int | None = None
    indirect: str = "eager"
    default_method: bool = False  # written without `method:`


@dataclass(frozen=True)
class SetOp:
    """A union, intersection or difference of selections."""

    op: str  # "union" | "intersection" | "difference"
    parts: tuple["Spec", ...]
    indirect: str = "eager"


Spec = Union[Criterion, SetOp]


def _depth(text: str | None) -> int | None:
    return int(text) if text else None


def parse_criterion(raw: str, indirect: str = "eager") -> Criterion:
    """One `[@][N+]method:value[+N]` selector; ConfigError for a method dbt does not know."""
    found = _SPEC.match(raw)
    assert found is not None  # the pattern matches any string
    method_text, value = found["method"], found["value"]
    if not value:
        raise ConfigError(f"selector {raw!r} names no node")
    if method_text is None:
        if "/" in value or "\\" in value:
            method, args = "path", ()
        elif value.lower().endswith((".sql", ".py", ".csv")):
            method, args = "file", ()
        else:
            method, args = "fqn", ()
    else:
        method, *rest = method_text.split(".")
        args = tuple(rest)
        if method in UNSUPPORTED_METHODS:
            raise ConfigError(f"selector {raw!r}: batchflow does not load {UNSUPPORTED_METHODS[method]}, so "
                              f"`{method}:` cannot select anything")
        if method not in METHODS:
            raise ConfigError(
                f"unknown selector method {method!r} in {raw!r}{_suggestion(method, METHODS)}; "
                f"supported: {', '.join(m + ':' if m != 'config' else 'config.<key>:' for m in METHODS)}")
        if method == "config" and not args:
            raise ConfigError(f"selector {raw!r}: `config` needs a key, e.g. config.materialized:table")
    if found["at"] and found["children"]:
        raise ConfigError(f"selector {raw!r}: the `@` prefix and a `+` suffix cannot be combined (as in dbt)")
    return Criterion(raw, method, args, value, at=bool(found["at"]), parents=found["parents"] is not None,
                     parents_depth=_depth(found["parents_depth"]), children=found["children"] is not None,
                     children_depth=_depth(found["children_depth"]), indirect=indirect,
                     default_method=method_text is None)


def parse_union(items: Iterable[str], indirect: str = "eager") -> SetOp:
    """`--select a b,c` items: a union of terms, each the intersection of its comma-separated parts."""
    terms = []
    for item in items:
        for term in item.split():
            parts = term.split(",")
            if any(not p for p in parts):
                raise ConfigError(f"empty selector in {term!r}")
            terms.append(SetOp("intersection", tuple(parse_criterion(p, indirect) for p in parts), indirect))
    return SetOp("union", tuple(terms), indirect)


def parse_cli(select: list[str] | None, exclude: list[str] | None) -> SetOp:
    """`--select` (default: every node) minus `--exclude`, as dbt combines them."""
    include = parse_union(select) if select and any(s.split() for s in select) else SetOp("union", (ALL,))
    return SetOp("difference", (include, parse_union(exclude or [])))


#: what no `--select` means: every node (dbt: fqn:*, source:*, ...)
ALL = Criterion("*", "all", (), "*")


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class CycleError(CompileError):
    """The models' references form a cycle; the message spells it out as `a -> b -> a`."""

    def __init__(self, cycle: list[str], path: str | None = None):
        self.cycle = cycle
        super().__init__(f"dependency cycle: {' -> '.join(cycle)} (x -> y: y depends on x)", path)


class Graph:
    """A DAG over node keys. Edges point from a node to the nodes it depends on (`parents`)."""

    def __init__(self, nodes: Mapping[str, Iterable[str]], info: Mapping[str, NodeInfo] | None = None,
                 root_package: str = ""):
        """`nodes`: name -> names it depends on; `info`: per-node attributes for selection.
        `root_package`: the project's name (`package:this`). Raises CompileError for a dependency on an
        unknown node and CycleError for a cycle."""
        self.root_package = root_package
        self.parents: dict[str, set[str]] = {name: set(deps) for name, deps in nodes.items()}
        self.children: dict[str, set[str]] = {name: set() for name in self.parents}
        for name, deps in self.parents.items():
            for dep in deps:
                if dep not in self.children:
                    raise CompileError(f"{name!r} depends on unknown node {dep!r}")
                self.children[dep].add(name)
        info = info or {}
        self.info: dict[str, NodeInfo] = {name: info.get(name) or NodeInfo(name) for name in self.parents}
        self._order = self._kahn()
        if len(self._order) != len(self.parents):
            cycle = self.cycle() or []
            raise CycleError(cycle, self.info[cycle[0]].path or None)

    def __contains__(self, name: object) -> bool:
        return name in self.parents

    def __len__(self) -> int:
        return len(self.parents)

    def _kahn(self) -> list[str]:
        """Topological order, ties broken by name; shorter than the graph when there is a cycle."""
        waiting = {name: len(deps) for name, deps in self.parents.items()}
        ready = [name for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = heapq.heappop(ready)
            order.append(name)
            for child in self.children[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        return order

    def topological_order(self, subset: Iterable[str] | None = None) -> list[str]:
        """Every node (or those in `subset`) after everything it depends on; ties broken by name."""
        if subset is None:
            return list(self._order)
        wanted = set(subset)
        return [name for name in self._order if name in wanted]

    def cycle(self) -> list[str] | None:
        """A cycle as [a, b, ..., a] in data-flow order (each node is a dependency of the next),
        starting at its smallest name; None for a DAG."""
        remaining = set(self.parents) - set(getattr(self, "_order", []))
        if not remaining:
            return None
        # Every node left over by Kahn's algorithm has a parent that is also left over, so walking
        # parents from any of them must come back to a node already seen: that loop is a cycle.
        walk: list[str] = [min(remaining)]
        seen = {walk[0]: 0}
        while True:
            parent = min(p for p in self.parents[walk[-1]] if p in remaining)
            if parent in seen:
                loop = walk[seen[parent]:]
                break
            seen[parent] = len(walk)
            walk.append(parent)
        loop.reverse()  # parents-walk order -> data-flow order
        start = loop.index(min(loop))
        loop = loop[start:] + loop[:start]
        return loop + [loop[0]]

    def _reach(self, name: str, edges: dict[str, set[str]], depth: int | None) -> set[str]:
        found: set[str] = set()
        frontier = [name]
        level = 0
        while frontier and (depth is None or level < depth):
            level += 1
            next_frontier = []
            for node in frontier:
                for other in edges[node]:
                    if other not in found:
                        found.add(other)
                        next_frontier.append(other)
            frontier = next_frontier
        found.discard(name)
        return found

    def upstream(self, name: str, depth: int | None = None) -> set[str]:
        """Everything `name` depends on, transitively (at most `depth` levels up)."""
        return self._reach(name, self.parents, depth)

    def downstream(self, name: str, depth: int | None = None) -> set[str]:
        """Everything that depends on `name`, transitively (at most `depth` levels down)."""
        return self._reach(name, self.children, depth)

    # ---- selection (dbt's NodeSelector) ---------------------------------------------------------------

    def select(self, select: list[str] | None = None, exclude: list[str] | None = None,
               state: PreviousState | None = None) -> set[str]:
        """Keys chosen by dbt-style `select` (default: all nodes) minus those chosen by `exclude`."""
        return self.select_spec(parse_cli(select, exclude), state)

    def select_spec(self, spec: Spec, state: PreviousState | None = None) -> set[str]:
        """Keys chosen by a parsed selection (a `selectors.yml` definition, or `parse_cli`'s)."""
        direct, _ = self._evaluate(spec, state)
        return direct

    def _evaluate(self, spec: Spec, state: PreviousState | None) -> tuple[set[str], set[str]]:
        """(selected, tests left pending by cautious/buildable indirect selection)."""
        if isinstance(spec, Criterion):
            collected = self._search(spec, state)
            selected = set(collected)
            if spec.at:
                selected |= self._childrens_parents(collected)
            if spec.parents:
                selected |= self._reach_all(collected, self.parents, spec.parents_depth)
            if spec.children:
                selected |= self._reach_all(collected, self.children, spec.children_depth)
            if spec.indirect == "empty":
                return selected, set()
            return self._expand_tests(selected, spec.indirect)
        bundles = [self._evaluate(part, state) for part in spec.parts]
        if not bundles:
            return set(), set()
        combine = {"union": set.union, "intersection": set.intersection, "difference": set.difference}[spec.op]
        direct = combine(*(d for d, _ in bundles))
        pending = combine(*(d | i for d, i in bundles))
        return self._incorporate(direct, pending, spec.indirect), pending

    def _reach_all(self, start: set[str], edges: dict[str, set[str]], depth: int | None) -> set[str]:
        found: set[str] = set()
        frontier, level = set(start), 0
        while frontier and (depth is None or level < depth):
            level += 1
            frontier = {other for node in frontier for other in edges[node]} - found
            found |= frontier
        return found

    def _childrens_parents(self, selected: set[str]) -> set[str]:
        """`@x`: x, everything downstream of it, and every ancestor of those."""
        down = self._reach_all(selected, self.children, None) | selected
        return self._reach_all(down, self.parents, None) | down

    def _expand_tests(self, selected: set[str], mode: str) -> tuple[set[str], set[str]]:
        """Tests of the selected nodes (dbt's indirect selection)."""
        direct, pending = set(selected), set()
        around = selected | self._reach_all(selected, self.parents, None) if mode == "buildable" else selected
        for child in {c for node in selected for c in self.children[node]}:
            if self.info[child].resource_type not in ("test", "unit_test"):
                continue
            if mode == "eager" or self.parents[child] <= around:
                direct.add(child)
            else:
                pending.add(child)
        return direct, pending

    def _incorporate(self, direct: set[str], pending: set[str], mode: str) -> set[str]:
        if mode not in ("cautious", "buildable") or direct == pending:
            return direct
        around = direct | self._reach_all(direct, self.parents, None) if mode == "buildable" else direct
        return direct | {t for t in pending if t in self.info and self.parents[t] <= around}

    def _search(self, spec: Criterion, state: PreviousState | None) -> set[str]:
        """Nodes one selector matches, before graph operators."""
        value, info = spec.value, self.info
        method = spec.method
        if method == "all":
            return set(info)
        if method == "fqn":
            matched = {k for k, i in info.items() if i.resource_type != "source" and _fqn_matches(value, i.fqn or [i.name])}
            if not matched and spec.default_method and "." not in value and not any(w in value for w in _WILDCARD):
                names = {i.name for i in info.values()} | {p for i in info.values() for p in i.fqn}
                raise ConfigError(f"no node named {value!r}{_suggestion(value, names)}")
            return matched
        if method == "tag":
            return {k for k, i in info.items() if any(fnmatchcase(str(t), value) for t in i.tags)}
        if method == "path":
            return {k for k, i in info.items() if _path_matches(value, i)}
        if method == "file":
            return {k for k, i in info.items()
                    if fnmatchcase(_basename(i.path), value) or fnmatchcase(_basename(i.path).rsplit(".", 1)[0], value)}
        if method == "package":
            if value == "this" and self.root_package:
                value = self.root_package
            return {k for k, i in info.items() if fnmatchcase(i.package_name, value)}
        if method == "config":
            return self._match_config(spec.args, value)
        if method == "resource_type":
            if value not in RESOURCE_TYPES:
                raise ConfigError(f"invalid resource_type selector {value!r}{_suggestion(value, RESOURCE_TYPES)}")
            return {k for k, i in info.items() if i.resource_type == value}
        if method == "source":
            return self._match_source(value)
        if method == "test_name":
            return {k for k, i in info.items() if (i.resource_type == "test" and i.test_type == "generic"
                                                   and fnmatchcase(i.test_name, value))
                    or (i.resource_type == "unit_test" and fnmatchcase(i.name, value))}
        if method == "test_type":
            kinds = {"generic": {"generic"}, "schema": {"generic"}, "data": {"generic", "singular"},
                     "singular": {"singular"}, "unit": {"unit"}}.get(value)
            if kinds is None:
                raise ConfigError(f"invalid test_type selector {value!r}: expected generic, singular, unit or data")
            return {k for k, i in info.items() if i.resource_type in ("test", "unit_test") and i.test_type in kinds}
        if method == "unit_test":
            package, _, name = value.rpartition(".") if "." in value else ("*", "", value)
            return {k for k, i in info.items() if i.resource_type == "unit_test"
                    and fnmatchcase(i.package_name, package) and fnmatchcase(i.name, name)}
        if method == "group":
            return {k for k, i in info.items() if i.config.get("group") and fnmatchcase(str(i.config["group"]), value)}
        if method == "access":
            return {k for k, i in info.items() if i.resource_type == "model" and i.config.get("access") == value}
        if method == "version":
            if value not in ("latest", "prerelease", "old", "none"):
                raise ConfigError(f"invalid version selector {value!r}: expected latest, prerelease, old or none")
            # batchflow has no versioned models: every model is unversioned
            return {k for k, i in info.items() if i.resource_type == "model"} if value == "none" else set()
        if method == "state":
            return self._match_state(value, state)
        if method == "result":
            if state is None or state.results is None:
                where = f" ({state.path} has no run_results.json)" if state is not None else ""
                raise ConfigError(f"selector {spec.raw!r} needs --state DIR with a previous run_results.json{where}")
            return {k for k, i in info.items() if value in state.results.get(i.unique_id or k, ())}
        raise AssertionError(method)  # parse_criterion lets only known methods through

    def _match_config(self, keys: tuple[str, ...], wanted: str) -> set[str]:
        """`config.<key>[.<key>...]:value`: exact match, a list matches when it holds the value; true/false
        match booleans in any letter case; `config.severity` compares in any letter case (as dbt does)."""
        matched = set()
        folded = wanted.lower()
        for name, info in self.info.items():
            if info.resource_type == "unit_test":
                continue
            value: Any = _config_value(info, keys[0])
            missing = value is None and keys[0] not in info.config and keys[0] not in ("materialized", "tags")
            for key in keys[1:]:
                if isinstance(value, Mapping) and key in value:
                    value = value[key]
                else:
                    missing = True
                    break
            if missing:
                continue
            if keys == ("severity",) and isinstance(value, str):
                hit = value.lower() == folded
            elif isinstance(value, (list, tuple)):
                hit = wanted in value or (folded == "true" and True in value) or (folded == "false" and False in value)
            else:
                hit = (isinstance(value, str) and value == wanted) or (folded == "true" and value is True) or (
                    folded == "false" and value is False)
            if hit:
                matched.add(name)
        return matched

    def _match_source(self, value: str) -> set[str]:
        """`source:raw`, `source:raw.table` or `source:package.raw.table`; wildcards allowed."""
        parts = value.split(".")
        if len(parts) > 3:
            raise ConfigError(f"invalid source selector {value!r}: use source_name, source_name.table_name or "
                              "package.source_name.table_name")
        want_package, want_source, want_table = (["*"] * (3 - len(parts)) + parts) if len(parts) == 3 else (
            ["*", parts[0], parts[1] if len(parts) == 2 else "*"])
        matched = set()
        for name, info in self.info.items():
            if info.resource_type != "source":
                continue
            source, table = _source_parts(name, info)
            if (fnmatchcase(info.package_name, want_package) and fnmatchcase(source, want_source)
                    and fnmatchcase(table, want_table)):
                matched.add(name)
        return matched

    def _match_state(self, check: str, state: PreviousState | None) -> set[str]:
        if check not in STATE_CHECKS:
            raise ConfigError(f"invalid state selector {check!r}{_suggestion(check, STATE_CHECKS)}; "
                              f"batchflow compares: {', '.join(STATE_CHECKS)}")
        if state is None:
            raise ConfigError(f"selector 'state:{check}' needs --state DIR (a folder holding a previous manifest.json)")
        matched = set()
        for key, info in self.info.items():
            old = state.nodes.get(info.unique_id or key)
            if check == "new":
                hit = old is None
            elif check == "old":
                hit = old is not None
            elif old is None:
                hit = check == "modified" or check.startswith("modified.")
            else:
                changes = _state_changes(info, old)
                hit = bool(changes) if check == "modified" else not changes if check == "unmodified" else (
                    check.split(".", 1)[1] in changes)
            if hit:
                matched.add(key)
        return matched


def _fqn_matches(selector: str, fqn: list[str]) -> bool:
    """dbt's fqn rule: the fqn with or without its package (so `staging.stg_orders` and `staging` work)."""
    return _fqn_selected(fqn, selector) or (len(fqn) > 1 and _fqn_selected(fqn[1:], selector))


def _fqn_selected(fqn: list[str], selector: str) -> bool:
    """dbt-core's is_selected_node for unversioned nodes."""
    if fqn[-1] == selector:
        return True
    flat = [item for segment in fqn for item in segment.split(".")]
    parts = selector.split(".")
    if len(flat) < len(parts):
        return False
    for i, part in enumerate(parts):
        if any(w in part for w in _WILDCARD):
            if fnmatchcase(".".join(flat[i:]), ".".join(parts[i:])):
                return True
            return "." not in selector and fnmatchcase(fqn[-1], selector)
        if flat[i] != part:
            return False
    return True


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _glob(pattern: list[str], path: list[str]) -> bool:
    """pathlib's glob rule on split paths: `*` within one part, `**` any number of parts."""
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_glob(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], pattern[0]) and _glob(pattern[1:], path[1:])


def _path_matches(selector: str, info: NodeInfo) -> bool:
    """dbt's path rule: the file, its yml, or any folder above the file matches the glob."""
    pattern = [p for p in selector.strip().replace("\\", "/").split("/") if p and p != "."]
    path = [p for p in info.path.replace("\\", "/").split("/") if p]
    candidates = [path, *(path[:i] for i in range(len(path)))]
    if info.patch_path:
        candidates.append([p for p in info.patch_path.replace("\\", "/").split("/") if p])
    return bool(path) and any(_glob(pattern, c) for c in candidates)


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _state_changes(info: NodeInfo, old: Mapping[str, Any]) -> set[str]:
    """What differs between a node and its previous manifest entry: body, configs, relation,
    persisted_descriptions (dbt's same_contents checks)."""
    changes = set()
    old_checksum = old.get("checksum")  # nodes: {name, checksum}; unit tests: the text
    if isinstance(old_checksum, Mapping):
        old_checksum = old_checksum.get("checksum")
    if info.checksum and old_checksum != info.checksum:
        changes.add("body")
    if _normal(info.config) != _normal(old.get("config") or {}):
        changes.add("configs")
    if old.get("fqn") is not None and list(old["fqn"]) != list(info.fqn):
        changes.add("body")
    if info.relation and (old.get("relation_name") or "") != info.relation:
        changes.add("relation")
    persist = info.config.get("persist_docs") or {}
    if isinstance(persist, Mapping) and persist.get("relation") and (old.get("description") or "") != info.description:
        changes.add("persisted_descriptions")
    return changes


def _source_parts(name: str, info: NodeInfo) -> tuple[str, str]:
    """(source name, table name) of a source node: its fields, a `source:<src>.<table>` name, else fqn."""
    if info.source_name:
        return info.source_name, info.name
    name = info.name or name
    if name.startswith("source:") and "." in name:
        source, _, table = name[len("source:"):].partition(".")
        return source, table
    if len(info.fqn) >= 2:
        return info.fqn[-2], info.fqn[-1]
    return name, ""


def _config_value(info: NodeInfo, key: str) -> Any:
    if key == "materialized" and info.materialized is not None and "materialized" not in info.config:
        return info.materialized
    if key == "tags" and "tags" not in info.config:
        return info.tags
    return info.config.get(key)


def find_cycle(nodes: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The cycle in `nodes` (name -> dependencies) as [a, b, ..., a], or None; never raises CycleError."""
    try:
        Graph(nodes)
    except CycleError as exc:
        return exc.cycle
    return None
