"""`batchflow show`: rows of a built model, a batch model's prompt/answer/outcome/tokens side by side,
and a model not built yet through its compiled SELECT with unbuilt upstreams inlined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchflow import api
from batchflow.errors import ConfigError
from tests.conftest import CLI

pytestmark = pytest.mark.e2e


def test_an_unbuilt_model_runs_its_compiled_select(example_project: Path) -> None:
    shown = api.show("stg_reviews", example_project, limit=3)
    assert shown.origin == "compiled" and len(shown.rows) == 3
    assert {"review_id", "product_name", "body"} <= set(shown.columns)  # joined to the seed, loaded for it
    batch = api.show("review_requests", example_project, limit=2)
    assert batch.origin == "compiled" and batch.columns == ["review_id", "prompt", "request"]
    assert all(r["prompt"].startswith("Product: ") for r in batch.rows)
    with pytest.raises(Exception, match="batch model 'review_requests'"):
        api.show("review_labels", example_project)  # needs answers nobody has paid for yet


def test_a_built_batch_model_shows_prompt_answer_outcome_and_tokens(cli: CLI) -> None:
    assert cli("build").exit_code == 0
    shown = api.show("review_requests", cli.project, limit=100)
    assert shown.origin == "batch" and len(shown.rows) == 59
    assert shown.columns[:5] == ["review_id", "prompt", "answer", "outcome", "total_tokens"]
    blocked = next(r for r in shown.rows if r["review_id"] == "R0017")
    assert blocked["outcome"] == "candidate_blocked" and "lyrics" in blocked["prompt"]
    ok = next(r for r in shown.rows if r["outcome"] == "ok")
    assert json.loads(ok["answer"])["sentiment"] in {"positive", "negative", "mixed"} and ok["total_tokens"] > 0

    table = api.show("review_labels", cli.project, limit=4)
    assert table.origin == "table" and len(table.rows) == 4 and "sentiment" in table.columns

    result = cli("show", "-s", "review_requests", "--limit", "2", "--output", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["review_id"] for r in rows] == ["R0001", "R0002"] and "answer" in rows[0]
    pretty = cli("show", "-s", "review_requests", "--limit", "1")
    assert pretty.exit_code == 0 and "prompt" in pretty.output and "R0001" in pretty.output
    assert "1 row(s)" in pretty.output


def test_show_refuses_what_it_cannot_show(cli: CLI) -> None:
    assert cli("show", "-s", "no_such_model").exit_code == 2
    assert cli("show", "-s", "stg_reviews", "--limit", "0").exit_code == 2
    assert cli("show").exit_code == 2  # -s is required
    with pytest.raises(ConfigError, match="source"):
        api.show("source:shop.reviews", cli.project)
