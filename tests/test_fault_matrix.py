"""The fault matrix (issue 11): kill -9 at every stage boundary and at random moments, SIGINT/SIGTERM,
`--no-wait` on the local executor, and every terminal job state on the Vertex emulator. batchflow runs
as a real subprocess on a copy of the example project; after each fault a rerun must end with every
row answered once, nothing left behind and every ledger row closed, and a further rerun sends nothing.

Figures (cases, creates counted, rows resent) are printed when the module ends (run with -s)."""

from __future__ import annotations

import hashlib
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchflow.batch.states import CLOSED_STATES
from batchflow.faultpoints import POINTS
from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401  (fixtures)
from tests.faults import (
    DISTINCT_REQUESTS,
    FIGURES,
    MODEL,
    SCRATCH,
    STAGED_REVIEWS,
    Gate,
    Live,
    answered_so_far,
    batch_report,
    bf,
    duck,
    duck_ledger,
    duck_tables,
    kill_tree,
    node_status,
    set_local_executor,
    set_project_batch,
    use_openai_provider,
    use_openai_provider_again,
)

pytestmark = pytest.mark.e2e

#: points passed once per job (or per poll): also tried on their second pass
PER_JOB_POINTS = ("after_ledger_record", "after_create", "while_waiting", "before_land", "during_merge")
KILLED = -signal.SIGKILL
SEED = 20240611


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    print(FIGURES.summary())


def small_shards(project: Path, chunk_size: int = 5) -> None:
    """Six jobs of at most 10 requests, two at a time; each local job answers in chunks of 5."""
    set_project_batch(project, max_rows_per_job=10, max_concurrent_jobs=2)
    set_local_executor(project, chunk_size=chunk_size, concurrency=2)


# -- the invariants, local target ----------------------------------------------------------------------
def assert_invariants(project: Path, case: str | None = None) -> dict | None:
    """After a completed run: every ledger row closed, no scratch table, one good answer per distinct
    request, the model's relation has every input row once with an answer; then a rerun sends nothing.
    Records the case's figures (ledger rows, creates, rows resent) when `case` is given."""
    ledger = duck_ledger(project)
    still_open = [(r["job_key"], r["state"]) for r in ledger if r["state"] not in CLOSED_STATES]
    assert not still_open, f"ledger rows left open: {still_open}"
    scratch = [t for t in duck_tables(project) if SCRATCH.match(t)]
    assert not scratch, f"scratch tables left behind: {scratch}"
    hashes = {h for (h,) in duck(project, f"select distinct request_hash from reviews.{MODEL}__requests")}
    assert len(hashes) == DISTINCT_REQUESTS
    store = duck(project, f"select request_hash, status, response is not null from reviews.{MODEL}__responses")
    per_hash = Counter(h for h, _, _ in store)
    assert [h for h, n in per_hash.items() if n > 1] == [], "the answer store has a request twice"
    assert set(per_hash) == hashes, (f"store vs requests: {len(set(per_hash) - hashes)} extra, "
                                     f"{len(hashes - set(per_hash))} missing")
    bad = [(h[:12], s) for h, s, has in store if s != "" or not has]
    assert not bad, f"requests without a good answer: {bad[:5]} ({len(bad)} in all)"
    rel = duck(project, f"select count(*), count(distinct review_id), count(response), "
                        f"count(*) filter (where status = '') from reviews.{MODEL}")
    assert rel == [(STAGED_REVIEWS,) * 4], f"{MODEL}: (rows, distinct ids, with response, ok) = {rel}"
    figures = FIGURES.add(case, ledger) if case else None
    again = bf(project, "run")
    assert again.rc == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(duck_ledger(project)) == len(ledger), "an unchanged rerun created a job"
    assert batch_report(project)["rows_sent"] == 0
    return figures


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]


