"""The BigQuery adapter, with the real google-cloud-bigquery client against local-bigquery on 127.0.0.1.

No mock of the client: every test talks HTTP to the emulator (tests/emulators/bigquery.py). The
SQLMesh-style test wraps `client.query` only to record the SQL it is handed. A module-wide guard
refuses any connection to a host outside the loopback range, so a request meant for Google (e.g. a
Storage Read client the library built on its own) fails loudly instead of leaving the machine.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pyarrow as pa
import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from batchflow.errors import ConfigError, ExecutionError
from batchflow.project import Target
from batchflow.relation import string_literal
from batchflow.requests import request_problem
from batchflow.warehouse.bigquery import BigQueryWarehouse
from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401

LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any name lookup or connection to a non-loopback host (Google's included)."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host is not None and not str(host).startswith(LOOPBACK_PREFIXES):
            raise AssertionError(f"a request tried to leave the machine for {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def wh(bigquery_emulator, bq_dataset):  # noqa: F811
    w = BigQueryWarehouse(
        bigquery_emulator.project,
        bq_dataset,
        "us-central1",
        client=bigquery_emulator.client(),
        job_labels={"team": "data", "run": "r1"},
    )
    w.ensure_schema(bq_dataset)
    yield w
    w.close()


def rows(wh: BigQueryWarehouse, sql: str) -> list[dict]:
    return wh.query_arrow(sql).to_pylist()


# --- DDL / DML -------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_ensure_schema_creates_the_dataset_in_the_location(wh, bigquery_emulator, bq_dataset):  # noqa: F811
    wh.ensure_schema(bq_dataset)  # idempotent
    ds = bigquery_emulator.client().get_dataset(bq_dataset)
    assert ds.dataset_id == bq_dataset
    assert ds.location.lower() == "us-central1"


@pytest.mark.emulator
def test_relation_renders_project_dataset_table(wh, bq_dataset):  # noqa: F811
    rel = wh.relation("t")
    assert rel.render() == f"`test-project`.`{bq_dataset}`.`t`"
    assert wh.relation("t", "other").render() == "`test-project`.`other`.`t`"


@pytest.mark.emulator
def test_create_table_as_replaces_atomically(wh):
    t = wh.relation("t")
    assert wh.kind(t) is None
    assert wh.create_table_as(t, "SELECT x AS id FROM UNNEST([1, 2, 3]) AS x") == 3
    assert wh.kind(t) == "table"
    assert wh.create_table_as(t, "SELECT x AS id, 'new' AS v FROM UNNEST([7, 8]) AS x") == 2
    assert rows(wh, f"SELECT id, v FROM {t.render()} ORDER BY id") == [{"id": 7, "v": "new"}, {"id": 8, "v": "new"}]

    with pytest.raises(ExecutionError, match="boom"):
        wh.create_table_as(t, "SELECT ERROR('boom') AS id")
    with pytest.raises(ExecutionError, match="(?i)unrecognized name|not found|nope"):
        wh.create_table_as(t, "SELECT nope FROM UNNEST([1]) AS x")
    # The failed statements left the previous table exactly as it was.
    assert rows(wh, f"SELECT id, v FROM {t.render()} ORDER BY id") == [{"id": 7, "v": "new"}, {"id": 8, "v": "new"}]


@pytest.mark.emulator
def test_views_replace_tables_and_back(wh):
    base, v = wh.relation("base"), wh.relation("v")
    wh.create_table_as(base, "SELECT x AS id FROM UNNEST([1, 2, 3]) AS x")
    wh.create_view_as(v, f"SELECT id * 10 AS id10 FROM {base.render()}")
    assert wh.kind(v) == "view"
    assert sorted(r["id10"] for r in rows(wh, f"SELECT * FROM {v.render()}")) == [10, 20, 30]
    assert wh.columns(v) == [wh_col("id10", "INT64")]

    wh.create_view_as(v, f"SELECT id FROM {base.render()} WHERE id > 1")  # replace a view
    assert len(rows(wh, f"SELECT * FROM {v.render()}")) == 2

    assert wh.create_table_as(v, "SELECT 1 AS one") == 1  # a view becomes a table
    assert wh.kind(v) == "table"
    wh.create_view_as(v, "SELECT 2 AS two")  # and a table becomes a view again
    assert wh.kind(v) == "view"
    assert rows(wh, f"SELECT * FROM {v.render()}") == [{"two": 2}]

    wh.drop(v)
    wh.drop(v)  # dropping a missing relation is fine
    assert wh.kind(v) is None


def wh_col(name: str, type_: str):
    from batchflow.warehouse.base import Column

    return Column(name, type_)


@pytest.mark.emulator
def test_insert_into_matches_columns_by_name(wh):
    t = wh.relation("t")
    wh.execute(f"CREATE TABLE {t.render()} (id INT64, name STRING, payload JSON, note STRING)")
    inserted = wh.insert_into(
        t, "SELECT PARSE_JSON('{\"k\": 1}') AS payload, 'a' AS name, 1 AS id, 'ignored' AS extra"
        " UNION ALL SELECT PARSE_JSON('[2]'), 'b', 2, 'x'"
    )
    assert inserted == 2
    got = rows(wh, f"SELECT id, name, TO_JSON_STRING(payload) AS p, note FROM {t.render()} ORDER BY id")
    assert got == [
        {"id": 1, "name": "a", "p": '{"k":1}', "note": None},
        {"id": 2, "name": "b", "p": "[2]", "note": None},
    ]
    assert [c.type for c in wh.columns(t)] == ["INT64", "STRING", "JSON", "STRING"]
    with pytest.raises(ExecutionError, match="shares no column"):
        wh.insert_into(t, "SELECT 1 AS unrelated")


@pytest.mark.emulator
def test_merge_into_upserts_and_counts(wh):
    t = wh.relation("t")
    wh.create_table_as(
        t, "SELECT id, CONCAT('old', CAST(id AS STRING)) AS v, PARSE_JSON('{\"n\": 0}') AS doc FROM UNNEST([1, 2]) AS id"
    )
    affected = wh.merge_into(
        t, "SELECT id, 'new' AS v, PARSE_JSON(FORMAT('{\"n\": %d}', id)) AS doc FROM UNNEST([2, 3]) AS id", ["id"]
    )
    assert affected == 2  # one update, one insert
    got = rows(wh, f"SELECT id, v, INT64(doc.n) AS n FROM {t.render()} ORDER BY id")
    assert got == [{"id": 1, "v": "old1", "n": 0}, {"id": 2, "v": "new", "n": 2}, {"id": 3, "v": "new", "n": 3}]
    assert dict((c.name, c.type) for c in wh.columns(t))["doc"] == "JSON"

    # Composite key; a second identical merge updates the same rows and inserts nothing.
    k = wh.relation("k")
    wh.create_table_as(k, "SELECT 'a' AS a, 1 AS b, 0 AS v")
    src = "SELECT 'a' AS a, b, 9 AS v FROM UNNEST([1, 2]) AS b"
    assert wh.merge_into(k, src, ["a", "b"]) == 2
    assert wh.merge_into(k, src, ["a", "b"]) == 2
    assert rows(wh, f"SELECT a, b, v FROM {k.render()} ORDER BY b") == [
        {"a": "a", "b": 1, "v": 9}, {"a": "a", "b": 2, "v": 9}
    ]


@pytest.mark.emulator
def test_kind_and_columns_spell_types_as_bigquery(wh):
    t = wh.relation("types")
    assert wh.kind(t) is None
    with pytest.raises(ExecutionError, match="does not exist"):
        wh.columns(t)
    wh.create_table_as(
        t,
        "SELECT 1 AS i, 1.5 AS f, TRUE AS b, 'x' AS s, PARSE_JSON('{}') AS j, ['a', 'b'] AS tags,"
        " STRUCT(1 AS x, 'y' AS y) AS st, [STRUCT(1 AS x)] AS st_list,"
        " DATETIME '2024-01-02 03:04:05' AS dt, TIMESTAMP '2024-01-02 03:04:05+00' AS ts,"
        " DATE '2024-01-02' AS d, NUMERIC '1.25' AS n, b'ab' AS by",
    )
    assert [(c.name, c.type) for c in wh.columns(t)] == [
        ("i", "INT64"), ("f", "FLOAT64"), ("b", "BOOL"), ("s", "STRING"), ("j", "JSON"),
        ("tags", "ARRAY<STRING>"), ("st", "STRUCT"), ("st_list", "ARRAY<STRUCT>"),
        ("dt", "DATETIME"), ("ts", "TIMESTAMP"), ("d", "DATE"), ("n", "NUMERIC"), ("by", "BYTES"),
    ]


# --- data in and out -------------------------------------------------------------------------------


@pytest.mark.emulator
def test_write_arrow_makes_json_columns(wh, bigquery_emulator, bq_dataset):  # noqa: F811
    schema = pa.schema([
        ("id", pa.int64()), ("request", pa.string()), ("response", pa.string()), ("status", pa.string()),
        ("processed_time", pa.timestamp("us", tz="UTC")), ("score", pa.float64()),
    ])
    batches = [
        pa.record_batch([
            pa.array([1, 2]),
            pa.array(['{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}', '{"a": 0.1}']),
            pa.array(['{"candidates": [{"finishReason": "STOP"}]}', None]),
            pa.array(["", "Bad Request: x"]),
            pa.array([0, 1_000_000], type=pa.timestamp("us", tz="UTC")),
            pa.array([0.5, None]),
        ], schema=schema),
        pa.record_batch([pa.array([3]), pa.array(["[1, 2]"]), pa.array(["{}"]), pa.array([""]),
                         pa.array([None], type=pa.timestamp("us", tz="UTC")), pa.array([1.0])], schema=schema),
    ]
    out = wh.relation("out")
    assert wh.write_arrow(out, iter(batches), schema, json_columns=["request", "response"]) == 3
    types = {c.name: c.type for c in wh.columns(out)}
    assert types == {"id": "INT64", "request": "JSON", "response": "JSON", "status": "STRING",
                     "processed_time": "TIMESTAMP", "score": "FLOAT64"}
    got = rows(wh, f"SELECT id, JSON_VALUE(response, '$.candidates[0].finishReason') AS fr,"
                   f" JSON_TYPE(request) AS rt, FLOAT64(request.a) AS a FROM {out.render()} ORDER BY id")
    assert got == [
        {"id": 1, "fr": "STOP", "rt": "object", "a": None},
        {"id": 2, "fr": None, "rt": "object", "a": 0.1},
        {"id": 3, "fr": None, "rt": "array", "a": None},
    ]
    # The staging table is gone; writing onto an existing relation is refused.
    assert [t.table_id for t in bigquery_emulator.client().list_tables(bq_dataset)] == ["out"]
    with pytest.raises(ExecutionError, match="already exists"):
        wh.write_arrow(out, iter(batches), schema)


@pytest.mark.emulator
def test_write_arrow_with_no_rows(wh):
    schema = pa.schema([("id", pa.int64()), ("request", pa.string())])
    out = wh.relation("empty")
    assert wh.write_arrow(out, iter(()), schema, json_columns=["request"]) == 0
    assert [(c.name, c.type) for c in wh.columns(out)] == [("id", "INT64"), ("request", "JSON")]


@pytest.mark.emulator
def test_load_csv_replaces_the_table(wh, tmp_path):
    path = tmp_path / "seed.csv"
    path.write_text("id,name,created_at\n1,apple,2024-01-01 10:00:00\n2,pear,2024-01-02 11:00:00\n3,fig,2024-01-03 12:00:00\n")
    t = wh.relation("seed")
    assert wh.load_csv(t, path) == 3
    cols = [(c.name, c.type) for c in wh.columns(t)]
    assert cols[:2] == [("id", "INT64"), ("name", "STRING")]
    # BigQuery's autodetect says TIMESTAMP; the emulator (DuckDB's CSV sniffer) says DATETIME.
    assert cols[2] in (("created_at", "TIMESTAMP"), ("created_at", "DATETIME"))
    path.write_text("id,name,created_at\n9,kiwi,2024-02-01 00:00:00\n")
    assert wh.load_csv(t, path) == 1  # WRITE_TRUNCATE, not append
    assert rows(wh, f"SELECT id, name FROM {t.render()}") == [{"id": 9, "name": "kiwi"}]


@pytest.mark.emulator
def test_iter_batches_streams_many_rows_in_batches(wh):
    batches = list(wh.iter_batches("SELECT x, CONCAT('row', CAST(x AS STRING)) AS s FROM UNNEST(GENERATE_ARRAY(1, 25000)) AS x",
                                   batch_size=10_000))
    assert len(batches) >= 3
    assert all(0 < b.num_rows <= 10_000 for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 25_000
    assert sorted(table.column("x").to_pylist()) == list(range(1, 25_001))
    assert table.schema.names == ["x", "s"]


@pytest.mark.emulator
def test_query_arrow_reads_json_and_nested_values(wh):
    table = wh.query_arrow("SELECT PARSE_JSON('{\"a\": [1, 2]}') AS j, [1, 2] AS arr, STRUCT('v' AS k) AS st")
    row = table.to_pylist()[0]
    assert json.loads(row["j"]) == {"a": [1, 2]}
    assert row["arr"] == [1, 2] and row["st"] == {"k": "v"}


# --- request SQL -----------------------------------------------------------------------------------

GOOD = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
REQUESTS = [
    GOOD,
    {"contents": [{"role": "user", "parts": {"text": "legacy single part"}}], "generationConfig": {"temperature": 0.1}},
    {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "b"}]},
                  {"role": "user", "parts": [{"text": "c"}]}]},
    None,
    "not json at all",
    [1, 2],
    "just a string",
    {},
    {"contents": None},
    {"contents": {"role": "user"}},
    {"contents": []},
    {"contents": [1]},
    {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"parts": [{"text": "b"}]}]},
    {"contents": [{"role": "system", "parts": [{"text": "a"}]}]},
    {"contents": [{"role": 1, "parts": [{"text": "a"}]}]},
    {"contents": [{"role": None, "parts": [{"text": "a"}]}]},
    {"contents": [{"role": "user"}]},
    {"contents": [{"role": "user", "parts": []}]},
    {"contents": [{"role": "user", "parts": {}}]},
    {"contents": [{"role": "user", "parts": "text"}]},
    {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "b"}]},
                  {"role": "user", "parts": None}]},
]


def request_text(value) -> str | None:
    """The STRING column value: JSON text, or the raw string for the 'not JSON' cases."""
    if value is None or value == "not json at all":
        return value
    return json.dumps(value)


def load_requests(wh: BigQueryWarehouse):
    """Two tables of the same requests: `request` typed STRING and typed JSON."""
    structs = ", ".join(
        f"STRUCT({i} AS id, {string_literal(request_text(r))} AS request)" for i, r in enumerate(REQUESTS)
    )
    as_string, as_json = wh.relation("req_string"), wh.relation("req_json")
    wh.create_table_as(as_string, f"SELECT * FROM UNNEST([{structs}])")
    wh.create_table_as(as_json, f"SELECT id, SAFE.PARSE_JSON(request) AS request FROM {as_string.render()}")
    assert dict((c.name, c.type) for c in wh.columns(as_json))["request"] == "JSON"
    return as_string, as_json


def _index(message: str | None) -> str | None:
    m = re.search(r"contents\[(\d+)\]", message or "")
    return m.group(1) if m else None


@pytest.mark.emulator
def test_request_problem_sql_agrees_with_python(wh):
    as_string, as_json = load_requests(wh)
    for rel in (as_string, as_json):
        got = {r["id"]: r["problem"] for r in rows(
            wh, f"SELECT id, {wh.request_problem_sql('request')} AS problem FROM {rel.render()} ORDER BY id")}
        assert len(got) == len(REQUESTS)
        for i, value in enumerate(REQUESTS):
            text = request_text(value)
            if rel is as_json and text == "not json at all":
                text = None  # SAFE.PARSE_JSON made it NULL in the JSON table
            expected = request_problem(text)
            assert (got[i] is None) == (expected is None), (i, value, got[i], expected)
            assert _index(got[i]) == _index(expected), (i, got[i], expected)
            if expected is not None and expected.startswith("request is not valid JSON"):
                assert got[i] == "request is not valid JSON"
            else:
                assert got[i] == expected, (i, value)
    # The three valid requests, nothing else.
    assert [i for i, r in enumerate(REQUESTS) if request_problem(request_text(r)) is None] == [0, 1, 2]


@pytest.mark.emulator
def test_request_hash_sql_is_deterministic_and_model_specific(wh):
    as_string, as_json = load_requests(wh)
    text = json.dumps(GOOD)
    spaced = json.dumps(GOOD, indent=2)
    h = rows(wh, (
        f"SELECT {wh.request_hash_sql(string_literal(text), 'gemini-2.5-flash')} AS a,"
        f" {wh.request_hash_sql(string_literal(text), 'gemini-2.5-flash')} AS a2,"
        f" {wh.request_hash_sql(string_literal(spaced), 'gemini-2.5-flash')} AS spaced,"
        f" {wh.request_hash_sql(f'PARSE_JSON({string_literal(text)})', 'gemini-2.5-flash')} AS as_json,"
        f" {wh.request_hash_sql(string_literal(text), 'gemini-2.5-pro')} AS other_model,"
        f" {wh.request_hash_sql('CAST(NULL AS STRING)', 'gemini-2.5-flash')} AS null_request,"
        f" {wh.request_hash_sql(string_literal('not json'), 'gemini-2.5-flash')} AS bad_request"
    ))[0]
    assert re.fullmatch(r"[0-9a-f]{64}", h["a"])
    assert h["a"] == h["a2"] == h["spaced"] == h["as_json"]  # whitespace and column type don't matter
    assert h["other_model"] != h["a"]
    assert h["null_request"] is None and h["bad_request"] is None
    # A model name with quotes and backslashes is a literal, not SQL.
    odd = rows(wh, f"SELECT {wh.request_hash_sql(string_literal(text), 'it' + chr(39) + 's' + chr(92))} AS h")[0]["h"]
    assert re.fullmatch(r"[0-9a-f]{64}", odd) and odd != h["a"]
    # Same per-row hashes whether the column is STRING or JSON.
    sql = "SELECT id, {h} AS h FROM {t} WHERE id < 3 ORDER BY id"
    by_string = rows(wh, sql.format(h=wh.request_hash_sql("request", "m"), t=as_string.render()))
    by_json = rows(wh, sql.format(h=wh.request_hash_sql("request", "m"), t=as_json.render()))
    assert by_string == by_json and len({r["h"] for r in by_string}) == 3


# --- dry run, labels, no Google traffic ---------------------------------------------------------------


@pytest.mark.emulator
def test_dry_run_returns_schema_and_raises_on_bad_sql(wh):
    t = wh.relation("t")
    wh.create_table_as(t, "SELECT 1 AS id, PARSE_JSON('{}') AS doc")
    bytes_processed, cols = wh.dry_run(f"SELECT id, doc, ['a'] AS tags FROM {t.render()}")
    assert bytes_processed >= 0  # the emulator reports 0; BigQuery reports the real estimate
    assert [(c.name, c.type) for c in cols] == [("id", "INT64"), ("doc", "JSON"), ("tags", "ARRAY<STRING>")]
    assert rows(wh, f"SELECT COUNT(*) AS n FROM {t.render()}") == [{"n": 1}]
    with pytest.raises(ExecutionError, match="no_such_column"):
        wh.dry_run(f"SELECT no_such_column FROM {t.render()}")
    with pytest.raises(ExecutionError, match="BigQuery"):
        wh.dry_run("SELEC 1")


@pytest.mark.emulator
def test_query_jobs_carry_labels(wh):
    jobs = []
    real_query = wh.client.query

    def recording_query(sql, *args, **kwargs):
        job = real_query(sql, *args, **kwargs)
        jobs.append(job)
        return job

    wh.client.query = recording_query
    wh.execute("SELECT 1")
    wh.create_table_as(wh.relation("t"), "SELECT 1 AS id")
    assert jobs
    expected = {"team": "data", "run": "r1", "batchflow": "true"}
    for job in jobs:
        assert job.labels == expected  # what the client sent with the job
        fetched = wh.client.get_job(job.job_id)
        assert fetched.labels == expected  # what the server recorded
    assert wh.job_config().labels == expected


@pytest.mark.emulator
def test_downloads_never_build_their_own_storage_client(wh, bigquery_emulator, bq_dataset, monkeypatch):  # noqa: F811
    """`to_arrow` gets create_bqstorage_client=False, or exactly the injected client."""
    calls = []
    depth = [0]  # to_arrow calls to_arrow_iterable itself: record only the adapter's own calls
    real_to_arrow = bigquery.table.RowIterator.to_arrow
    real_iterable = bigquery.table.RowIterator.to_arrow_iterable

    def to_arrow(self, *args, **kwargs):
        calls.append(("to_arrow", kwargs.get("bqstorage_client"), kwargs.get("create_bqstorage_client", True)))
        kwargs["bqstorage_client"] = None  # the sentinel cannot read; the emulator answers over REST
        depth[0] += 1
        try:
            return real_to_arrow(self, *args, **kwargs)
        finally:
            depth[0] -= 1

    def to_arrow_iterable(self, *args, **kwargs):
        if not depth[0]:
            calls.append(("to_arrow_iterable", kwargs.get("bqstorage_client"), None))
        kwargs["bqstorage_client"] = None
        return real_iterable(self, *args, **kwargs)

    monkeypatch.setattr(bigquery.table.RowIterator, "to_arrow", to_arrow)
    monkeypatch.setattr(bigquery.table.RowIterator, "to_arrow_iterable", to_arrow_iterable)

    assert wh.bqstorage_client is None
    wh.query_arrow("SELECT 1 AS x")
    list(wh.iter_batches("SELECT 1 AS x"))
    assert calls == [("to_arrow", None, False), ("to_arrow_iterable", None, None)]

    sentinel = object()
    injected = BigQueryWarehouse(bigquery_emulator.project, bq_dataset, "us-central1",
                                 client=bigquery_emulator.client(), bqstorage_client=sentinel)
    calls.clear()
    assert injected.query_arrow("SELECT 2 AS x").to_pylist() == [{"x": 2}]
    assert [r for b in injected.iter_batches("SELECT 3 AS x") for r in b.to_pylist()] == [{"x": 3}]
    assert calls == [("to_arrow", sentinel, False), ("to_arrow_iterable", sentinel, None)]

    # Asking for the Storage API against an emulator without handing over a client is refused.
    with pytest.raises(ConfigError, match="bqstorage_client"):
        BigQueryWarehouse("test-project", bq_dataset, "us-central1", api_endpoint=bigquery_emulator.endpoint,
                          use_storage_api=True)


@pytest.mark.emulator
def test_emitted_sql_is_exact(wh, bq_dataset):  # noqa: F811
    """SQLMesh style: record the statements the adapter hands to the client."""
    sent: list[str] = []
    real_query = wh.client.query
    wh.client.query = lambda sql, *a, **kw: (sent.append(sql), real_query(sql, *a, **kw))[1]

    t = wh.relation("t")
    wh.create_table_as(t, "SELECT 1 AS id, 'a' AS v")
    wh.merge_into(t, "SELECT 1 AS id, 'b' AS v", ["id"])
    name = f"`test-project`.`{bq_dataset}`.`t`"
    assert sent[0] == f"CREATE OR REPLACE TABLE {name} AS SELECT 1 AS id, 'a' AS v"
    assert sent[-1] == (
        f"MERGE {name} T USING (SELECT 1 AS id, 'b' AS v) S ON T.`id` = S.`id` "
        "WHEN MATCHED THEN UPDATE SET `v` = S.`v` "
        "WHEN NOT MATCHED THEN INSERT (`id`, `v`) VALUES (S.`id`, S.`v`)"
    )
    assert wh.merge_sql(t, "SELECT 1", ["a", "b"], ["a", "b"]) == (
        f"MERGE {name} T USING (SELECT 1) S ON T.`a` = S.`a` AND T.`b` = S.`b` "
        "WHEN NOT MATCHED THEN INSERT (`a`, `b`) VALUES (S.`a`, S.`b`)"
    )
    sent.clear()
    wh.insert_into(t, "SELECT 'c' AS v, 2 AS id")
    assert sent[-1] == f"INSERT INTO {name} (`id`, `v`) SELECT `id`, `v` FROM (SELECT 'c' AS v, 2 AS id)"


@pytest.mark.emulator
def test_api_errors_become_execution_errors(wh):
    with pytest.raises(ExecutionError, match="Unrecognized name|not found|missing") as info:
        wh.execute(f"SELECT missing FROM {wh.relation('nope').render()}")
    assert isinstance(info.value.__cause__, gexc.GoogleAPIError)
    assert "http://" not in str(info.value)  # BigQuery's message, not the client's URL dump


# --- locations --------------------------------------------------------------------------------------


class _NoClient:
    """Stands in for a client that must not be used at all."""

    project = "p"

    def __getattr__(self, name):
        raise AssertionError(f"the client was used ({name})")


@pytest.mark.parametrize("location", [None, "", "US", "us", "EU", "eu", "global", "GLOBAL"])
def test_check_batch_location_refuses_non_regions(location):
    wh = BigQueryWarehouse("p", "ds", location, client=_NoClient())
    with pytest.raises(ConfigError) as info:
        wh.check_batch_location()
    message = str(info.value)
    assert "us-central1" in message
    assert "region" in message


@pytest.mark.emulator
def test_check_batch_location_looks_at_the_dataset(bigquery_emulator, bq_dataset):  # noqa: F811
    client = bigquery_emulator.client()
    regional = BigQueryWarehouse("test-project", bq_dataset, "us-central1", client=client)
    regional.check_batch_location()  # dataset missing: it will be created in us-central1
    regional.ensure_schema(bq_dataset)
    regional.check_batch_location()

    multi = f"{bq_dataset}_us"
    ds = bigquery.Dataset(bigquery.DatasetReference("test-project", multi))
    ds.location = "US"
    client.create_dataset(ds)
    try:
        with pytest.raises(ConfigError, match=r"multi-region US.*region"):
            BigQueryWarehouse("test-project", multi, "us-central1", client=client).check_batch_location()
        with pytest.raises(ConfigError, match="europe-west4"):
            BigQueryWarehouse("test-project", bq_dataset, "europe-west4", client=client).check_batch_location()
    finally:
        client.delete_dataset(multi, delete_contents=True, not_found_ok=True)


# --- construction -----------------------------------------------------------------------------------


@pytest.mark.emulator
def test_from_target_reads_the_profile(bigquery_emulator, bq_dataset):  # noqa: F811
    target = Target(
        name="emu", profile="p", type="bigquery", schema=bq_dataset, database="test-project",
        settings={"type": "bigquery", "method": "none", "project": "test-project", "dataset": bq_dataset,
                  "location": "us-central1", "api_endpoint": bigquery_emulator.endpoint, "labels": {"env": "ci"}},
    )
    wh = BigQueryWarehouse.from_target(target)
    assert wh.name == "bigquery"
    assert (wh.project, wh.dataset, wh.location) == ("test-project", bq_dataset, "us-central1")
    assert wh.job_labels == {"env": "ci", "batchflow": "true"}
    assert wh.bqstorage_client is None
    wh.ensure_schema(bq_dataset)
    assert wh.query_arrow("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]
    wh.close()


def test_from_target_rejects_bad_auth_settings(tmp_path):
    base = {"type": "bigquery", "project": "p", "dataset": "d", "location": "us-central1"}
    for settings, match in [
        ({**base, "method": "service-account"}, "keyfile"),
        ({**base, "method": "token"}, "oauth, service-account"),
        ({**base, "method": "service-account", "keyfile": str(tmp_path / "missing.json")}, "keyfile"),
        ({**base, "labels": ["x"]}, "labels"),
    ]:
        target = Target(name="t", profile="p", type="bigquery", schema="d", database="p", settings=settings)
        with pytest.raises(ConfigError, match=match):
            BigQueryWarehouse.from_target(target)


# --- the flatten macros on the emulator -------------------------------------------------------------

# Macros the emulator (DuckDB underneath) cannot run as BigQuery does; empty means it runs them all.
EMULATOR_MACRO_GAPS: set[str] = set()


@pytest.mark.emulator
def test_flatten_macros_match_duckdb_on_seed_rows(wh):
    import duckdb

    from batchflow.warehouse.duckdb_functions import install
    from tests import test_macros as tm

    conn = duckdb.connect()
    install(conn)
    expected = tm.flatten(conn, [(r["response"], r["status"]) for r in tm.SEED_ROWS], "JSON")
    conn.close()

    structs = ", ".join(
        f"STRUCT({i} AS id, {string_literal(json.dumps(r['response']))} AS response, {string_literal(r['status'])} AS status)"
        for i, r in enumerate(tm.SEED_ROWS)
    )
    for response_type, cast in (("JSON", "PARSE_JSON(response)"), ("STRING", "response")):
        wh.create_table_as(wh.relation("cases"), f"SELECT id, {cast} AS response, status FROM UNNEST([{structs}])")
        columns = re.findall(r"^\s*(\{\{.*\}\}) as (\w+),?$", tm.FLATTEN, re.M)
        assert len(columns) > 10
        failed: dict[str, str] = {}
        try:  # all macros in one query; only when that fails, one query per macro to name the culprits
            got = rows(wh, tm.bigquery(tm.FLATTEN.replace("from cases", f"from {wh.relation('cases').render()}")))
        except ExecutionError:
            got = [{"id": w["id"]} for w in expected]
            for macro, alias in columns:
                sql = tm.bigquery(f"select id, {macro} as {alias} from {wh.relation('cases').render()} order by id")
                try:
                    for row, one in zip(got, rows(wh, sql)):
                        row[alias] = one[alias]
                except ExecutionError as exc:
                    failed[alias] = str(exc)
        if "finish_reason" not in failed:
            assert [r["finish_reason"] for r in got] == ["STOP", "RECITATION"]
        if "outcome" not in failed:
            assert [r["outcome"] for r in got] == ["ok", "candidate_blocked"]
        for row, want in zip(got, expected, strict=True):
            for _, alias in columns:
                if alias not in failed:
                    assert _normal(row[alias]) == _normal(want[alias]), (response_type, alias, row[alias], want[alias])
        assert set(failed) == EMULATOR_MACRO_GAPS, (response_type, failed)


def _normal(value):
    """Compare floats approximately and struct lists as plain dicts."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


# --- the emulator's own setup ------------------------------------------------------------------------


def test_emulator_setup_fails_clearly_without_python_313(tmp_path, monkeypatch):
    """No marker → a build is needed; without Python 3.13 it stops with a message, leaving no marker."""
    from tests.emulators import bigquery as emu

    def missing():
        raise emu.EmulatorSetupError("the BigQuery emulator needs Python 3.13 (local-bigquery requires it)")

    monkeypatch.setattr(emu, "python313", missing)
    with pytest.raises(emu.EmulatorSetupError, match="Python 3.13"):
        emu.ensure_emulator_venv(tmp_path)
    assert not (tmp_path / ".emulators" / "bq-venv" / ".batchflow-ready").exists()
    assert (tmp_path / ".emulators" / "bq-venv.lock").exists()
