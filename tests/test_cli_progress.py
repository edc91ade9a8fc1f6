"""Honest progress: the run header says who answers, the batch bar/lines/events carry the real phase and
counts across every shard, no stray blank lines without a terminal, and the summary adds up."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from batchflow.api import RunStart
from batchflow.cli import ConsoleReporter, batch_lines
from batchflow.compiler import Node
from batchflow.lifecycle import BatchProgress
from batchflow.relation import Relation
from tests.conftest import CLI
from tests.faults import set_project_batch

NODE = Node("review_requests", "model", "models/requests/review_requests.sql", Relation(None, "reviews", "rr"),
            config={"materialized": "batch"})


def _text_reporter() -> tuple[ConsoleReporter, io.StringIO]:
    buffer = io.StringIO()
    return ConsoleReporter("text", Console(file=buffer, force_terminal=False, width=200)), buffer


def test_header_warns_in_yellow_when_the_mock_answers() -> None:
    buffer = io.StringIO()
    reporter = ConsoleReporter("text", Console(file=buffer, force_terminal=True, color_system="truecolor", width=200,
                                               highlight=False))
    reporter.run_started(RunStart("run", "p", "local", "duckdb", 3, "the mock provider", True, 1))
    out = buffer.getvalue()
    assert "answers from the mock provider: not real model output" in out
    assert "\x1b[33m" in out  # yellow
    reporter, buffer = _text_reporter()
    reporter.run_started(RunStart("run", "p", "prod", "bigquery", 3, "Vertex AI batch prediction (us-central1)",
                                  False, 1))
    assert "answers from Vertex AI batch prediction (us-central1)" in buffer.getvalue()
    assert "mock" not in buffer.getvalue()


def test_without_a_terminal_progress_prints_one_line_per_change_and_no_blank_line() -> None:
    reporter, buffer = _text_reporter()
    reporter.node_started(NODE, 1, 1)
    for done in (0, 5, 10):  # rows move, jobs do not: one line
        reporter.batch_progress(NODE, BatchProgress("waiting", "RUNNING", done, 0, 20, 1, 1))
    reporter.batch_progress(NODE, BatchProgress("landing", "", 10, 0, 20, 0, 1))
    reporter.batch_progress(NODE, BatchProgress("waiting", "RUNNING", 12, 1, 20, 1, 0))
    reporter.batch_progress(NODE, BatchProgress("waiting", "DONE", 20, 1, 20, 0, 0))  # after the last land: quiet
    reporter.batch_progress(NODE, BatchProgress("building results", "", 20, 0, 20))
    lines = buffer.getvalue().splitlines()
    assert all(line.strip() for line in lines), lines
    progress = [line.strip() for line in lines[1:]]
    assert progress == [
        "review_requests: waiting · RUNNING · 1 job(s) running, 1 queued: 0/20 rows, 0 failed, " + progress[0].rsplit(" ", 1)[1],
        *progress[1:],
    ]
    assert [p.split(":")[1].strip().split(" ·")[0] for p in progress] == ["waiting", "landing", "waiting",
                                                                         "building results"]
    assert "1 job(s) running, 0 queued: 12/20 rows, 1 failed" in progress[2]


def test_json_progress_events_carry_phase_state_and_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = ConsoleReporter("json")
    reporter.batch_progress(NODE, BatchProgress("waiting", "PENDING,RUNNING", 7, 2, 30, 2, 1))
    event = json.loads(capsys.readouterr().out)
    assert event == {**event, "event": "batch_progress", "node": "review_requests", "phase": "waiting",
                     "state": "PENDING,RUNNING", "done": 7, "failed": 2, "total": 30, "jobs_running": 2,
                     "jobs_queued": 1}


def _row_arithmetic(line: str) -> tuple[int, list[int]]:
    total, rest = re.match(r"rows ([\d,]+) = (.*)", line).groups()  # type: ignore[union-attr]
    return int(total.replace(",", "")), [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) [a-z]", rest)]


def test_the_summary_adds_up_to_the_models_rows() -> None:
    batch = {"rows_total": 8, "rows_invalid": 1, "rows_duplicate": 2, "rows_sent": 5, "rows_retried": 2,
             "rows_reused": 2, "rows_pending": 0, "jobs": [{}, {}], "outcomes": {"ok": 8}, "tokens": {"total": 9}}
    lines = batch_lines(batch)
    total, parts = _row_arithmetic(lines[0])
    assert total == 8 and sum(parts) == 8 and parts[0] == 3  # 3 new or changed rows to send
    assert lines[1] == "sent 5 request(s) in 2 job(s), 2 of them resent after a failed or missing answer"
    dry = batch_lines({**batch, "dry_run": True, "would_send": 3, "rows_pending": 0})
    assert dry[0].startswith("rows 8 = 3 would send")


@pytest.mark.e2e
def test_progress_moves_across_every_shard_and_the_summary_adds_up(cli: CLI) -> None:
    set_project_batch(cli.project, max_rows_per_job=10, max_concurrent_jobs=1)
    result = cli("build", "--log-format", "json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    start = next(e for e in events if e["event"] == "run_start")
    assert start["mock"] is True and start["answers_from"] == "the mock provider"
    progress = [e for e in events if e["event"] == "batch_progress"]
    waiting = [e for e in progress if e["phase"] == "waiting"]
    assert len({e["jobs_queued"] for e in waiting}) > 2  # the queue drains shard by shard
    done = [e["done"] for e in waiting]
    assert done == sorted(done) and done[-1] == waiting[-1]["total"] > 10
    assert all(e["state"] for e in waiting)
    assert sum(e["phase"] == "landing" for e in progress) == len(next(
        e for e in events if e["event"] == "node_finish" and e["node"] == "review_requests")["batch"]["jobs"])
    assert progress[-1]["phase"] == "building results"

    text = cli("run", "-s", "review_requests", "--full-refresh", "--resubmit-batches")
    assert text.exit_code == 0, text.output
    assert "answers from the mock provider: not real model output" in text.output
    summary = next(line.strip() for line in text.output.splitlines() if line.strip().startswith("rows "))
    total, parts = _row_arithmetic(summary)
    assert total == 59 and sum(parts) == total
    assert "\n\n" not in text.output
