"""The DAG of models, seeds and sources, and dbt's node selection syntax.

The graph is plain dicts of sets (name -> parents, name -> children): building one for thousands of nodes
and answering a selection takes milliseconds.

Selection (`--select` / `--exclude`), as in dbt:

* each list item may hold several space-separated terms: their union;
* a term with commas is an intersection of its parts: `tag:nightly,config.materialized:view`;
* each part is `[@][N]+<selector>[+[N]]`: `+` adds ancestors, a trailing `+` descendants, `N` limits the
  depth, `@` adds the descendants and all of their ancestors;
* a selector is a node name (`*`/`?` wildcards allowed), a dotted fqn (`project.staging`, a prefix), a
  path (contains `/` or ends in `.sql`/`.csv`), or `method:value` with method `tag`, `path`, `fqn`,
  `resource_type`, `source` (`source:raw` or `source:raw.table`) or `config.<key>`.

A selector that matches nothing gives an empty set (the caller warns, as dbt does), with one exception:
a plain name without wildcards that names no node is almost always a typo, so it raises ConfigError with
the closest name. Excludes follow the same rule.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from batchflow.errors import CompileError, ConfigError

METHODS = ("tag", "path", "fqn", "resource_type", "source", "config")
_WILDCARD = re.compile(r"[*?\[]")
# [@][N]+body[+[N]] ; the body is non-greedy so a trailing `+N` is read as the operator.
_OPERATORS = re.compile(r"^(?P<at>@)?(?:(?P<up>\d*)\+)?(?P<body>.*?)(?:\+(?P<down>\d*))?$")


@dataclass
class NodeInfo:
    """What selection looks at for one node."""

    name: str
    resource_type: str = "model"  # "model" | "seed" | "source"
    path: str = ""  # relative to the project root, forward slashes (sources: their yml file)
    tags: list[str] = field(default_factory=list)
    materialized: str | None = None
    fqn: list[str] = field(default_factory=list)  # [project, *folders, name]; sources [project, source, table]
    config: dict[str, Any] = field(default_factory=dict)  # for `config.<key>:` selectors


class CycleError(CompileError):
    """The models' references form a cycle; the message spells it out as `a -> b -> a`."""

    def __init__(self, cycle: list[str], path: str | None = None):
        self.cycle = cycle
        super().__init__(f"dependency cycle: {' -> '.join(cycle)} (x -> y: y depends on x)", path)


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Graph:
    """A DAG over node names. Edges point from a node to the nodes it depends on (`parents`)."""

    def __init__(self, nodes: Mapping[str, Iterable[str]], info: Mapping[str, NodeInfo] | None = None):
        """`nodes`: name -> names it depends on; `info`: per-node attributes for selection.
        Raises CompileError for a dependency on an unknown node and CycleError for a cycle."""
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

    # ---- selection ----------------------------------------------------------------------------------

    def select(self, select: list[str] | None = None, exclude: list[str] | None = None) -> set[str]:
        """Node names chosen by dbt-style `select` (default: all nodes) minus those chosen by `exclude`."""
        select_terms = [term for item in select or [] for term in item.split()]
        chosen = set(self.parents) if not select_terms else set()
        for term in select_terms:
            chosen |= self._select_term(term)
        for term in (term for item in exclude or [] for term in item.split()):
            chosen -= self._select_term(term)
        return chosen

    def _select_term(self, term: str) -> set[str]:
        """Intersection of the comma-separated parts of one term."""
        result: set[str] | None = None
        for part in term.split(","):
            if not part:
                raise ConfigError(f"empty selector in {term!r}")
            matched = self._select_part(part)
            result = matched if result is None else result & matched
        return result or set()

    def _select_part(self, part: str) -> set[str]:
        found = _OPERATORS.match(part)
        assert found is not None  # the pattern matches any string
        body = found["body"]
        if not body:
            raise ConfigError(f"selector {part!r} names no node")
        matched = self._match(body)
        result = set(matched)
        if found["up"] is not None:
            depth = int(found["up"]) if found["up"] else None
            for name in matched:
                result |= self.upstream(name, depth)
        if found["down"] is not None or found["at"]:
            depth = int(found["down"]) if found["down"] else None
            for name in matched:
                result |= self.downstream(name, depth)
        if found["at"]:
            for name in list(result):
                result |= self.upstream(name)
        return result

    def _match(self, selector: str) -> set[str]:
        """Nodes matched by one selector without graph operators."""
        if ":" in selector:
            method, _, value = selector.partition(":")
            return self._match_method(method, value, selector)
        if "/" in selector or selector.endswith((".sql", ".csv", ".yml", ".yaml")):
            return self._match_path(selector)
        if _WILDCARD.search(selector) and "." not in selector:
            return {name for name in self.parents if fnmatchcase(name, selector)}
        if selector in self.parents:
            return {selector}
        if "." in selector:
            return self._match_fqn(selector)
        package = {name for name, info in self.info.items() if len(info.fqn) > 1 and info.fqn[0] == selector}
        if package:
            return package
        raise ConfigError(f"no node named {selector!r}{_suggestion(selector, self.parents)}")

    def _match_method(self, method: str, value: str, selector: str) -> set[str]:
        if method == "tag":
            return {n for n, i in self.info.items() if any(fnmatchcase(str(t), value) for t in i.tags)}
        if method == "path":
            return self._match_path(value)
        if method == "fqn":
            return self._match_fqn(value)
        if method == "resource_type":
            return {n for n, i in self.info.items() if i.resource_type == value}
        if method == "source":
            return self._match_source(value)
        if method.startswith("config."):
            key = method[len("config."):]
            return {n for n, i in self.info.items() if _config_matches(_config_value(i, key), value)}
        raise ConfigError(
            f"unknown selector method {method!r} in {selector!r}{_suggestion(method, METHODS)}; "
            f"supported: {', '.join(m + ':' if m != 'config' else 'config.<key>:' for m in METHODS)}"
        )

    def _match_path(self, value: str) -> set[str]:
        """A file, or every node under a folder; wildcards allowed."""
        prefix = value.strip().removeprefix("./").rstrip("/")
        matched = set()
        for name, info in self.info.items():
            path = info.path.replace("\\", "/")
            if path == prefix or path.startswith(prefix + "/") or fnmatchcase(path, prefix):
                matched.add(name)
        return matched

    def _match_fqn(self, value: str) -> set[str]:
        """Nodes whose fqn starts with the dotted parts of `value` (each part may use wildcards)."""
        parts = value.split(".")
        return {
            name
            for name, info in self.info.items()
            if len(info.fqn) >= len(parts) and all(fnmatchcase(f, p) for f, p in zip(info.fqn, parts))
        }

    def _match_source(self, value: str) -> set[str]:
        """`source:raw` (every table of source raw) or `source:raw.table`; wildcards allowed."""
        want_source, _, want_table = value.partition(".")
        matched = set()
        for name, info in self.info.items():
            if info.resource_type != "source":
                continue
            source, table = _source_parts(name, info)
            if fnmatchcase(source, want_source) and (not want_table or fnmatchcase(table, want_table)):
                matched.add(name)
        return matched


def _source_parts(name: str, info: NodeInfo) -> tuple[str, str]:
    """(source name, table name) of a source node: from a `source:<src>.<table>` node name, else fqn."""
    if name.startswith("source:") and "." in name:
        source, _, table = name[len("source:"):].partition(".")
        return source, table
    if len(info.fqn) >= 2:
        return info.fqn[-2], info.fqn[-1]
    return name, ""


def _config_value(info: NodeInfo, key: str) -> Any:
    if key == "materialized" and info.materialized is not None:
        return info.materialized
    if key == "tags":
        return info.tags
    return info.config.get(key)


def _config_matches(actual: Any, wanted: str) -> bool:
    if actual is None:
        return False
    if isinstance(actual, (list, tuple, set)):
        return any(_config_matches(item, wanted) for item in actual)
    if isinstance(actual, bool):
        return str(actual).lower() == wanted.lower()
    return fnmatchcase(str(actual), wanted)


def find_cycle(nodes: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The cycle in `nodes` (name -> dependencies) as [a, b, ..., a], or None; never raises CycleError."""
    try:
        Graph(nodes)
    except CycleError as exc:
        return exc.cycle
    return None
