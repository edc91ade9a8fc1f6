"""selectors.yml with --selector (and `default: true`), --state for state: and result:, and --defer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from batchflow import api
from batchflow.errors import ConfigError
from batchflow.relation import Relation
from batchflow.selection import apply_defer, load_state

SELECTORS = """selectors:
  - name: llm_and_after
    definition:
      union:
        - method: tag
          value: llm
          children: true
        - exclude:
            - review_topics
  - name: staging_models
    default: true
    definition:
      intersection:
        - "path:models/staging"
        - resource_type: model
  - name: cautious
    definition:
      method: fqn
      value: review_labels
      indirect_selection: empty
  - name: reuse
    definition: {method: selector, value: staging_models}
"""


def names(project: Path, **kw) -> set[str]:
    return {n.name for n in api.ls(project, **kw)}


def test_selectors_yml(example_project: Path) -> None:
    (example_project / "selectors.yml").write_text(SELECTORS)
    after = names(example_project, selector="llm_and_after", resource_type="model")
    assert "review_requests" in after and "review_labels" in after and "review_topics" not in after
    # the default selector, when nothing is selected (each criterion brings the tests of what it selects)
    assert names(example_project) == {"stg_reviews", "not_null_stg_reviews_review_id", "unique_stg_reviews_review_id"}
    assert names(example_project, selector="reuse") == names(example_project)
    assert names(example_project, selector="cautious") == {"review_labels"}  # no tests: indirect_selection empty
    assert "not_null_review_labels_review_id" in names(example_project, select=["review_labels"])
    with pytest.raises(ConfigError, match="no selector named 'staging_model'.*did you mean 'staging_models'"):
        names(example_project, selector="staging_model")


def test_selectors_yml_errors_name_the_line(example_project: Path) -> None:
    (example_project / "selectors.yml").write_text("selectors:\n  - name: x\n    definition:\n      tagg: llm\n")
    with pytest.raises(ConfigError, match="unknown selector method 'tagg'") as exc:
        names(example_project)
    assert exc.value.line == 3 and str(exc.value.path).endswith("selectors.yml")


def test_state_modified_and_result(example_project: Path, tmp_path: Path) -> None:
    api.compile_project(example_project)
    state = tmp_path / "state"
    shutil.copytree(example_project / "target", state, ignore=shutil.ignore_patterns("*.duckdb*", "*.pickle"))
    assert names(example_project, select=["state:modified"], state=state) == set()
    sql = example_project / "models" / "staging" / "stg_reviews.sql"
    sql.write_text(sql.read_text() + "\n-- changed\n")
    assert names(example_project, select=["state:modified"], state=state, resource_type="model") == {"stg_reviews"}
    assert "review_requests" in names(example_project, select=["state:modified+"], state=state)
    results = {"metadata": {}, "results": [{"unique_id": "model.reviews_demo.review_labels", "status": "error",
                                            "adapter_response": {}}]}
    (state / "run_results.json").write_text(json.dumps(results))
    assert names(example_project, select=["result:error+"], state=state, resource_type="model") >= {"review_labels"}
    with pytest.raises(ConfigError, match="needs --state DIR"):
        names(example_project, select=["state:modified"])
    with pytest.raises(ConfigError, match="no manifest.json"):
        names(example_project, select=["state:modified"], state=tmp_path)


def test_defer_points_unbuilt_parents_at_the_state(example_project: Path, tmp_path: Path) -> None:
    session = api.load(example_project)
    state_dir = tmp_path / "prod"
    state_dir.mkdir()
    from batchflow.artifacts import manifest_data

    data = manifest_data(session.manifest, "compile")
    data["nodes"]["model.reviews_demo.stg_reviews"]["schema"] = "prod_reviews"
    (state_dir / "manifest.json").write_text(json.dumps(data, default=str))
    labels_before = session.manifest.nodes["review_requests"].compiled_sql
    deferred = apply_defer(session.manifest, {"review_requests"}, load_state(state_dir), lambda node: False)
    assert deferred == {"stg_reviews": Relation(None, "prod_reviews", "stg_reviews")}
    after = session.manifest.nodes["review_requests"].compiled_sql
    assert after != labels_before and "prod_reviews" in after
    with pytest.raises(ConfigError, match="--defer needs --state"):
        api.run(example_project, select=["review_requests"], defer=True)
