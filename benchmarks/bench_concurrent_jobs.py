"""N independent batch models against the Vertex batch emulator, each job taking a fixed time:
with enough threads the run should take about one job's duration, not N of them.

    python benchmarks/bench_concurrent_jobs.py [--models 8] [--job-seconds 5]

Three builds: N threads, 1 thread, and N threads with jobs that finish at once (the fixed cost of a
build without the waiting), each on a fresh project and warehouse.

Runs in one process: the emulator (tests/emulators/vertex.py) serves on 127.0.0.1 and writes its
output tables into the same DuckDB file the runner uses, with its own DuckDB code (tests/emulators/tables.py;
in one process both connections share DuckDB's database instance).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from typer.testing import CliRunner  # noqa: E402

from batchflow.cli import app  # noqa: E402
from tests.emulators.tables import DuckDBTables  # noqa: E402
from tests.emulators.vertex import PROJECT, VertexEmulator  # noqa: E402


def make_project(root: Path, models: int, rows: int, vertex_url: str) -> None:
    (root / "models").mkdir(parents=True)
    (root / "seeds").mkdir()
    (root / "batchflow_project.yml").write_text("name: concurrent\nprofile: concurrent\n")
    (root / "profiles.yml").write_text(f"""
concurrent:
  target: local
  outputs:
    local:
      type: duckdb
      path: {root / 'warehouse.duckdb'}
      schema: ds
      batch:
        backend: vertex
        project: test-project
        location: us-central1
        base_url: {vertex_url}
        access_token: test
        poll_interval: 0.2
""")
    (root / "seeds" / "items.csv").write_text("id,text\n" + "".join(f"{i},item {i}\n" for i in range(rows)))
    for m in range(models):
        (root / "models" / f"ask_{m}.sql").write_text(
            f"{{{{ config(materialized='batch', model='gemini-2.5-flash', key='id') }}}}\n"
            f"select id, {{{{ gemini_request(prompt=\"concat('Model {m}: ', text)\") }}}} as request "
            "from {{ ref('items') }}\n"
        )


def timed_build(root: Path, threads: int) -> float:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["build", "--project-dir", str(root), "--threads", str(threads)],
                                catch_exceptions=False)
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        sys.exit(result.output)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, default=5.0)
    args = parser.parse_args()

    # (label, threads, job seconds): the parallel run, the same models one at a time, and the parallel
    # run with instant jobs, which is everything but the waiting (compile, seeds, request tables,
    # landing, polls): what parallel adds on top of one job's duration should be about that much.
    runs = [("parallel", args.models, args.job_seconds), ("serial", 1, args.job_seconds),
            ("parallel, instant jobs", args.models, 0.0)]
    figures: dict[str, float] = {}
    for label, threads, seconds in runs:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            tables = DuckDBTables(root / "warehouse.duckdb")
            tables.ensure_dataset(PROJECT, "ds")
            emulator = VertexEmulator(tables, pending_seconds=0.0, running_seconds=seconds).start()
            try:
                make_project(root, args.models, args.rows, emulator.url)
                figures[label] = timed_build(root, threads)
                assert len(emulator.jobs) == args.models, emulator.jobs
            finally:
                emulator.stop()

    parallel, serial, overhead = (figures[label] for label, _, _ in runs)
    print(f"{args.models} batch models x {args.rows} rows, each job {args.job_seconds:.1f}s in the emulator\n")
    print(f"| run | threads | wall s | wall / one job |\n|---|---:|---:|---:|")
    for label, threads, _ in runs:
        print(f"| {label} | {threads} | {figures[label]:.2f} | {figures[label] / args.job_seconds:.2f}x |")
    print(f"\nparallel vs serial: {serial / parallel:.2f}x faster")
    print(f"parallel minus the instant-job run: {parallel - overhead:.2f}s = "
          f"{(parallel - overhead) / args.job_seconds:.2f}x one job's duration")


if __name__ == "__main__":
    main()
