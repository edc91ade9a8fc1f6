"""Embedding batch jobs through the Vertex backend with the real google-genai client against the Vertex
emulator on 127.0.0.1 (contract §3), and the same rows through the local executor with the mock: the
same vectors in the same output shape."""

from __future__ import annotations

import json

import google.oauth2.credentials
import pytest

from batchflow.batch.base import JobSpec, JobState
from batchflow.batch.local import LocalBackend
from batchflow.batch.providers.mock import MockProvider, mock_embedding
from batchflow.batch.vertex import VertexBackend
from batchflow.errors import ExecutionError
from batchflow.relation import Relation
from batchflow.warehouse.duckdb import DuckDBWarehouse
from tests.emulators.vertex import LOCATION, PROJECT, ManualClock, VertexEmulator, vertex_emulator  # noqa: F401

pytestmark = pytest.mark.emulator

MODEL = "text-embedding-005"
TEXTS = ["A good pan.", "Shipping took three weeks.", "Zwei Wörter — ünïcode ✓", "   ", "word " * 2100]


def backend(emu: VertexEmulator) -> VertexBackend:
    return VertexBackend(PROJECT, LOCATION, credentials=google.oauth2.credentials.Credentials(token="test"),
                         base_url=emu.url, poll_interval=0.02, retry_delay=0.01)


def embedding_input(sql, name: str, with_task: bool = True) -> None:
    """Rows `id`, `request_hash`, `content` (and `task_type`), as the lifecycle cuts an embedding shard."""
    values = ", ".join("(%d, 'h%d', '%s')" % (i, i, t.replace("'", "''")) for i, t in enumerate(TEXTS))
    task = ", 'RETRIEVAL_DOCUMENT' AS task_type" if with_task else ""
    sql(f"CREATE OR REPLACE TABLE {name} AS SELECT id, request_hash, content{task} "
        f"FROM (VALUES {values}) AS t(id, request_hash, content)")


def spec(inp: Relation, out: Relation, parameters: dict) -> JobSpec:
    return JobSpec(MODEL, inp, out, "batchflow-emb", {"batchflow_job_key": "emb-1"}, model_parameters=parameters)


def wait(b, name: str, clock: ManualClock, step: float = 0.1, limit: int = 10_000) -> None:
    """Poll the job, moving the emulator's manual clock between polls (no sleeping), until it ends."""
    for _ in range(limit):
        if b.get(name).state.terminal:
            return
        clock.advance(step)
    raise AssertionError(f"job not terminal after {limit * step:.0f} emulated seconds")


def test_an_embedding_job_through_google_genai_and_the_emulator(vertex_emulator: VertexEmulator) -> None:
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    embedding_input(emu.tables.sql, "ds.emb_in")
    b = backend(emu)
    inp, out = Relation(PROJECT, "ds", "emb_in"), Relation(PROJECT, "ds", "emb_out")
    name = b.submit(spec(inp, out, {"outputDimensionality": 16})).name
    create = next(c for c in emu.calls if c.op == "create")
    # the generic batches.create (create_embeddings is Gemini-API only): a publisher model, BigQuery in
    # and out, the parameters once per job as modelParameters
    assert create.body["model"] == "publishers/google/models/text-embedding-005"
    assert create.body["inputConfig"] == {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": inp.bq_uri}}
    assert create.body["outputConfig"]["bigqueryDestination"] == {"outputUri": out.bq_uri}
    assert create.body["modelParameters"] == {"outputDimensionality": 16}
    assert create.body["labels"] == {"batchflow_job_key": "emb-1"}
    wait(b, name, clock)
    status = b.get(name)
    assert status.state is JobState.SUCCEEDED and (status.successful, status.failed) == (4, 1)

    columns = [(c.name, c.type) for c in emu.tables.columns(out.bq_uri)]
    assert columns == [("id", "INT64"), ("request_hash", "STRING"), ("content", "STRING"), ("task_type", "STRING"),
                       ("predictions", "STRING"), ("status", "STRING")]
    rows = sorted(emu.tables.read(out.bq_uri).to_pylist(), key=lambda r: r["id"])
    for row in rows:
        if row["id"] == 3:  # a blank text fails its row
            assert row["predictions"] is None and '"code": 400' in row["status"]
            continue
        (prediction,) = json.loads(row["predictions"])
        assert row["status"] == "" and prediction["embeddings"]["values"] == mock_embedding(row["content"], 16)
    assert json.loads(rows[4]["predictions"])[0]["embeddings"]["statistics"] == {"token_count": 2048, "truncated": True}


def test_the_same_rows_get_the_same_vectors_through_both_backends(vertex_emulator: VertexEmulator, tmp_path) -> None:
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    embedding_input(emu.tables.sql, "ds.emb_in", with_task=False)
    b = backend(emu)
    name = b.submit(spec(Relation(PROJECT, "ds", "emb_in"), Relation(PROJECT, "ds", "emb_out"), {})).name
    wait(b, name, clock)
    remote = {r["id"]: r for r in emu.tables.read(f"bq://{PROJECT}.ds.emb_out").to_pylist()}

    wh = DuckDBWarehouse(tmp_path / "local.duckdb", schema="ds")
    embedding_input(wh.execute, "ds.emb_in", with_task=False)
    local = LocalBackend(wh, MockProvider(), concurrency=2, chunk_size=2)
    job = local.submit(spec(wh.relation("emb_in"), wh.relation("emb_out"), {}))
    assert local.join(job.name, 60).state is JobState.SUCCEEDED
    out = {r["id"]: r for r in wh.query_arrow("SELECT * FROM ds.emb_out").to_pylist()}
    assert [c.name for c in wh.columns(wh.relation("emb_out"))] == ["id", "request_hash", "content", "predictions", "status"]
    assert out.keys() == remote.keys()
    for i, row in out.items():
        theirs = remote[i]
        if theirs["predictions"] is None:
            assert row["predictions"] is None and row["status"].startswith("Bad Request: ")
            continue
        ours = json.loads(row["predictions"])[0]["embeddings"]
        assert ours == json.loads(theirs["predictions"])[0]["embeddings"]  # values, token_count and truncated
        assert len(ours["values"]) == 768
    wh.close()


def test_gcs_only_embedding_models_are_refused_by_the_service(vertex_emulator: VertexEmulator) -> None:
    emu = vertex_emulator
    embedding_input(emu.tables.sql, "ds.emb_in")
    job = JobSpec("gemini-embedding-001", Relation(PROJECT, "ds", "emb_in"), Relation(PROJECT, "ds", "o"), "d",
                  {"batchflow_job_key": "k"}, model_parameters={})
    with pytest.raises(ExecutionError, match="does not support BigQuery input"):
        backend(emu).submit(job)
