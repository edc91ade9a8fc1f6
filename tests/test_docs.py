"""`batchflow docs`: the catalog of the example project (nodes, columns, tests), column lineage from
sqlglot, the graph layout, the self-contained page, the batch history from the ledger and the
responses store, and `docs serve`."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import pytest

from batchflow import api
from batchflow.docs.catalog import build_catalog, layout
from batchflow.docs.history import summarize_runs
from batchflow.docs.lineage import SchemaBook, trace_model
from batchflow.docs.site import render_page
from batchflow.errors import ConfigError
from batchflow.cost import Price
from batchflow.relation import Relation
from tests.conftest import CLI


def _upstream(catalog: dict, node: str, column: str) -> list[str] | None:
    col = next(c for c in catalog["nodes"][node]["columns"] if c["name"] == column)
    return None if col["upstream"] is None else [f"{u['node']}.{u['column']}" for u in col["upstream"]]


# ---- lineage and the catalog, from the project alone ---------------------------------------------------


def test_column_lineage_of_the_example_follows_every_model(example_project: Path) -> None:
    catalog = build_catalog(api.load(example_project), None)
    nodes = catalog["nodes"]
    assert set(nodes) == set(api.load(example_project).manifest.nodes) >= {
        "source:shop.reviews", "products", "stg_reviews", "review_requests", "review_labels", "daily_sentiment"}
    assert _upstream(catalog, "stg_reviews", "product_name") == ["products.product_name"]  # a join, by alias
    assert _upstream(catalog, "stg_reviews", "rating") == ["source:shop.reviews.rating"]  # through a CAST
    assert sorted(_upstream(catalog, "review_requests", "request")) == ["stg_reviews.body", "stg_reviews.product_name"]
    # a batch model's ref() reads its results: response and status are columns of review_requests
    assert sorted(_upstream(catalog, "review_labels", "outcome")) == ["review_requests.response", "review_requests.status"]
    assert _upstream(catalog, "review_topics", "topic") == ["review_requests.response"]  # through UNNEST
    assert _upstream(catalog, "daily_sentiment", "positive") == ["review_labels.sentiment"]
    assert _upstream(catalog, "daily_sentiment", "review_date") == ["review_labels.created_at"]
    assert _upstream(catalog, "daily_sentiment", "reviews") == []  # COUNT(*): computed from no column
    assert all(n["lineage_error"] is None for n in nodes.values())


def test_catalog_holds_descriptions_columns_tests_and_sql(example_project: Path) -> None:
    catalog = build_catalog(api.load(example_project), None)
    source = catalog["nodes"]["source:shop.reviews"]
    assert source["label"] == "shop.reviews" and source["description"].startswith("One row per product review")
    # columns of the sample file, described from yml
    assert [c["name"] for c in source["columns"]] == ["review_id", "product_id", "rating", "body", "created_at"]
    assert next(c for c in source["columns"] if c["name"] == "body")["description"] == "Review text."
    assert [c["name"] for c in catalog["nodes"]["products"]["columns"]] == ["product_id", "product_name", "category"]
    labels = catalog["nodes"]["review_labels"]
    assert labels["description"].startswith("Sentiment and summary per review")
    assert labels["tests"] == [  # dbt's names, in unique-id order
        "accepted_values_review_labels_outcome__ok__row_error__prompt_blocked__candidate_blocked__truncated",
        "not_null_review_labels_review_id", "unique_review_labels_review_id"]
    assert next(c for c in labels["columns"] if c["name"] == "outcome")["tests"] == ["accepted_values"]
    assert "`reviews`.`review_requests`" in labels["compiled_sql"] and "{{" in labels["raw_sql"]
    batch = catalog["nodes"]["review_requests"]
    assert batch["materialized"] == "batch" and batch["config"]["model"] == "gemini-2.5-flash"
    added = [c["name"] for c in batch["columns"] if c["added_by"] == "batchflow"]
    assert added == ["response", "status", "processed_time", "request_hash", "job_name", "model_name", "attempt"]
    assert batch["batch"] is None and catalog["metadata"]["warehouse"] is False  # no warehouse read
    test = next(t for t in catalog["tests"] if t["kind"] == "accepted_values")
    assert test["node"] == "review_labels" and "'candidate_blocked'" in test["sql"]
    assert len(catalog["tests"]) >= 5


def test_trace_model_expands_stars_follows_ctes_and_reports_what_it_cannot_read() -> None:
    book = SchemaBook([Relation(None, "ds", "a"), Relation(None, "ds", "b")])
    book.add("a", Relation(None, "ds", "a"), {"id": "INT64", "x": "STRING"})
    book.add("b", Relation(None, "ds", "b"), {"id": "INT64", "y": "STRING"})
    found = trace_model("with t as (select id, upper(x) as ux from `ds`.`a`) "
                        "select t.*, b.y, 1 as one from t join `ds`.`b` as b using (id)", book)
    assert found.columns == ["id", "ux", "y", "one"]
    assert [(r.node, r.column) for r in found.upstream["ux"]] == [("a", "x")]
    assert [(r.node, r.column) for r in found.upstream["y"]] == [("b", "y")]
    assert found.upstream["one"] == [] and not found.errors
    broken = trace_model("select from where", book)
    assert "*" in broken.errors and not broken.upstream


def test_layout_puts_every_node_right_of_its_parents(example_project: Path) -> None:
    catalog = build_catalog(api.load(example_project), None)
    placed = {name: i for i, names in enumerate(catalog["layout"]["layers"]) for name in names}
    assert set(placed) == set(catalog["nodes"])
    assert all(placed[a] < placed[b] for a, b in catalog["layout"]["edges"])
    assert placed["daily_sentiment"] == 4 and placed["products"] == placed["source:shop.reviews"] == 0
    # rows follow the parents: a fan-in child sits between the parents it joins
    nodes = {"a": {"depends_on": [], "children": ["x"]}, "b": {"depends_on": [], "children": ["y"]},
             "y": {"depends_on": ["b"], "children": []}, "x": {"depends_on": ["a"], "children": []}}
    assert layout(nodes)["layers"] == [["a", "b"], ["x", "y"]]


def test_the_page_carries_its_script_style_and_data_and_loads_nothing(example_project: Path) -> None:
    catalog = build_catalog(api.load(example_project), None)
    catalog["nodes"]["stg_reviews"]["description"] = "tricky </script><script>alert(1)</script> & more"
    page = render_page(catalog)
    assert page.count("</script>") == 2  # the data element's and the app's: the description cannot end one
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page)  # nothing from a CDN
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="icon" href="data:,">']  # no favicon request either
    assert "fetch(" not in page and "XMLHttpRequest" not in page  # file:// pages cannot load local files
    data = re.search(r'<script type="application/json" id="bf-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["nodes"]["stg_reviews"]["description"].startswith("tricky </script>")


def test_runs_count_reused_answers_tokens_and_cost() -> None:
    jobs = [
        {"job_name": "j1", "run_id": "r1", "created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:05:00",
         "state": "LANDED", "row_count": 10, "successful_count": 9, "failed_count": 1, "missing_count": 0,
         "gemini_model": "gemini-2.5-flash"},
        {"job_name": "j2", "run_id": "r2", "created_at": "2026-01-02T00:00:00", "updated_at": "2026-01-02T00:01:00",
         "state": "LANDED", "row_count": 3, "successful_count": 3, "failed_count": 0, "missing_count": None,
         "gemini_model": "gemini-2.5-flash"},
        {"job_name": None, "run_id": "r2", "created_at": "2026-01-02T00:00:01", "updated_at": "2026-01-02T00:00:01",
         "state": "SUBMITTING", "row_count": 2, "successful_count": 0, "failed_count": 0, "missing_count": None,
         "gemini_model": "gemini-2.5-flash"},
    ]
    landed = [  # j1's failed row was answered again by j2, so j1 keeps 9 stored answers
        {"job_name": "j1", "model_name": "gemini-2.5-flash", "outcome": "ok", "good": True, "n": 9,
         "prompt": 900, "candidates": 90, "thoughts": None, "total": 990},
        {"job_name": "j2", "model_name": "gemini-2.5-flash", "outcome": "ok", "good": True, "n": 2,
         "prompt": 200, "candidates": 20, "thoughts": 5, "total": 225},
        {"job_name": "j2", "model_name": "gemini-2.5-flash", "outcome": "row_error", "good": False, "n": 1,
         "prompt": None, "candidates": None, "thoughts": None, "total": None},
        {"job_name": "gone", "model_name": "m", "outcome": "ok", "good": True, "n": 4, "prompt": 1,
         "candidates": 1, "thoughts": 0, "total": 2},  # its job left the ledger: counted nowhere
    ]
    prices = {"gemini-2.5-flash": Price(0.15, 1.25)}
    r1, r2 = summarize_runs(jobs, landed, prices)
    assert (r1["run_id"], r1["sent"], r1["successful"], r1["failed"], r1["reused"]) == ("r1", 10, 9, 1, 0)
    assert (r2["jobs"], r2["sent"], r2["reused"], r2["states"]) == (2, 5, 9, {"LANDED": 1, "SUBMITTING": 1})
    assert r2["outcomes"] == {"ok": 2, "row_error": 1} and r2["output_tokens"] == 25 and r2["total_tokens"] == 225
    assert r1["cost"] == pytest.approx((900 * 0.15 + 90 * 1.25) / 1e6)
    assert r2["started_at"] == "2026-01-02T00:00:00" and r2["ended_at"] == "2026-01-02T00:01:00"
    assert summarize_runs(jobs, landed, {})[0]["cost"] is None  # no price: no made-up cost


# ---- generate and serve ---------------------------------------------------------------------------------


def test_generate_without_the_warehouse_opens_none(cli: CLI) -> None:
    result = cli("docs", "generate", "--empty-catalog")
    assert result.exit_code == 0, result.output
    manifest = api.load(cli.project).manifest
    batch = sum(n.materialized == "batch" for n in manifest.nodes.values())
    assert "index.html" in result.output and f"{len(manifest.nodes)} nodes" in result.output
    assert f"{batch} batch model(s)" in result.output
    assert (cli.project / "target" / "index.html").is_file()
    assert not (cli.project / "target" / "batchflow.duckdb").exists()


def test_serve_refuses_without_a_site_and_serves_the_page(example_project: Path) -> None:
    with pytest.raises(ConfigError, match="docs generate"):
        api.docs_server(example_project, port=0)
    generated = api.docs_generate(example_project, empty_catalog=True)
    server = api.docs_server(example_project, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=10) as response:
            assert response.status == 200 and response.read() == generated.path.read_bytes()
        with pytest.raises(ConfigError, match="pick another --port"):
            api.docs_server(example_project, port=port)  # taken
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---- with a built local target ------------------------------------------------------------------------------


def add_two_reviews(project: Path) -> None:
    """Append two reviews to the example's source sample, in the file's own line endings."""
    reviews = project / "data" / "reviews.csv"
    data = reviews.read_bytes()
    newline = b"\r\n" if data.endswith(b"\r\n") else b"\n"
    reviews.write_bytes(data + newline.join([b'R0901,P100,4,"A brand new review about laces that fray.",2026-10-20 10:00:00',
                                             b'R0902,P200,2,"Another new review: the lid cracked in a week.",2026-10-21 11:00:00',
                                             b""]))


def _tables(cli: CLI) -> list[tuple]:
    return cli.query("SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2")


@pytest.mark.e2e
def test_built_project_shows_types_built_state_and_two_runs_of_history(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    add_two_reviews(cli.project)  # the second run sends only them
    assert cli("run").exit_code == 0
    before = _tables(cli)

    result = api.docs_generate(cli.project)
    assert _tables(cli) == before  # docs only read the warehouse
    assert result.warehouse and result.columns_untraced == 0
    catalog = json.loads(re.search(r'id="bf-data">(.*?)</script>', result.path.read_text(), re.S).group(1))
    nodes = catalog["nodes"]
    assert nodes["stg_reviews"]["built"] == "view" and nodes["review_labels"]["built"] == "table"
    types = {c["name"]: c["type"] for c in nodes["stg_reviews"]["columns"]}
    assert types["rating"] == "INT64" and types["created_at"] == "TIMESTAMP"

    history = nodes["review_requests"]["batch"]
    first, second = history["runs"]
    assert first["sent"] == 52 and first["reused"] == 0 and first["successful"] == 52  # 59 rows, 52 distinct prompts
    assert second["sent"] == 2 and second["reused"] == 52  # the first run's answers were not paid again
    assert first["started_at"] < second["started_at"]
    assert first["outcomes"] == {"ok": 51, "candidate_blocked": 1} and second["outcomes"] == {"ok": 2}
    assert first["total_tokens"] > 0 and first["cost"] > 0 and second["cost"] > 0
    assert [j["state"] for j in history["jobs"]] == ["LANDED", "LANDED"]
    assert history["outcomes"] == {"candidate_blocked": 1, "ok": 60}  # the model's 61 rows now
