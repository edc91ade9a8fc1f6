"""Helpers of the fault matrix (tests/test_fault_matrix.py): batchflow as a real subprocess, project
edits, warehouse probes, and a gated OpenAI-compatible answer server.

Nothing here imports batchflow except `batchflow.batch.states.CLOSED_STATES` and
`batchflow.faultpoints.POINTS` (the names under test)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import yaml

MODEL = "review_requests"
SCRATCH = re.compile(rf"^{MODEL}__(in_.*|out_.*|todo)$")
STAGED_REVIEWS = 59
DISTINCT_REQUESTS = 52
RUN_TIMEOUT = 180


# -- batchflow as a subprocess ------------------------------------------------------------------------
def command(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "batchflow.cli", *args, "--project-dir", str(project)]


def environment(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHFLOW_FAULT_KILL_AT"}
    if kill_at:
        env["BATCHFLOW_FAULT_KILL_AT"] = kill_at
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Finished:
    rc: int
    stdout: str
    stderr: str

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def bf(project: Path, *args: str, kill_at: str | None = None, timeout: float = RUN_TIMEOUT) -> Finished:
    """Run `batchflow <args> --project-dir project` to its end."""
    done = subprocess.run(command(project, *args), capture_output=True, text=True, env=environment(kill_at),
                          timeout=timeout, cwd=project)
    return Finished(done.returncode, done.stdout, done.stderr)


class Live:
    """A running batchflow process whose stdout (one JSON event a line with --log-format json, or
    text) is read line by line on a thread; stderr goes to a file (no pipe to fill up)."""

    def __init__(self, project: Path, *args: str, kill_at: str | None = None):
        self.project = project
        self.err_path = project / f".stderr-{time.monotonic_ns()}"
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen(command(project, *args), stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=environment(kill_at), cwd=project, bufsize=1)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_line(self, timeout: float = RUN_TIMEOUT) -> str | None:
        """The next stdout line; None at the end of the output (or after `timeout` seconds)."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self._queue.put(None)  # stays at the end
            return None
        self.lines.append(line)
        return line

    def events(self, timeout: float = RUN_TIMEOUT) -> Iterator[dict]:
        """JSON events as they are printed (non-JSON lines are kept in `lines`, skipped here); ends at
        the end of the output or when none came for `timeout` seconds."""
        while (line := self.next_line(timeout)) is not None:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def wait_event(self, pred: Callable[[dict], bool], timeout: float = RUN_TIMEOUT) -> dict | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self.next_line(left)
            if line is None:
                return None
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if pred(event):
                    return event
        return None

    def wait_stderr(self, text: str, timeout: float = 30.0) -> bool:
        """Until `text` is in stderr (True), the process ended or `timeout` (False). Polls the file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.err_path.read_text():
                return True
            if self.proc.poll() is not None:
                return text in self.err_path.read_text()
            time.sleep(0.02)
        return False

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def finish(self, timeout: float = RUN_TIMEOUT) -> Finished:
        try:
            rc = self.proc.wait(timeout)
            self._reader.join(10)
            while self.next_line(0.01) is not None:
                pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._err.close()
        stderr = self.err_path.read_text()
        self.err_path.unlink(missing_ok=True)
        return Finished(rc, "\n".join(self.lines), stderr)


# -- project edits -----------------------------------------------------------------------------------
def set_project_batch(project: Path, **values: object) -> None:
    path = project / "batchflow_project.yml"
    data = yaml.safe_load(path.read_text())
    data["batch"].update(values)
    path.write_text(yaml.safe_dump(data))


def set_local_executor(project: Path, chunk_size: int = 5, concurrency: int = 2) -> None:
    """The local target's executor: small chunks, so a job takes several commits."""
    path = project / "profiles.yml"
    text = path.read_text()
    old = "        provider: mock\n        concurrency: 4\n"
    assert old in text
    path.write_text(text.replace(old, f"        provider: mock\n        concurrency: {concurrency}\n"
                                      f"        chunk_size: {chunk_size}\n", 1))


def use_openai_provider(project: Path, base_url: str) -> None:
    """The local target answers through an OpenAI-compatible server at `base_url` (a `Gate`)."""
    path = project / "profiles.yml"
    text = path.read_text()
    block = re.search(r"        provider: mock\n(.*?)\n\n", text, re.S)
    assert block is not None
    kept = [line for line in block.group(1).splitlines() if line.startswith("        concurrency:")
            or line.startswith("        chunk_size:")]
    new = ("        provider: openai\n" + "".join(f"{line}\n" for line in kept)
           + f"        openai:\n          base_url: {base_url}\n          max_attempts: 1\n          timeout: 120\n"
           + "          concurrency: 8\n\n")
    path.write_text(text.replace(block.group(0), new, 1))


def use_openai_provider_again(project: Path, base_url: str) -> None:
    """Point the (already openai) local target at another server."""
    path = project / "profiles.yml"
    new, n = re.subn(r"base_url: http://127\.0\.0\.1:\d+/v1", f"base_url: {base_url}", path.read_text(), count=1)
    assert n == 1
    path.write_text(new)


