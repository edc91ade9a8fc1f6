"""The DAG (order, ancestors, cycles) and dbt selection syntax."""

from __future__ import annotations


import pytest

from batchflow.errors import CompileError, ConfigError
from batchflow.graph import CycleError, Graph, NodeInfo, find_cycle

#   source:shop.reviews -> stg_reviews -> review_requests -> review_labels -> fct_summary
#   countries (seed) ------------------------------------------------------/
#   stg_orders (no deps) -> fct_orders
NODES = {
    "source:shop.reviews": set(),
    "countries": set(),
    "stg_reviews": {"source:shop.reviews"},
    "stg_orders": set(),
    "review_requests": {"stg_reviews"},
    "review_labels": {"review_requests"},
    "fct_summary": {"review_labels", "countries"},
    "fct_orders": {"stg_orders"},
}


def info(name: str, resource_type: str, path: str, tags: list[str], materialized: str | None, fqn: list[str], **config) -> NodeInfo:
    return NodeInfo(name, resource_type, path, tags, materialized, fqn, config)


INFO = {
    "source:shop.reviews": info("source:shop.reviews", "source", "models/sources.yml", [], None, ["demo", "shop", "reviews"]),
    "countries": info("countries", "seed", "seeds/countries.csv", [], None, ["demo", "countries"]),
    "stg_reviews": info("stg_reviews", "model", "models/staging/stg_reviews.sql", ["nightly", "staging"], "view", ["demo", "staging", "stg_reviews"]),
    "stg_orders": info("stg_orders", "model", "models/staging/stg_orders.sql", ["staging"], "table", ["demo", "staging", "stg_orders"]),
    "review_requests": info("review_requests", "model", "models/requests/review_requests.sql", ["nightly"], "batch", ["demo", "requests", "review_requests"], model="gemini-2.5-flash"),
    "review_labels": info("review_labels", "model", "models/marts/review_labels.sql", ["nightly"], "view", ["demo", "marts", "review_labels"]),
    "fct_summary": info("fct_summary", "model", "models/marts/fct_summary.sql", [], "table", ["demo", "marts", "fct_summary"], enabled=True),
    "fct_orders": info("fct_orders", "model", "models/marts/fct_orders.sql", ["daily"], "incremental", ["demo", "marts", "fct_orders"]),
}


@pytest.fixture
def graph() -> Graph:
    return Graph(NODES, INFO)


# ---- structure --------------------------------------------------------------------------------------


def test_topological_order_is_stable_and_respects_dependencies(graph: Graph) -> None:
    order = graph.topological_order()
    assert order == [
        "countries", "source:shop.reviews", "stg_orders", "fct_orders", "stg_reviews",
        "review_requests", "review_labels", "fct_summary",
    ]
    position = {name: i for i, name in enumerate(order)}
    assert all(position[dep] < position[name] for name, deps in NODES.items() for dep in deps)
    assert graph.topological_order({"fct_summary", "stg_reviews"}) == ["stg_reviews", "fct_summary"]
    assert Graph({"b": set(), "a": set(), "c": set()}).topological_order() == ["a", "b", "c"]


def test_upstream_and_downstream_are_transitive_with_optional_depth(graph: Graph) -> None:
    assert graph.upstream("fct_summary") == {"review_labels", "review_requests", "stg_reviews", "source:shop.reviews", "countries"}
    assert graph.upstream("fct_summary", depth=1) == {"review_labels", "countries"}
    assert graph.downstream("stg_reviews") == {"review_requests", "review_labels", "fct_summary"}
    assert graph.downstream("stg_reviews", depth=2) == {"review_requests", "review_labels"}
    assert graph.upstream("stg_orders") == set() and graph.downstream("fct_summary") == set()
    assert len(graph) == 8 and "countries" in graph and "nope" not in graph
    assert graph.cycle() is None


