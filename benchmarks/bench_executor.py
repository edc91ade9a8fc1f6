#!/usr/bin/env python3
"""Local batch executor throughput: LocalBackend + MockProvider on a DuckDB shard input.

Builds an input table shaped like the lifecycle's shard input (`request_hash STRING, request JSON`, the
requests JSON-mode Gemini requests with a responseSchema holding an enum and a string, as in
bench_pipeline.py), then times

  end to end   LocalBackend(warehouse, MockProvider()).submit(JobSpec(...)) + join(): rows/s, with
               the CPU this process (and its worker processes) used, and what other processes and
               the hypervisor took meanwhile (a shared machine's noise)
  breakdown    the executor's steps one at a time over the same rows, chunk by chunk, one thread:
                 read (DuckDB -> Arrow)            warehouse.iter_batches over the input
                 request texts out of Arrow        the `request` column as Python strings
                 json parse (alone)                the executor's JSON parse of every request
                 provider.generate on dicts        MockProvider.generate on the parsed requests
                 parse + generate (executor path)  what the executor runs per chunk: the two above,
                                                   row by row (`answer_texts` / generate_json)
                 build Arrow output                response/status/processed_time columns + batch
                 warehouse write_arrow             DuckDB writes the output (JSON casts included)
                 answer in N processes             the chunks through worker processes instead
                                                   (texts in, Arrow columns out; start-up apart)
               and their sum for one thread doing everything in turn (end to end overlaps the
               answering thread with DuckDB's write on another core).

    .venv/bin/python benchmarks/bench_executor.py                       # 200,000 rows
    .venv/bin/python benchmarks/bench_executor.py --rows 1000000 --skip-breakdown
    .venv/bin/python benchmarks/bench_executor.py --rows 50000 --processes 0   # threads only

Landing (lifecycle._land) is not part of this benchmark: it is the lifecycle's, not the executor's.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pyarrow as pa  # noqa: E402

from batchflow.batch import local as local_mod  # noqa: E402
from batchflow.batch.base import JobSpec, JobState  # noqa: E402
from batchflow.batch.local import OUTPUT_FIELDS, LocalBackend  # noqa: E402
from batchflow.batch.providers.mock import MockProvider  # noqa: E402
from batchflow.warehouse.duckdb import DuckDBWarehouse  # noqa: E402

MODEL = "gemini-2.5-flash"
SYSTEM = "You label product reviews. Answer with JSON only."
WORDS = ["great", "poor", "fast", "shipping", "quality", "price", "broke", "love", "size", "support",
         "arrived", "late", "works", "perfect", "cheap", "sturdy", "returned", "again", "never", "recommend"]
GEN_CONFIG = (
    '{"temperature": 0.0, "maxOutputTokens": 256, "responseMimeType": "application/json", '
    '"responseSchema": {"type": "OBJECT", "properties": {'
    '"sentiment": {"type": "STRING", "enum": ["positive", "negative", "mixed"]}, '
    '"summary": {"type": "STRING"}}, "required": ["sentiment", "summary"]}}'
)


def build_input(wh: DuckDBWarehouse, rows: int) -> float:
    """`main.bench_in`: request_hash STRING, request JSON (built by DuckDB as gemini_request does)."""
    started = time.perf_counter()
    words = "[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    body = (f"array_to_string(list_transform(range(8 + i % 17), "
            f"lambda k: {words}[1 + ((i * 7 + k * 13 + k * k) % {len(WORDS)})]), ' ') "
            f"|| '. Review number ' || i || '.'")
    request = (
        "json_object('contents', json_array(json_object('role', 'user', 'parts', json_array(json_object('text', "
        f"'Classify the sentiment of this review: ' || {body})))), "
        f"'systemInstruction', json_object('parts', json_array(json_object('text', '{SYSTEM}'))), "
        f"'generationConfig', '{GEN_CONFIG}'::JSON)"
    )
    con = wh._cursor()  # plain DuckDB SQL: the input is test data, not a model
    con.execute(f"CREATE TABLE main.bench_src AS SELECT {request} AS request FROM range({rows}) t(i)").fetchall()
    hash_sql = "bf_request_hash(CAST(request AS VARCHAR), '" + MODEL + "')"  # as the lifecycle's build()
    con.execute(f"CREATE TABLE main.bench_in AS SELECT {hash_sql} AS request_hash, request FROM main.bench_src").fetchall()
    con.execute("DROP TABLE main.bench_src").fetchall()
    return time.perf_counter() - started


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, steal) clock ticks of the whole machine from /proc/stat (None elsewhere). Steal is time
    the hypervisor gave this VM's CPUs to someone else: a shared host's noise, invisible otherwise."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq, steal


class CpuWatch:
    """CPU used by this process (and its children: worker processes) and by everything else on the
    machine, over a `with` block: on a shared machine, the others' share says how noisy a figure is."""

    def __enter__(self):
        self.wall = time.perf_counter()
        self.own = self._own()
        self.busy = _busy_jiffies()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.own = self._own() - self.own
        busy = _busy_jiffies()
        tick = os.sysconf("SC_CLK_TCK")
        self.machine = self.steal = None
        if busy is not None and self.busy is not None:
            self.machine = (busy[0] - self.busy[0]) / tick
            self.steal = (busy[1] - self.busy[1]) / tick
        return False

    @staticmethod
    def _own() -> float:
        """CPU seconds of this process and every live or reaped descendant (worker processes too)."""
        import resource

        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = reaped.ru_utime + reaped.ru_stime
        tick = os.sysconf("SC_CLK_TCK")
        try:
            stats = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        text = (entry / "stat").read_text()
                    except OSError:
                        continue
                    fields = text[text.rindex(")") + 2:].split()
                    stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        except OSError:
            me = resource.getrusage(resource.RUSAGE_SELF)
            return total + me.ru_utime + me.ru_stime
        mine = {os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in stats.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        return total + sum(stats[pid][1] for pid in mine if pid in stats)

    def describe(self) -> str:
        text = f"cpu: this process and its workers {self.own / self.wall:.2f} cores"
        if self.machine is not None:
            text += (f", others {max(0.0, self.machine - self.own) / self.wall:.2f} cores, "
                     f"stolen by the host {self.steal / self.wall:.2f} cores")
        return text


def end_to_end(wh: DuckDBWarehouse, rows: int, out: str, hash_model: str | None, **backend_kwargs) -> tuple[float, object]:
    known = inspect.signature(LocalBackend).parameters
    kwargs = {k: v for k, v in backend_kwargs.items() if k in known and v is not None}
    backend = LocalBackend(wh, MockProvider({}), **kwargs)
    spec = JobSpec(MODEL, wh.relation("bench_in"), wh.relation(out), "bench", {}, hash_model=hash_model)
    gc.collect()
    with CpuWatch() as cpu:
        status = backend.submit(spec)
        status = backend.join(status.name)
    elapsed = cpu.wall
    backend.cpu = cpu.describe()
    if status.state is not JobState.SUCCEEDED or status.successful != rows:
        raise SystemExit(f"job ended {status.state} ok={status.successful} failed={status.failed}: {status.error}")
    close = getattr(backend, "close", None)
    if close:
        close()
    return elapsed, backend


def breakdown(wh: DuckDBWarehouse, rows: int, chunk: int, processes: int, reuse_hashes: bool) -> dict[str, float]:
    """The executor's steps one at a time over all rows (each step on its own, one thread)."""
    t: dict[str, float] = {}
    provider = MockProvider({})
    source = wh.relation("bench_in").render()

    started = time.perf_counter()
    batches = list(wh.iter_batches(f"select * from {source}", batch_size=chunk))
    t["read (DuckDB -> Arrow)"] = time.perf_counter() - started
    columns = [b.column(b.schema.get_field_index("request")) for b in batches]
    hash_columns = [b.column(b.schema.get_field_index("request_hash")) if reuse_hashes else None for b in batches]

    started = time.perf_counter()
    texts = [c.to_pylist() for c in columns]
    t["request texts out of Arrow"] = time.perf_counter() - started

    # chunk by chunk, as the executor holds them: one chunk's request dicts alive at a time
    loads = local_mod._loads
    parse_secs = generate_secs = 0.0
    generated = []
    for chunk_texts in texts:
        started = time.perf_counter()
        parsed = [loads(x) for x in chunk_texts]
        parse_secs += time.perf_counter() - started
        started = time.perf_counter()
        results = provider.generate(MODEL, parsed)
        generate_secs += time.perf_counter() - started
        # keep plain strings only: 200k live result objects would slow every later GC pass
        generated.append(([r.response_text() for r in results], [r.status for r in results]))
        del parsed, results
    t["json parse (alone)"] = parse_secs
    t["provider.generate on dicts (alone)"] = generate_secs

    del generated
    started = time.perf_counter()  # what the executor runs per chunk: parse + answer, row by row
    answered = [local_mod.answer_texts(provider, MODEL, chunk_texts, None if h is None else h.to_pylist())
                for chunk_texts, h in zip(texts, hash_columns)]
    t["parse + generate (executor path)"] = time.perf_counter() - started

    in_schema = pa.schema(list(batches[0].schema))
    out_schema = pa.schema(list(in_schema) + list(OUTPUT_FIELDS))
    started = time.perf_counter()
    out = []
    for b, (responses, statuses) in zip(batches, answered):
        now = datetime.now(timezone.utc)
        out.append(pa.RecordBatch.from_arrays(
            [b.column(i) for i in range(b.num_columns)]
            + [pa.array(responses, pa.string()), pa.array(statuses, pa.string()),
               pa.array([now] * b.num_rows, pa.timestamp("us", tz="UTC"))],
            schema=out_schema,
        ))
    t["build Arrow output"] = time.perf_counter() - started
    del answered, texts

    started = time.perf_counter()
    wh.write_arrow(wh.relation("bench_bd_out"), iter(out), out_schema, json_columns=["request", "response"])
    t["warehouse write_arrow"] = time.perf_counter() - started
    wh.drop(wh.relation("bench_bd_out"))
    del out

    if processes:  # the same chunks through worker processes (texts in, Arrow out)
        from concurrent.futures import ProcessPoolExecutor

        started = time.perf_counter()
        pool = ProcessPoolExecutor(processes, mp_context=local_mod._mp_context(),
                                   initializer=local_mod._init_worker, initargs=(provider, os.getpid()))
        list(pool.map(int, range(processes * 4)))  # start the workers
        t[f"process pool start ({processes} workers)"] = time.perf_counter() - started
        started = time.perf_counter()
        for _ in pool.map(local_mod._answer_in_worker, [MODEL] * len(columns), columns, hash_columns):
            pass
        t[f"answer in {processes} processes (wall)"] = time.perf_counter() - started
        pool.shutdown()
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--processes", type=int, default=0,
                        help="worker processes for CPU-bound providers (batch.processes; default 0: threads)")
    parser.add_argument("--memory", action="store_true", help="DuckDB :memory: instead of a temp file")
    parser.add_argument("--no-hash-reuse", action="store_true",
                        help="the executor hashes every request itself (a job whose input was hashed for "
                             "another model) instead of reusing the input's request_hash as the lifecycle's jobs do")
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="end-to-end runs (each and their median are printed)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bf-bench-exec-") as tmp:
        wh = DuckDBWarehouse(":memory:" if args.memory else Path(tmp) / "bench.duckdb")
        setup = build_input(wh, args.rows)
        print(f"rows {args.rows:,}  chunk_size {args.chunk_size:,}  concurrency {args.concurrency}  "
              f"processes {args.processes}  "
              f"warehouse {'memory' if args.memory else 'file'}  cpus {os.cpu_count()}  (input built in {setup:.1f}s)")

        times = []
        for k in range(args.repeat):
            elapsed, backend = end_to_end(wh, args.rows, f"bench_out_{k}", None if args.no_hash_reuse else MODEL,
                                          concurrency=args.concurrency,
                                          chunk_size=args.chunk_size, processes=args.processes)
            times.append(elapsed)
            wh.drop(wh.relation(f"bench_out_{k}"))
            print(f"end to end: {elapsed:.2f}s  {args.rows / elapsed:,.0f} rows/s  "
                  f"({elapsed / args.rows * 1e6:.1f} µs/row)  {backend.cpu}")
        if len(times) > 1:
            median = statistics.median(times)
            print(f"median of {len(times)}: {median:.2f}s  {args.rows / median:,.0f} rows/s  "
                  f"(range {args.rows / max(times):,.0f}-{args.rows / min(times):,.0f})")

        if not args.skip_breakdown:
            with CpuWatch() as cpu:
                t = breakdown(wh, args.rows, args.chunk_size, args.processes or (os.cpu_count() or 1),
                              not args.no_hash_reuse)
            steps = ("read", "request texts", "parse +", "build", "warehouse")
            serial = sum(v for k, v in t.items() if k.startswith(steps))
            print("breakdown (one step at a time, one thread):")
            for name, secs in t.items():
                print(f"  {name:<38} {secs:7.2f}s  {secs / args.rows * 1e6:6.1f} µs/row  "
                      f"{args.rows / secs:>12,.0f} rows/s")
            print(f"  {'sum: read..write, executor path':<38} {serial:7.2f}s  {serial / args.rows * 1e6:6.1f} µs/row  "
                  f"{args.rows / serial:>12,.0f} rows/s")
            print(f"  ({cpu.describe()})")
        wh.close()


if __name__ == "__main__":
    main()