# -- the local warehouse -----------------------------------------------------------------------------
def duck(project: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(project / "target" / "batchflow.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def duck_tables(project: Path, schema: str = "reviews") -> list[str]:
    return [r[0] for r in duck(project, f"select table_name from information_schema.tables "
                                        f"where table_schema = '{schema}' order by 1")]


def answered_so_far(project: Path, schema: str = "reviews") -> set[str]:
    """Request hashes with a good answer anywhere: the store or any job's output table (what a rerun
    must land, not send again)."""
    tables = duck_tables(project, schema)
    sources = [t for t in tables if t == f"{MODEL}__responses" or t.startswith(f"{MODEL}__out_")]
    found: set[str] = set()
    for t in sources:
        found |= {h for (h,) in duck(project, f"select request_hash from {schema}.{t} "
                                               f"where status = '' and response is not null")}
    return found


LEDGER_COLUMNS = ("job_key", "job_name", "state", "row_count", "created_at", "job_state", "missing_count")


def duck_ledger(project: Path, schema: str = "reviews") -> list[dict]:
    if "_batchflow_jobs" not in duck_tables(project, schema):
        return []
    rows = duck(project, f"select {', '.join(LEDGER_COLUMNS)} from {schema}._batchflow_jobs order by created_at, job_key")
    return [dict(zip(LEDGER_COLUMNS, r)) for r in rows]


def run_results(project: Path) -> dict:
    """run_results.json (dbt's schema) with each result as batchflow reports it (name, status, batch, ...)."""
    from batchflow.artifacts import batchflow_results

    data = json.loads((project / "target" / "run_results.json").read_text())
    return {**data, "results": batchflow_results(data)}


def batch_report(project: Path) -> dict:
    return next(r for r in run_results(project)["results"] if r["name"] == MODEL)["batch"]


def node_status(project: Path) -> dict[str, str]:
    return {r["name"]: r["status"] for r in run_results(project)["results"]}


# -- figures for the closing note --------------------------------------------------------------------
@dataclass
class Figures:
    cases: list[dict] = field(default_factory=list)

    def add(self, case: str, ledger: list[dict], creates: int | None = None, distinct: int = DISTINCT_REQUESTS) -> dict:
        # A create: a ledger row the backend named, or one whose output was landed (a kill right after
        # create() leaves the name unrecorded; the rerun finds and lands its table).
        created = [r for r in ledger if r["job_name"] or r["state"] == "LANDED"]
        sent = sum(int(r["row_count"] or 0) for r in created)
        entry = {"case": case, "ledger_rows": len(ledger),
                 "creates": creates if creates is not None else len(created),
                 "rows_sent": sent, "rows_resent": sent - distinct}
        self.cases.append(entry)
        return entry

    def summary(self) -> str:
        if not self.cases:
            return "fault matrix: no cases ran"
        lines = [f"{c['case']:<48} ledger {c['ledger_rows']:>2}  creates {c['creates']:>2}  "
                 f"sent {c['rows_sent']:>3}  resent {c['rows_resent']:>3}" for c in self.cases]
        total_creates = sum(c["creates"] for c in self.cases)
        total_resent = sum(c["rows_resent"] for c in self.cases)
        return ("\n".join(["", "fault matrix figures:"] + lines)
                + f"\ncases {len(self.cases)}, creates counted {total_creates}, rows resent {total_resent}\n")


FIGURES = Figures()


# -- a gated OpenAI-compatible chat-completions server -----------------------------------------------
class Gate:
    """`POST /v1/chat/completions` answering JSON that fits the example's response schema. The first
    `free` requests are answered at once; later ones wait until `release()` (or `timeout`), so a test
    knows exactly what is in flight when it signals or kills the client."""

    def __init__(self, free: int = 0, timeout: float = 120.0, latency: float = 0.0):
        self.free = free
        self.latency = latency  # seconds each answer takes (a slow endpoint: jobs span many polls)
        self.timeout = timeout
        self.received = 0
        self.answered = 0
        self.waiting = 0
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "Gate":
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                gate._enter()
                body = json.dumps({
                    "id": "chatcmpl-gate", "object": "chat.completion", "created": 1700000000, "model": "gate",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant",
                        "content": json.dumps({"sentiment": "positive", "topics": ["quality"], "summary": "ok"})}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True
                    return
                with gate._lock:
                    gate.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def _enter(self) -> None:
        with self._cond:
            self.received += 1
            free = self.received <= self.free
            if not free:
                self.waiting += 1
            self._cond.notify_all()
        if not free:
            self._open.wait(self.timeout)
            with self._cond:
                self.waiting -= 1
        elif self.latency:
            time.sleep(self.latency)

    def wait_for_waiting(self, n: int, timeout: float = 60.0) -> bool:
        """Until at least `n` requests are held (True), or `timeout` (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.waiting < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def release(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