# == 1. kill -9 at each stage boundary, local backend =================================================
@pytest.mark.parametrize("point", list(POINTS) + [f"{p}:2" for p in PER_JOB_POINTS])
def test_kill_at_stage_boundary_then_rerun(example_project: Path, point: str) -> None:
    small_shards(example_project)
    killed = bf(example_project, "build", "--log-format", "json", kill_at=point)
    assert killed.rc == KILLED, f"never reached {point}: rc {killed.rc}\n{killed.stdout[-2000:]}{killed.stderr[-2000:]}"
    kept = answered_so_far(example_project)
    rerun = bf(example_project, "build")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    no_traceback(rerun.stderr)
    # Whatever the killed run's jobs wrote is landed, not sent again.
    assert batch_report(example_project)["rows_sent"] == DISTINCT_REQUESTS - len(kept)
    assert_invariants(example_project, f"local kill -9 at {point}")


def test_kill_then_a_dry_run_then_a_rerun(example_project: Path) -> None:
    """The killed run's local shard inputs are views over its todo table; a dry run, which builds
    (and drops) a todo table of its own, must not change what the rerun lands for those jobs."""
    small_shards(example_project)
    killed = bf(example_project, "build", kill_at="while_waiting:2")
    assert killed.rc == KILLED, killed.stdout[-2000:] + killed.stderr[-2000:]
    kept = answered_so_far(example_project)
    dry = bf(example_project, "build", "--dry-run")
    assert dry.rc == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    closed = ", ".join(f"'{s}'" for s in CLOSED_STATES)
    still_open = duck(example_project, "select job_key, input_table, fingerprint from reviews._batchflow_jobs "
                                       f"where state not in ({closed})")
    assert still_open
    for key, input_table, fingerprint in still_open:  # each open job's input holds the requests it was sent
        hashes = sorted(h for (h,) in duck(example_project, f"select request_hash from {input_table}"))
        assert hashlib.sha256(",".join(hashes).encode()).hexdigest() == fingerprint.lower(), key
    rerun = bf(example_project, "build")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    no_traceback(rerun.stderr)
    assert batch_report(example_project)["rows_sent"] == DISTINCT_REQUESTS - len(kept)
    assert_invariants(example_project, "local kill -9 while waiting, a dry run, a rerun")


# == 2. kill -9 at random moments, local backend ======================================================
@pytest.mark.parametrize("i", range(8))
def test_kill_at_a_random_moment_then_rerun(example_project: Path, i: int) -> None:
    """The moment is chosen from the process's own progress (after its k-th JSON event once the batch
    model started), never by a sleep. Even cases answer with the mock; odd ones through a slow
    endpoint (5 ms an answer), so the kill lands inside running jobs."""
    rng = random.Random(SEED + i)
    small_shards(example_project)
    gate = None
    if i % 2:
        gate = Gate(free=10**9, latency=0.005).start()
        use_openai_provider(example_project, gate.url)
    k = rng.randint(1, 10)
    live = None
    try:
        live = Live(example_project, "build", "--log-format", "json")
        seen, killed = 0, False
        for event in live.events():
            if seen or (event["event"] == "node_start" and event["node"] == MODEL):
                seen += 1
            if seen == k:
                live.signal(signal.SIGKILL)
                killed = True
                break
        done = live.finish()
        assert killed and done.rc == KILLED, f"k={k}: rc {done.rc}\n{done.stdout[-2000:]}"
        kept = answered_so_far(example_project)
        rerun = bf(example_project, "build")
        assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert batch_report(example_project)["rows_sent"] == DISTINCT_REQUESTS - len(kept)
        assert_invariants(example_project, f"local random kill #{i} ({'slow' if gate else 'mock'}, event {k})")
    finally:
        if live is not None:
            kill_tree(live.proc)
        if gate:
            gate.stop()