def test_cycle_error_spells_out_the_cycle() -> None:
    # a refs c, c refs b, b refs a: data flows a -> b -> c -> a
    with pytest.raises(CycleError) as exc:
        Graph({"a": {"c"}, "b": {"a"}, "c": {"b"}, "d": {"a"}, "e": set()}, {"a": NodeInfo("a", path="models/a.sql")})
    assert exc.value.cycle == ["a", "b", "c", "a"]
    assert "dependency cycle: a -> b -> c -> a" in str(exc.value)
    assert exc.value.path == "models/a.sql"
    assert isinstance(exc.value, CompileError)


def test_self_reference_and_find_cycle() -> None:
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"z": {"y"}, "y": {"z"}, "a": set()}) == ["y", "z", "y"]
    assert find_cycle(NODES) is None


def test_dependency_on_unknown_node_is_an_error() -> None:
    with pytest.raises(CompileError, match="'a' depends on unknown node 'ghost'"):
        Graph({"a": {"ghost"}})


# ---- selection --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (["stg_reviews"], {"stg_reviews"}),
        (["+review_labels"], {"review_labels", "review_requests", "stg_reviews", "source:shop.reviews"}),
        (["stg_reviews+"], {"stg_reviews", "review_requests", "review_labels", "fct_summary"}),
        (["+review_requests+"], {"source:shop.reviews", "stg_reviews", "review_requests", "review_labels", "fct_summary"}),
        (["+review_labels+"], {"source:shop.reviews", "stg_reviews", "review_requests", "review_labels", "fct_summary"}),  # not countries
        (["1+review_labels"], {"review_labels", "review_requests"}),
        (["2+review_labels"], {"review_labels", "review_requests", "stg_reviews"}),
        (["stg_reviews+1"], {"stg_reviews", "review_requests"}),
        (["1+review_requests+1"], {"stg_reviews", "review_requests", "review_labels"}),
        (["@stg_orders"], {"stg_orders", "fct_orders"}),
        (["@review_labels"], {"review_labels", "fct_summary", "review_requests", "stg_reviews", "source:shop.reviews", "countries"}),
        (["tag:nightly"], {"stg_reviews", "review_requests", "review_labels"}),
        (["tag:dai*"], {"fct_orders"}),
        (["path:models/staging"], {"stg_reviews", "stg_orders"}),
        (["path:models/staging/"], {"stg_reviews", "stg_orders"}),
        (["path:models/marts/fct_orders.sql"], {"fct_orders"}),
        (["models/marts/fct_orders.sql"], {"fct_orders"}),
        (["models/requests"], {"review_requests"}),
        (["path:models/marts/fct_*"], {"fct_summary", "fct_orders"}),
        (["path:models/stag"], set()),  # a folder prefix is whole path components only
        (["path:seeds"], {"countries"}),
        (["config.materialized:batch"], {"review_requests"}),
        (["config.materialized:view"], {"stg_reviews", "review_labels"}),
        (["config.model:gemini-2.5-flash"], {"review_requests"}),
        (["config.model:gemini-*"], set()),  # config values match exactly, as in dbt
        (["config.enabled:true"], {"fct_summary"}),
        (["config.tags:staging"], {"stg_reviews", "stg_orders"}),
        (["resource_type:seed"], {"countries"}),
        (["resource_type:source"], {"source:shop.reviews"}),
        (["source:shop"], {"source:shop.reviews"}),
        (["source:shop.reviews+1"], {"source:shop.reviews", "stg_reviews"}),
        (["source:shop.orders"], set()),
        (["fct_*"], {"fct_summary", "fct_orders"}),
        (["*_requests+"], {"review_requests", "review_labels", "fct_summary"}),
        (["demo.staging"], {"stg_reviews", "stg_orders"}),
        (["fqn:demo.marts.fct_summary"], {"fct_summary"}),
        (["demo"], set(INFO) - {"source:shop.reviews"}),  # the package name: everything in it but sources (dbt)
        (["staging"], {"stg_reviews", "stg_orders"}),  # a bare folder name: the fqn without the package
        (["staging.stg_orders"], {"stg_orders"}),
        (["package:demo"], set(INFO)),
        (["file:fct_orders.sql"], {"fct_orders"}),
        (["file:fct_orders"], {"fct_orders"}),
        (["fct_orders.sql"], {"fct_orders"}),
        (["source:demo.shop.reviews"], {"source:shop.reviews"}),
        (["tag:nightly,config.materialized:view"], {"stg_reviews", "review_labels"}),
        (["tag:nightly,path:models/marts"], {"review_labels"}),
        (["+fct_summary,tag:nightly"], {"stg_reviews", "review_requests", "review_labels"}),
        (["stg_orders fct_orders"], {"stg_orders", "fct_orders"}),
        (["stg_orders", "tag:daily countries"], {"stg_orders", "fct_orders", "countries"}),
        (["tag:nothing"], set()),
        (["nomatch_*"], set()),
    ],
)
def test_select(graph: Graph, select: list[str], expected: set[str]) -> None:
    assert graph.select(select, None) == expected


