"""Embedding batch models on the local target: the example's `review_embeddings` and `similar_reviews`
built through the lifecycle (build → diff → shard → submit → wait → land) with the mock provider,
reuse on a rerun, and bad input refused before anything is sent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchflow.batch.providers.mock import mock_embedding
from tests.conftest import CLI, write

# these tests build the example's embedding model and its mart
pytestmark = pytest.mark.example_embeddings

SELECT = ("-s", "+review_embeddings+")


def batch_result(cli: CLI, name: str) -> dict:
    return next(r for r in cli.run_results()["results"] if r["name"] == name)


@pytest.mark.e2e
def test_the_example_embeddings_and_similar_reviews_build_and_rerun_reuses(cli: CLI) -> None:
    result = cli("build", *SELECT)
    assert result.exit_code == 0, result.output
    # ref() shows what Vertex users see: predictions and status (and no Gemini `response`)
    columns = [c[0] for c in cli.query("DESCRIBE reviews.review_embeddings")]
    assert columns == ["review_id", "product_id", "request", "predictions", "status", "request_hash", "job_name",
                       "model_name", "attempt"]
    rows = cli.query("SELECT review_id, s.body, e.predictions, e.status FROM reviews.review_embeddings e "
                     "JOIN reviews.stg_reviews s USING (review_id)")
    assert len(rows) == 59
    vectors = {}
    for review_id, body, predictions, status in rows:
        embedding = json.loads(predictions)[0]["embeddings"]
        assert status == "" and embedding["values"] == mock_embedding(body, 256)  # the documented derivation
        vectors[review_id] = embedding["values"]
    report = batch_result(cli, "review_embeddings")["batch"]
    assert report["outcomes"] == {"ok": 59} and report["rows_sent"] == 52  # 7 reviews repeat another's text
    assert report["tokens"]["total"] > 0 and report["tokens"]["candidates"] == 0

    # the mart ranks by cosine similarity, as Python does over the same vectors
    def cosine(a, b):
        return math.fsum(x * y for x, y in zip(a, b)) / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))

    expected = []
    for rid, v in vectors.items():
        near = sorted(((-cosine(v, w), other) for other, w in vectors.items() if other != rid))[:3]
        expected += [(rid, rank, other, round(-s, 6)) for rank, (s, other) in enumerate(near, 1)]
    got = cli.query("SELECT review_id, rank, similar_review_id, similarity FROM reviews.similar_reviews ORDER BY 1, 2")
    assert [g[:3] for g in got] == [e[:3] for e in sorted(expected)]
    assert all(math.isclose(g[3], e[3], abs_tol=2e-6) for g, e in zip(got, sorted(expected)))

    # an unchanged rerun sends nothing; another dimension is another request, sent again
    assert cli("run", "-s", "review_embeddings").exit_code == 0
    again = batch_result(cli, "review_embeddings")["batch"]
    assert again["rows_sent"] == 0 and again["rows_reused"] == 52
    model = cli.project / "models/embeddings/review_embeddings.sql"
    model.write_text(model.read_text().replace("output_dimensionality=256", "output_dimensionality=64"))
    assert cli("run", "-s", "review_embeddings").exit_code == 0
    assert batch_result(cli, "review_embeddings")["batch"]["rows_sent"] == 52
    (predictions,), = cli.query("SELECT predictions FROM reviews.review_embeddings WHERE review_id = 'R0001'")
    assert len(json.loads(predictions)[0]["embeddings"]["values"]) == 64


def embedding_model(project: Path, select: str) -> None:
    write(project, "models/requests/bad_embeddings.sql",
          "{{ config(materialized='batch', model='text-embedding-005', key='review_id') }}\n" + select)


def test_invalid_rows_are_reported_with_their_key_and_nothing_is_sent(example_project: Path) -> None:
    embedding_model(example_project, "select review_id, {{ embedding_request(\"case when review_id in ('R0003', "
                    "'R0007') then '  ' else body end\") }} as request from {{ ref('stg_reviews') }}")
    cli = CLI(example_project)
    result = cli("run", "-s", "+bad_embeddings")
    assert result.exit_code == 1, result.output
    assert "2 invalid request row(s): review_id=R0003: `content` is empty; review_id=R0007: `content` is empty" in result.output
    assert "nothing was submitted" in result.output
    assert batch_result(cli, "bad_embeddings")["status"] == "error"


def test_rows_asking_for_different_parameters_are_refused(example_project: Path) -> None:
    embedding_model(example_project, "select review_id, case when rating > 3 then "
                    "{{ embedding_request('body', output_dimensionality=64) }} else "
                    "{{ embedding_request('body') }} end as request from {{ ref('stg_reviews') }}")
    result = CLI(example_project)("run", "-s", "+bad_embeddings")
    assert result.exit_code == 1, result.output
    assert "rows ask for different embedding parameters" in result.output
    assert "a batch job takes one set" in result.output


def test_a_gemini_request_for_an_embedding_model_is_refused(example_project: Path) -> None:
    embedding_model(example_project, "select review_id, {{ gemini_request('body') }} as request "
                    "from {{ ref('stg_reviews') }}")
    result = CLI(example_project)("run", "-s", "+bad_embeddings")
    assert result.exit_code == 1, result.output
    assert "request has `contents`, a Gemini request" in result.output