# == 3. signals ========================================================================================
@pytest.mark.parametrize("signum, log_format", [
    (signal.SIGINT, "json"), (signal.SIGTERM, "json"), (signal.SIGINT, "text"), (signal.SIGTERM, "text"),
])
def test_one_signal_mid_run_stops_cleanly_and_a_rerun_completes(example_project: Path, signum: int,
                                                                 log_format: str) -> None:
    """Jobs are in flight, their answers held by the endpoint, when the signal comes: nothing may be
    submitted after it; what the jobs answered is landed; the run exits 128+signum with its results.
    JSON log: the signal follows the first batch_progress event (both jobs of max_concurrent_jobs 2
    submitted). Text log: one job at a time, the signal follows its first request at the endpoint."""
    small_shards(example_project)
    in_flight = 2 if log_format == "json" else 1
    set_project_batch(example_project, max_concurrent_jobs=in_flight)
    gate = Gate(free=0).start()
    use_openai_provider(example_project, gate.url)
    name = signal.Signals(signum).name
    try:
        live = Live(example_project, "build", "--log-format", log_format)
        if log_format == "json":
            assert live.wait_event(lambda e: e["event"] == "batch_progress") is not None, live.lines[-20:]
        assert gate.wait_for_waiting(1), "no request reached the endpoint"
        sent_at = time.time()
        live.signal(signum)
        # The note says the signal was handled; only then may the held answers go (else jobs could end
        # and new ones be submitted before the signal is seen).
        if log_format == "json":
            note = live.wait_event(lambda e: e["event"] == "interrupt", timeout=20)
            noted = note is not None and note["signal"] == name
        else:
            noted = live.wait_stderr(f"{name}: stopping", timeout=20)
        gate.release()  # the chunks in flight are answered now; the run must land them and stop
        done = live.finish()
    finally:
        gate.stop()
        kill_tree(live.proc)
    ledger = duck_ledger(example_project)
    late = [r["job_key"] for r in ledger if r["created_at"].timestamp() > sent_at]
    assert noted, (f"no interrupt note within 20 s of {name} (the run went on: rc {done.rc}, "
                   f"{len(ledger)} ledger rows, {len(late)} created after the signal)")
    assert done.rc == 128 + signum, f"rc {done.rc}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    no_traceback(done.stderr)
    statuses = node_status(example_project)
    assert statuses[MODEL] == "interrupted", statuses
    assert statuses["review_labels"] == "skipped", statuses
    if log_format == "json":
        finish = [e for e in done.events() if e["event"] == "run_finish"]
        assert finish and finish[0]["summary"].get("interrupted") == 1, finish
    else:
        assert f"Interrupted ({name})" in done.stdout, done.stdout[-2000:]
    # Nothing submitted after the signal: only the jobs in flight when it came exist.
    assert not late, f"ledger rows created after the signal: {late}"
    assert len(ledger) == in_flight, [(r["job_key"], r["state"]) for r in ledger]
    assert gate.received <= 10 * in_flight  # only the rows of those jobs reached the endpoint
    # The stopped local jobs were landed and the shard cut ahead for the next job was dropped: the
    # interrupted run itself leaves no scratch table (not only the rerun's clean-up).
    left = [t for t in duck_tables(example_project) if SCRATCH.match(t)]
    assert not left, f"scratch tables left by the interrupted run: {left}"

    gate2 = Gate(free=10**9).start()
    use_openai_provider_again(example_project, gate2.url)
    try:
        rerun = bf(example_project, "build")
        assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert_invariants(example_project, f"local {name} ({log_format} log) mid-run")
    finally:
        gate2.stop()


