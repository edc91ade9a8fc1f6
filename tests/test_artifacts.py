"""target/manifest.json and target/run_results.json are in dbt's schemas (manifest v12, run results v6):
dbt-artifacts-parser loads them, and batchflow's own fields stay under `batchflow` keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dbt_artifacts_parser.parser import parse_manifest, parse_run_results

from batchflow import api
from batchflow.artifacts import NAMESPACE, batchflow_results, result_statuses, run_results_data
from batchflow.runner import NodeResult


@pytest.fixture
def project(example_project: Path) -> Path:
    return example_project


def test_manifest_is_dbt_v12_with_unique_ids_and_maps(project: Path) -> None:
    api.compile_project(project)
    data = json.loads((project / "target" / "manifest.json").read_text())
    parsed = parse_manifest(data)
    assert type(parsed).__name__ == "ManifestV12"
    assert data["metadata"]["dbt_schema_version"] == "https://schemas.getdbt.com/dbt/manifest/v12.json"
    labels = data["nodes"]["model.reviews_demo.review_labels"]
    assert labels["fqn"] == ["reviews_demo", "marts", "review_labels"]
    assert labels["depends_on"]["nodes"] == ["model.reviews_demo.review_requests"]
    assert labels["meta"][NAMESPACE]["name"] == "review_labels"
    assert labels["meta"][NAMESPACE]["depends_on"] == ["review_requests"]
    assert labels["compiled_code"] and labels["checksum"]["name"] == "sha256"
    assert data["nodes"]["model.reviews_demo.review_requests"]["config"]["materialized"] == "batch"
    assert "source.reviews_demo.shop.reviews" in data["sources"]
    assert data["nodes"]["seed.reviews_demo.products"]["resource_type"] == "seed"
    tests = [u for u, n in data["nodes"].items() if n["resource_type"] == "test"]
    assert "test.reviews_demo.not_null_stg_reviews_review_id" in {u.rsplit(".", 1)[0] for u in tests}
    for empty in ("macros", "docs", "exposures", "metrics", "groups", "semantic_models", "saved_queries"):
        assert data[empty] == {}
    assert data["parent_map"]["model.reviews_demo.review_labels"] == ["model.reviews_demo.review_requests"]
    assert "model.reviews_demo.review_labels" in data["child_map"]["model.reviews_demo.review_requests"]
    assert set(data["parent_map"]) == set(data["child_map"]) == set(data["nodes"]) | set(data["sources"])


def test_run_results_are_dbt_v6_and_keep_batchflow_fields(project: Path) -> None:
    session = api.load(project)
    batch = {"rows_ok": 3, "jobs": [{"state": "JOB_STATE_RUNNING"}]}
    results = [
        NodeResult("stg_reviews", "model", "view", "success", relation="`reviews`.`stg_reviews`", rows=4,
                   started_at="2026-01-01T00:00:00Z", completed_at="2026-01-01T00:00:01Z"),
        NodeResult("review_requests", "model", "batch", "pending", batch=batch),
        NodeResult("review_labels", "model", "table", "error", message="boom"),
        NodeResult("review_topics", "model", "table", "skipped"),
        NodeResult("daily_sentiment", "model", "table", "interrupted"),
        NodeResult("not_null_stg_reviews_review_id", "test", "test", "success", relation="stg_reviews", rows=0),
        NodeResult("unique_stg_reviews_review_id", "test", "test", "error", relation="stg_reviews", rows=2),
    ]
    data = json.loads(json.dumps(run_results_data(session.manifest, "build", results, 1.5, "r1")))
    parsed = parse_run_results(data)
    assert type(parsed).__name__ == "RunResultsV6"
    by_id = {r["unique_id"]: r for r in data["results"]}
    assert by_id["model.reviews_demo.stg_reviews"]["status"] == "success"
    assert by_id["model.reviews_demo.review_requests"]["status"] == "partial success"
    assert by_id["model.reviews_demo.review_labels"]["status"] == "error"
    test_ids = {u.rsplit(".", 1)[0]: r["status"] for u, r in by_id.items() if u.startswith("test.")}
    assert test_ids == {"test.reviews_demo.not_null_stg_reviews_review_id": "pass",
                        "test.reviews_demo.unique_stg_reviews_review_id": "fail"}
    own = batchflow_results(data)
    assert [(r["name"], r["status"]) for r in own][:2] == [("stg_reviews", "success"), ("review_requests", "pending")]
    assert own[1]["batch"] == batch and own[2]["message"] == "boom"
    statuses = result_statuses(data)
    assert statuses["model.reviews_demo.review_requests"] == ("partial success", "pending")


@pytest.mark.e2e
def test_a_real_build_writes_artifacts_the_parser_loads(project: Path, tmp_path: Path) -> None:
    report = api.build(project, select=["stg_reviews+1"], exclude=["resource_type:seed"])
    parse_manifest(json.loads((project / "target" / "manifest.json").read_text()))
    data = json.loads((project / "target" / "run_results.json").read_text())
    parse_run_results(data)
    assert {r["name"] for r in batchflow_results(data)} == {r.name for r in report.results}
    # result: reads it back through --state
    shutil.copytree(project / "target", tmp_path / "state", ignore=shutil.ignore_patterns("*.duckdb*"))
    names = {n.name for n in api.ls(project, select=["result:success"], state=tmp_path / "state")}
    assert "stg_reviews" in names
