"""The Vertex batch emulator itself, driven by the real google-genai client: output shape (contract
§2.2-§2.4), output-row knobs per terminal state, cancel of a finished job, hooks, and its
independence from batchflow (a bug shared by both sides would otherwise be invisible)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from google.genai import errors

from tests.emulators.bigquery import BigQueryEmulator, bigquery_emulator, bq_dataset  # noqa: F401
from tests.emulators.tables import BigQueryTables
from tests.emulators.vertex import PROJECT, VertexEmulator, vertex_emulator  # noqa: F401

pytestmark = pytest.mark.emulator

MODEL = "gemini-2.5-flash"
EMULATORS = Path(__file__).parent / "emulators"
SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "sentiment": {"type": "STRING", "enum": ["positive", "negative", "mixed"]},
        "topics": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["quality", "price"]}},
        "score": {"type": "INTEGER", "minimum": 1, "maximum": 5},
        "sarcastic": {"type": "BOOLEAN"},
        "summary": {"type": "STRING"},
    },
    "required": ["sentiment", "topics", "summary"],
}
STATUS = re.compile(r'^(?P<reason>[A-Z][A-Za-z ]+): (?P<body>\{"error": \{.*\}\})$')


def user(text: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


REQUESTS = [
    json.dumps(user("Plain text question one")),
    json.dumps({**user("JSON mode, camelCase"),
                "generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}}),
    json.dumps({**user("JSON mode, snake_case"), "system_instruction": {"parts": [{"text": "Be brief."}]},
                "generation_config": {"response_mime_type": "application/json", "response_schema": SCHEMA}}),
    "{not json",
    json.dumps({"contents": [{"parts": [{"text": "no role here"}]}]}),
    json.dumps(user("please recite the lyrics")),
    json.dumps(user("busy 1")),
    json.dumps(user("busy 2")),
    json.dumps(user("blocked prompt")),
]


def uri(table: str) -> str:
    return f"bq://{PROJECT}.ds.{table}"


def make_input(emu: VertexEmulator, name: str = "inp", n: int = 6) -> None:
    """`ds.<name>`: id, created_at (TIMESTAMP), request (JSON) for rows 1..n, in id order."""
    emu.tables.sql(
        f"""create or replace table ds.{name} as
        select i as id, timestamptz '2026-01-01 00:00:00+00' + to_hours(i) as created_at,
               json_object('contents', json_array(json_object('role', 'user',
                   'parts', json_array(json_object('text', 'Row ' || i))))) as request
        from range(1, {n} + 1) as t(i) order by i"""
    )


def create(emu: VertexEmulator, sdk, name: str = "inp", out: str = "out"):
    return sdk.batches.create(model=MODEL, src=uri(name), config={"dest": uri(out), "display_name": out})


def out_rows(emu: VertexEmulator, table: str = "out") -> list[dict]:
    return emu.tables.read(uri(table)).to_pylist()


def stats(job) -> tuple[int, int, int] | None:
    s = job.completion_stats
    if s is None:
        return None
    return (s.successful_count or 0, s.failed_count or 0, s.incomplete_count or 0)


# -- independence ------------------------------------------------------------------------------------
def test_the_emulators_import_nothing_from_batchflow():
    for path in sorted(EMULATORS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            assert not [n for n in names if n.split(".")[0] == "batchflow"], f"{path.name}:{node.lineno} imports {names}"
    # and at run time: loading the emulators pulls no batchflow module in
    code = ("import sys, tests.emulators.vertex, tests.emulators.tables, tests.emulators.gemini; "
            "print([m for m in sys.modules if m.split('.')[0] == 'batchflow'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=EMULATORS.parents[1]).stdout
    assert out.strip() == "[]"


# -- output shape ------------------------------------------------------------------------------------
def test_output_table_has_vertex_columns_and_answers(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    emu.row_rules = [
        {"when_prompt_contains": "lyrics", "outcome": "recitation"},
        {"when_prompt_contains": "busy", "outcome": "transient_error", "limit": 1},
        {"when_prompt_contains": "blocked prompt", "outcome": "prompt_blocked"},
    ]
    values = ", ".join(f"({i}, 'note {i}', ?)" for i in range(len(REQUESTS)))
    emu.tables.sql(f"create table ds.inp as select * from (values {values}) as t(id, note, request)", REQUESTS)
    sdk = emu.client()
    job = create(emu, sdk)
    clock.advance(0.2 + 0.2)
    job = sdk.batches.get(name=job.name)
    assert job.state.value == "JOB_STATE_SUCCEEDED"
    assert stats(job) == (6, 3, 0)  # blocked rows are successful calls; invalid and 429 rows failed

    cols = [(c.name, c.type) for c in emu.tables.columns(uri("out"))]
    assert cols == [("id", "INT64"), ("note", "STRING"), ("request", "STRING"),
                    ("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP")]
    rows = {r["id"]: r for r in out_rows(emu)}
    assert [rows[i]["request"] for i in range(len(REQUESTS))] == REQUESTS  # copied unchanged
    assert all(r["processed_time"].tzinfo is not None for r in rows.values())

    text = json.loads(rows[0]["response"])
    candidate = text["candidates"][0]
    assert rows[0]["status"] == "" and candidate["finishReason"] == "STOP"
    assert candidate["content"]["role"] == "model" and candidate["content"]["parts"][0]["text"]
    assert {r["category"] for r in candidate["safetyRatings"]} >= {"HARM_CATEGORY_HATE_SPEECH"}
    usage = text["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert text["modelVersion"] == MODEL and text["responseId"] and text["createTime"].endswith("Z")

    for i in (1, 2):  # JSON mode in either key casing: the text fits the schema
        answer = json.loads(json.loads(rows[i]["response"])["candidates"][0]["content"]["parts"][0]["text"])
        assert set(answer) == set(SCHEMA["properties"])
        assert answer["sentiment"] in ("positive", "negative", "mixed")
        assert len(answer["topics"]) == 1 and answer["topics"][0] in ("quality", "price")
        assert isinstance(answer["summary"], str) and 1 <= answer["score"] <= 5
        assert isinstance(answer["sarcastic"], bool)

    def error(i: int) -> tuple[str, dict]:
        m = STATUS.match(rows[i]["status"])
        assert m and rows[i]["response"] is None, rows[i]
        return m["reason"], json.loads(m["body"])["error"]

    reason, err = error(3)  # not JSON
    assert (reason, err["code"], err["status"]) == ("Bad Request", 400, "INVALID_ARGUMENT")
    reason, err = error(4)  # a contents item without role
    assert (reason, err["code"], err["message"]) == ("Bad Request", 400, "Please use a valid role: user, model.")
    reason, err = error(6)  # the rule's limit: only the first busy row fails
    assert (reason, err["code"], err["status"]) == ("Too Many Requests", 429, "RESOURCE_EXHAUSTED")
    assert rows[7]["status"] == ""

    recitation = json.loads(rows[5]["response"])["candidates"][0]
    assert rows[5]["status"] == "" and recitation["finishReason"] == "RECITATION"
    assert "content" not in recitation and recitation["citationMetadata"]["citations"]
    blocked = json.loads(rows[8]["response"])
    assert rows[8]["status"] == "" and "candidates" not in blocked and blocked["promptFeedback"]["blockReason"]

    # emu.answers is the record of exactly what was written
    assert {a.row["id"]: (a.response, a.status) for a in emu.answers} == {
        i: (json.loads(r["response"]) if r["response"] else None, r["status"]) for i, r in rows.items()}
    assert {a.row["id"]: a.outcome for a in emu.answers}[5] == "recitation"


def test_answers_are_deterministic_across_jobs(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu, n=3)
    sdk = emu.client()
    create(emu, sdk, out="a")
    clock.advance(1)
    create(emu, sdk, out="b")
    clock.advance(1)

    def texts(table: str) -> list:
        return [json.loads(r["response"])["candidates"] for r in out_rows(emu, table)]

    assert texts("a") == texts("b") and len(set(json.dumps(t) for t in texts("a"))) == 3


def test_output_table_on_bigquery(bigquery_emulator: BigQueryEmulator, bq_dataset: str):  # noqa: F811
    client = bigquery_emulator.client()
    try:
        client.create_dataset(bq_dataset)
        client.query(
            f"create table `{bq_dataset}`.inp as select 1 as id, timestamp '2026-01-01 00:00:00+00' as created_at, "
            f"parse_json('{json.dumps(user('hello there'))}') as request").result()
        emu = VertexEmulator(client).start()
        try:
            clock = emu.use_manual_clock()
            sdk = emu.client()
            src, dest = f"bq://{PROJECT}.{bq_dataset}.inp", f"bq://{PROJECT}.{bq_dataset}.out"
            job = sdk.batches.create(model=MODEL, src=src, config={"dest": dest, "display_name": "bq"})
            clock.advance(1)
            assert sdk.batches.get(name=job.name).state.value == "JOB_STATE_SUCCEEDED"
        finally:
            emu.stop()
        cols = [(c.name, c.type) for c in BigQueryTables(client).columns(dest)]
        assert cols == [("id", "INT64"), ("created_at", "TIMESTAMP"), ("request", "JSON"),
                        ("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP")]
        row = client.query(
            f"select json_value(response, '$.candidates[0].finishReason') as finish, json_type(response) as kind, "
            f"status, json_value(request, '$.contents[0].parts[0].text') as prompt from `{bq_dataset}`.out").result()
        assert [tuple(r.values()) for r in row] == [("STOP", "object", "", "hello there")]
    finally:
        client.close()


# -- output rows per terminal state ------------------------------------------------------------------
@pytest.mark.parametrize("outcome, knob, written", [
    ("SUCCEEDED", None, 6), ("SUCCEEDED", 2, 2),
    ("PARTIALLY_SUCCEEDED", None, 4), ("PARTIALLY_SUCCEEDED", 5, 5),
    ("FAILED", None, None), ("FAILED", 2, 2),
    ("EXPIRED", None, None), ("EXPIRED", 3, 3),
    ("CANCELLED", None, 3), ("CANCELLED", 0, 0),
    ("SUCCEEDED", 99, 6),
])
def test_output_rows_per_terminal_state(vertex_emulator, outcome, knob, written):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu, n=6)
    emu.next_job_outcome, emu.next_job_output_rows = outcome, knob
    sdk = emu.client()
    name = create(emu, sdk).name
    assert emu.next_job_output_rows is None  # consumed by this create
    clock.advance(0.2 + 0.2)  # pending, then running: every state is reached on the manual clock
    job = sdk.batches.get(name=name)
    assert job.state.value == f"JOB_STATE_{outcome}" and job.end_time is not None
    if written is None:
        assert not emu.tables.exists(uri("out")) and emu.answers == []
    else:
        assert [r["id"] for r in out_rows(emu)] == list(range(1, written + 1))  # the first N rows
        assert len(emu.answers) == written
    if outcome == "EXPIRED" and knob is None:
        assert stats(job) is None and job.start_time is None  # expired in the queue: never ran
    else:
        assert stats(job) == (written or 0, 0, 6 - (written or 0))  # counts agree with the table


@pytest.mark.parametrize("knob, written", [(None, 3), (1, 1)])
def test_cancel_while_running_keeps_processed_rows_or_the_knob(vertex_emulator, knob, written):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu, n=6)
    emu.next_job_output_rows = knob
    sdk = emu.client()
    name = create(emu, sdk).name
    clock.advance(0.2 + 0.1)  # half-way through the run
    sdk.batches.cancel(name=name)
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_CANCELLING"
    clock.advance(emu.cancel_seconds)
    job = sdk.batches.get(name=name)
    assert job.state.value == "JOB_STATE_CANCELLED"
    assert [r["id"] for r in out_rows(emu)] == list(range(1, written + 1))
    assert stats(job) == (written, 0, 6 - written)


def test_cancel_of_a_terminal_job_is_a_failed_precondition(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu)
    sdk = emu.client()
    name = create(emu, sdk).name
    with pytest.raises(errors.ClientError) as running:
        sdk.batches.delete(name=name)
    assert running.value.code == 400 and running.value.status == "FAILED_PRECONDITION"
    clock.advance(1)
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_SUCCEEDED"
    with pytest.raises(errors.ClientError) as finished:
        sdk.batches.cancel(name=name)
    assert finished.value.code == 400 and finished.value.status == "FAILED_PRECONDITION"
    assert "terminal state" in finished.value.message
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_SUCCEEDED"  # unchanged


def test_paused_job_stays_paused_on_the_manual_clock(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu)
    emu.next_job_outcome = "PAUSED"
    sdk = emu.client()
    name = create(emu, sdk).name
    clock.advance(10)
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_PAUSED"
    assert not emu.tables.exists(uri("out"))


# -- hooks -------------------------------------------------------------------------------------------
def in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run `fn` in a thread; its result (or exception) lands in the returned dict."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_request_hook_holds_the_response_until_released(vertex_emulator):
    emu = vertex_emulator
    emu.use_manual_clock()
    make_input(emu)
    sdk = emu.client()
    name = create(emu, sdk).name
    hold = emu.hold(op="get")
    thread, box = in_thread(lambda: sdk.batches.get(name=name))
    assert hold.reached.wait(30)
    assert box == {} and thread.is_alive()  # the client has no answer yet
    assert hold.calls[0].op == "get" and hold.calls[0].state == "JOB_STATE_PENDING"
    assert hold.calls[0].status_code == 200
    hold.release()
    thread.join(30)
    assert box["result"].state.value == "JOB_STATE_PENDING"
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_PENDING"  # one hold, one call


def test_create_hook_sees_the_job_already_created(vertex_emulator):
    emu = vertex_emulator
    make_input(emu)
    seen: list = []
    remove = emu.on_request("create", lambda call, state: seen.append((call.status_code, len(emu.jobs), state)))
    create(emu, emu.client())
    emu.faults.create = [503]
    with pytest.raises(errors.ServerError):
        create(emu, emu.client(), out="out2")
    remove()
    create(emu, emu.client(), out="out3")
    assert seen == [(200, 1, None), (503, 1, None)]  # fired for faulted calls too; removed after


def test_state_hook_fires_after_the_job_ended_and_before_the_client_knows(vertex_emulator):
    emu = vertex_emulator
    clock = emu.use_manual_clock()
    make_input(emu)
    sdk = emu.client()
    name = create(emu, sdk).name
    states: list[str] = []
    emu.on_request("get", lambda call, state: states.append(state))
    hold = emu.hold(state="SUCCEEDED")
    assert sdk.batches.get(name=name).state.value == "JOB_STATE_PENDING"  # not held: another state
    clock.advance(1)
    thread, box = in_thread(lambda: sdk.batches.get(name=name))
    assert hold.reached.wait(30)
    assert box == {} and emu.tables.exists(uri("out"))  # the output is there, the client not told yet
    hold.release()
    thread.join(30)
    assert box["result"].state.value == "JOB_STATE_SUCCEEDED"
    assert states == ["JOB_STATE_PENDING", "JOB_STATE_SUCCEEDED"]


def test_storage_over_an_open_duckdb_connection(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "shared.duckdb"))  # e.g. the connection a test already holds
    con.execute("create schema ds; create table ds.inp as select 1 as id, "
                "json_object('contents', json_array(json_object('role', 'user', "
                "'parts', json_array(json_object('text', 'hi'))))) as request")
    emu = VertexEmulator(con).start()
    try:
        clock = emu.use_manual_clock()
        sdk = emu.client()
        create(emu, sdk)
        clock.advance(1)
        assert con.execute("select id, status, json_extract_string(response, '$.candidates[0].finishReason') "
                           "from ds.out").fetchall() == [(1, "", "STOP")]
    finally:
        emu.stop()
        con.close()