@pytest.mark.parametrize("attempt", range(3))
def test_signal_while_the_second_job_is_being_submitted(example_project: Path, attempt: int) -> None:
    """SIGINT as soon as the first job's first request reaches the endpoint, while the lifecycle is
    still cutting and submitting the second job (max_concurrent_jobs 2): the window between the Submit
    and the Wait stages. The run must still cancel and land its in-process jobs, submit nothing after
    the signal, exit 130 without a traceback, and a rerun must complete. The window is hit by timing,
    not forced, hence three attempts."""
    small_shards(example_project)
    gate = Gate(free=0).start()
    use_openai_provider(example_project, gate.url)
    live = Live(example_project, "build")
    try:
        assert gate.wait_for_waiting(1), "no request reached the endpoint"
        sent_at = time.time()
        live.signal(signal.SIGINT)
        noted = live.wait_stderr("SIGINT: stopping", timeout=20)
        gate.release()
        done = live.finish()
    finally:
        gate.stop()
        kill_tree(live.proc)
    ledger = duck_ledger(example_project)
    late = [r["job_key"] for r in ledger if r["created_at"].timestamp() > sent_at]
    assert noted, f"no interrupt note within 20 s (rc {done.rc}, {len(ledger)} ledger rows)"
    assert done.rc == 130, f"rc {done.rc}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    no_traceback(done.stderr)
    assert not late, f"ledger rows created after the signal: {late}"
    gate2 = Gate(free=10**9).start()
    use_openai_provider_again(example_project, gate2.url)
    try:
        rerun = bf(example_project, "build")
        assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert_invariants(example_project, f"local SIGINT during submit #{attempt}")
    finally:
        gate2.stop()


def test_second_sigint_exits_at_once_and_a_rerun_completes(example_project: Path) -> None:
    small_shards(example_project)
    gate = Gate(free=0).start()
    use_openai_provider(example_project, gate.url)
    try:
        live = Live(example_project, "build", "--log-format", "json")
        assert live.wait_event(lambda e: e["event"] == "batch_progress") is not None, live.lines[-20:]
        assert gate.wait_for_waiting(1)
        live.signal(signal.SIGINT)
        assert live.wait_event(lambda e: e["event"] == "interrupt", timeout=20) is not None, \
            "no interrupt note within 20 s of SIGINT"
        live.signal(signal.SIGINT)  # the answers are still held: only the second signal can end it
        started = time.monotonic()
        try:
            rc = live.proc.wait(15)
        except Exception:  # noqa: BLE001 - reported below
            rc = None
        waited = time.monotonic() - started
        done = live.finish()
    finally:
        gate.stop()
        kill_tree(live.proc)
    assert rc == 130 and done.rc == 130, f"rc {rc} after {waited:.1f}s\n{done.stderr[-2000:]}"
    assert waited < 10
    no_traceback(done.stderr)
    assert "again" in done.stderr

    gate2 = Gate(free=10**9).start()
    use_openai_provider_again(example_project, gate2.url)
    try:
        rerun = bf(example_project, "build")
        assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert_invariants(example_project, "local SIGINT twice")
    finally:
        gate2.stop()


def test_sigint_before_anything_was_submitted_submits_nothing(example_project: Path) -> None:
    small_shards(example_project)
    live = Live(example_project, "build", "--log-format", "json")
    assert live.wait_event(lambda e: e["event"] == "node_start" and e["node"] == "stg_reviews") is not None
    live.signal(signal.SIGINT)
    done = live.finish()
    assert done.rc == 130, f"rc {done.rc}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    no_traceback(done.stderr)
    assert duck_ledger(example_project) == []
    if f"{MODEL}__responses" in duck_tables(example_project):
        assert duck(example_project, f"select count(*) from reviews.{MODEL}__responses") == [(0,)]
    statuses = node_status(example_project)
    assert statuses[MODEL] in ("skipped", "interrupted"), statuses
    assert not any(e["event"] == "batch_progress" for e in done.events())
    rerun = bf(example_project, "build")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert_invariants(example_project, "local SIGINT before submit")