def test_no_select_means_everything_and_exclude_removes(graph: Graph) -> None:
    assert graph.select(None, None) == set(NODES)
    assert graph.select([], []) == set(NODES)
    assert graph.select(None, ["tag:nightly"]) == set(NODES) - {"stg_reviews", "review_requests", "review_labels"}
    assert graph.select(["stg_reviews+"], ["review_labels+"]) == {"stg_reviews", "review_requests"}
    assert graph.select(["path:models/marts"], ["fct_orders resource_type:seed"]) == {"review_labels", "fct_summary"}
    assert graph.select(["tag:nightly"], ["tag:nightly,config.materialized:batch"]) == {"stg_reviews", "review_labels"}


def test_unknown_plain_name_raises_with_suggestion(graph: Graph) -> None:
    with pytest.raises(ConfigError, match="no node named 'stg_reviws'; did you mean 'stg_reviews'"):
        graph.select(["+stg_reviws"], None)
    with pytest.raises(ConfigError, match="no node named 'fct_sumary'"):
        graph.select(None, ["fct_sumary"])
    with pytest.raises(ConfigError, match="no node named"):
        graph.select(["tag:nightly,stg_reviws"], None)


def test_bad_selector_syntax(graph: Graph) -> None:
    with pytest.raises(ConfigError, match="unknown selector method 'tags'.*did you mean 'tag'"):
        graph.select(["tags:nightly"], None)
    with pytest.raises(ConfigError, match="names no node"):
        graph.select(["+"], None)
    with pytest.raises(ConfigError, match="empty selector"):
        graph.select(["tag:nightly,"], None)


def test_nodes_without_info_still_select_by_name() -> None:
    g = Graph({"a": set(), "b": {"a"}})
    assert g.select(["a+"], None) == {"a", "b"}
    assert g.select(["tag:x"], None) == set()


def test_large_graph_selects_and_orders() -> None:
    n = 2000
    nodes = {f"m_{i:05d}": {f"m_{j:05d}" for j in (i - 1, i // 2, i - 7) if 0 <= j < i} for i in range(n)}
    infos = {
        name: NodeInfo(name, "model", f"models/layer_{i % 6}/{name}.sql", [f"t{i % 3}"], "table", ["p", f"layer_{i % 6}", name])
        for i, name in enumerate(nodes)
    }
    g = Graph(nodes, infos)
    order = g.topological_order()
    position = {name: i for i, name in enumerate(order)}
    assert all(position[dep] < position[name] for name, deps in nodes.items() for dep in deps)
    selected = g.select(["+m_01999", "m_00010+", "tag:t1,path:models/layer_3"], ["m_00005+"])
    children: dict[str, set[str]] = {name: set() for name in nodes}
    for name, deps in nodes.items():
        for dep in deps:
            children[dep].add(name)

    def reach(start: str, edges: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    tagged = {name for i, name in enumerate(nodes) if i % 3 == 1 and i % 6 == 3}
    expected = (reach("m_01999", {k: set(v) for k, v in nodes.items()}) | reach("m_00010", children) | tagged)
    expected -= reach("m_00005", children)
    assert len(g) == n and selected == expected and selected