# == 4. --no-wait on the local target =================================================================
def test_no_wait_on_the_local_target_waits_and_says_so(example_project: Path) -> None:
    small_shards(example_project)
    done = bf(example_project, "build", "--no-wait")
    assert done.rc == 0, done.stdout[-3000:] + done.stderr[-3000:]
    no_traceback(done.stderr)
    assert not list((example_project / "target").glob("*.wal")), "a .wal was left behind"
    assert (example_project / "target" / "run_results.json").exists()
    warnings = batch_report(example_project)["warnings"]
    assert any("--no-wait" in w and "waited" in w for w in warnings), warnings
    assert node_status(example_project)[MODEL] == "success"
    assert_invariants(example_project, "local --no-wait")


# == 5./6. the Vertex emulator (production path) =======================================================
@dataclass
class Prod:
    project: Path
    wh: object
    vertex: object
    clock: object
    dataset: str

    def query(self, sql: str) -> list[tuple]:
        return [tuple(r.values()) for r in self.wh.query_arrow(sql).to_pylist()]

    def table(self, name: str) -> str:
        return f"`{self.wh.project}`.`{self.dataset}`.`{name}`"

    def ledger(self) -> list[dict]:
        if self.wh.kind(self.wh.relation("_batchflow_jobs", self.dataset)) is None:
            return []
        rows = self.wh.query_arrow(f"SELECT job_key, job_name, state, row_count, job_state FROM "
                                   f"{self.table('_batchflow_jobs')} ORDER BY created_at, job_key").to_pylist()
        return rows

    def build(self, *args: str, kill_at: str | None = None):
        """`batchflow <args>` on the emulators, for the batch model and what it reads only (the marts
        downstream add minutes over a matrix and nothing to what is checked here)."""
        return bf(self.project, *args, "--target", "emu", "--select", f"+{MODEL}", kill_at=kill_at)


def _emu_target(project: Path, bq, dataset: str, vertex_url: str) -> None:
    with (project / "profiles.yml").open("a") as f:
        f.write(f"""
    emu:
      type: bigquery
      method: none
      project: {bq.project}
      dataset: {dataset}
      location: us-central1
      api_endpoint: {bq.endpoint}
      threads: 4
      batch:
        backend: vertex
        location: us-central1
        base_url: {vertex_url}
        access_token: test-token
        poll_interval: 0.05
""")


@pytest.fixture
def prod(example_project: Path, bigquery_emulator, bq_dataset: str) -> Iterator[Prod]:  # noqa: F811
    """The example project on a `bigquery` target with the `vertex` backend, against the BigQuery
    emulator and the Vertex emulator. The Vertex emulator's clock is manual: every `get` moves it one
    second (a job: 1 s PENDING, 2 s RUNNING), so a job's fate depends on polls, never on wall time."""
    from batchflow.warehouse.bigquery import BigQueryWarehouse
    from tests.emulators.vertex import VertexEmulator

    bq, dataset = bigquery_emulator, bq_dataset
    wh = BigQueryWarehouse(bq.project, dataset, "us-central1", api_endpoint=bq.endpoint)
    wh.ensure_schema("shop_raw")
    wh.load_csv(wh.relation("reviews", "shop_raw"), example_project / "data" / "reviews.csv")
    client = bq.client()
    vertex = VertexEmulator(client, row_rules=[{"when_prompt_contains": "lyrics", "outcome": "recitation"}],
                            pending_seconds=1.0, running_seconds=2.0, cancel_seconds=0.5)
    clock = vertex.use_manual_clock()
    vertex.on_request("get", lambda call, state: clock.advance(1.0))
    vertex.start()
    _emu_target(example_project, bq, dataset, vertex.url)
    try:
        yield Prod(example_project, wh, vertex, clock, dataset)
    finally:
        vertex.stop()
        client.close()
        wh.close()


def assert_prod_invariants(prod: Prod, creates: int, case: str) -> None:
    """The production-path invariants (BigQuery queries), `creates` jobs created at Vertex in all, and
    every request paid for exactly once (the emulator's own record of what it answered)."""
    assert prod.vertex.count("create") == creates, f"creates: {prod.vertex.count('create')} != {creates}"
    ledger = prod.ledger()
    still_open = [(r["job_key"], r["state"]) for r in ledger if r["state"] not in CLOSED_STATES]
    assert not still_open, f"ledger rows left open: {still_open}"
    scratch = [r.identifier for r in prod.wh.list_relations(prod.dataset, f"{MODEL}__") if SCRATCH.match(r.identifier)]
    assert not scratch, f"scratch tables left behind: {scratch}"
    hashes = {h for (h,) in prod.query(f"SELECT DISTINCT request_hash FROM {prod.table(MODEL + '__requests')}")}
    assert len(hashes) == DISTINCT_REQUESTS
    store = prod.query(f"SELECT request_hash, status, response IS NOT NULL FROM {prod.table(MODEL + '__responses')}")
    per_hash = Counter(h for h, _, _ in store)
    assert [h for h, n in per_hash.items() if n > 1] == [], "the answer store has a request twice"
    assert set(per_hash) == hashes, (f"store vs requests: {len(set(per_hash) - hashes)} extra, "
                                     f"{len(hashes - set(per_hash))} missing")
    bad = [(h[:12], s) for h, s, has in store if s != "" or not has]
    assert not bad, f"requests without a good answer: {bad[:5]} ({len(bad)} in all)"
    paid = Counter(a.row.get("request_hash") for a in prod.vertex.answers)
    assert set(paid) == hashes and max(paid.values()) == 1, \
        f"answered at Vertex more than once: {[h[:12] for h, n in paid.items() if n > 1]}"
    rel = prod.query(f"SELECT COUNT(*), COUNT(DISTINCT review_id), COUNTIF(response IS NOT NULL), "
                     f"COUNTIF(status = '') FROM {prod.table(MODEL)}")
    assert rel == [(STAGED_REVIEWS,) * 4], f"{MODEL}: (rows, distinct ids, with response, ok) = {rel}"
    FIGURES.add(case, [{"job_name": r["job_name"], "state": r["state"], "row_count": r["row_count"]} for r in ledger],
                creates=creates)
    again = prod.build("run")
    assert again.rc == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert prod.vertex.count("create") == creates, "an unchanged rerun created a job"
    assert len(prod.ledger()) == len(ledger)
    assert batch_report(prod.project)["rows_sent"] == 0


# -- 5. terminal states ---------------------------------------------------------------------------------
TERMINAL_CASES = [
    # (id, outcome, output rows (None: the state's default), creates in all)
    ("SUCCEEDED", "SUCCEEDED", None, 1),
    ("PARTIALLY_SUCCEEDED", "PARTIALLY_SUCCEEDED", None, 2),  # the last third is missing: resent once
    ("FAILED-no-output", "FAILED", None, 2),
    ("FAILED-partial-output", "FAILED", 20, 2),  # 20 answers kept and landed, 32 resent
    ("CANCELLED-half-output", "CANCELLED", None, 2),
    ("CANCELLED-empty-output", "CANCELLED", 0, 2),
    ("EXPIRED-never-ran", "EXPIRED", None, 2),
    ("EXPIRED-partial-output", "EXPIRED", 20, 2),
]


@pytest.mark.emulator
@pytest.mark.parametrize("outcome, output_rows, creates", [c[1:] for c in TERMINAL_CASES],
                         ids=[c[0] for c in TERMINAL_CASES])
def test_terminal_state_one_run_and_two_reruns(prod: Prod, outcome: str, output_rows: int | None,
                                               creates: int) -> None:
    prod.vertex.next_job_outcome = outcome
    prod.vertex.next_job_output_rows = output_rows
    first = prod.build("build")
    # A job that ended badly but whose rows were all answered in the same run: exit 0 with a warning.
    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-3000:]
    no_traceback(first.stderr)
    assert prod.vertex.count("create") == creates
    report = batch_report(prod.project)
    if outcome != "SUCCEEDED":
        assert any(outcome in w for w in report["warnings"]), report["warnings"]
        assert report["rows_sent"] == DISTINCT_REQUESTS + (DISTINCT_REQUESTS - _kept(outcome, output_rows))
    states = [j["state"] for j in report["jobs"]]
    assert states[0] == outcome and all(s == "SUCCEEDED" for s in states[1:]), states
    rerun = prod.build("run")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert batch_report(prod.project)["rows_sent"] == 0
    assert_prod_invariants(prod, creates, f"vertex {outcome} output={output_rows}")  # + the second rerun


def _kept(outcome: str, output_rows: int | None) -> int:
    """Rows the first job leaves in its output table (the emulator's documented defaults)."""
    if output_rows is not None:
        return output_rows
    return {"SUCCEEDED": DISTINCT_REQUESTS, "PARTIALLY_SUCCEEDED": DISTINCT_REQUESTS - DISTINCT_REQUESTS // 3,
            "CANCELLED": DISTINCT_REQUESTS // 2, "FAILED": 0, "EXPIRED": 0}[outcome]


@pytest.mark.emulator
def test_lost_job_lands_nothing_and_is_resent_once(prod: Prod) -> None:
    """A job Vertex no longer knows (deleted while running) is LOST: closed, its rows resent once."""
    removed: list[str] = []

    def delete_once(call, state) -> None:
        if not removed:
            with prod.vertex._lock:
                for job_id, job in list(prod.vertex.jobs.items()):
                    removed.append(job_id)
                    del prod.vertex.jobs[job_id]

    remove = prod.vertex.on_state("RUNNING", delete_once)
    first = prod.build("build")
    remove()
    assert removed, "the job never ran"
    assert first.rc == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert prod.vertex.count("create") == 2
    rerun = prod.build("run")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert_prod_invariants(prod, 2, "vertex LOST (deleted while running)")


@pytest.mark.emulator
def test_paused_job_stays_in_flight_until_cancelled(prod: Prod) -> None:
    prod.vertex.next_job_outcome = "PAUSED"
    for attempt in ("build", "run"):  # one run and a rerun: both stop on the paused job
        done = prod.build(attempt)
        assert done.rc == 1, f"{attempt}: rc {done.rc}\n{done.stdout[-2000:]}"
        no_traceback(done.stderr)
        text = done.stdout + done.stderr
        assert "PAUSED" in text and "batchflow jobs cancel" in text, text[-2000:]
        job_id = next(iter(prod.vertex.jobs))
        assert job_id in text, f"the message does not name the job {job_id}"
        assert prod.vertex.count("create") == 1, "a paused job's rows were sent again"
    ledger = prod.ledger()
    assert len(ledger) == 1 and ledger[0]["state"] not in CLOSED_STATES
    cancel = bf(prod.project, "jobs", "cancel", ledger[0]["job_key"], "--target", "emu")
    assert cancel.rc == 0, cancel.stdout + cancel.stderr
    done = prod.build("run")
    assert done.rc == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_prod_invariants(prod, 1, "vertex PAUSED then jobs cancel")


# -- 6. kill -9 at each point, Vertex emulator ------------------------------------------------------------
@pytest.mark.emulator
@pytest.mark.parametrize("point", ["after_ledger_record", "after_create", "while_waiting", "before_land",
                                   "during_merge"])
def test_vertex_kill_at_stage_boundary_then_rerun(prod: Prod, point: str) -> None:
    killed = prod.build("build", kill_at=point)
    assert killed.rc == KILLED, f"never reached {point}: rc {killed.rc}\n{killed.stdout[-2000:]}{killed.stderr[-2000:]}"
    rerun = prod.build("build")
    assert rerun.rc == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    no_traceback(rerun.stderr)
    assert_prod_invariants(prod, 1, f"vertex kill -9 at {point}")
