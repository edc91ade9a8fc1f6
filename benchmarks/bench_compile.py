#!/usr/bin/env python3
"""Compile speed and memory: batchflow vs dbt-core 1.11 + dbt-duckdb, side by side, in one run.

For each size N (default 100, 500, 2000 models) the script generates a dbt project with
/work/shared/bench/gen_dbt_project.py (override with --generator or $BENCH_GEN_DBT_PROJECT), copies it
twice (batchflow and dbt both write `target/compiled/...`, so each tool gets its own byte-identical copy),
and times these commands round-robin (every repeat runs each command once, so machine noise spreads
evenly):

    batchflow --help                         CLI start-up floor (imports only)
    batchflow compile   cold                 BATCHFLOW_PARTIAL_PARSE=0: parse every yml file, render + parse every model
    batchflow compile   warm                 default: partial-parse caches in target/ from the previous run
    batchflow ls        cold / warm
    dbt parse --no-partial-parse
    dbt compile                              warm partial parse
    dbt compile --no-partial-parse
    dbt ls                                   warm partial parse

Wall seconds are medians of --repeats runs (one untimed warm-up run first); peak RSS is the child's own
`ru_maxrss` from os.wait4 (includes its waited-for descendants), in MB. The child environment drops
PYTHONDONTWRITEBYTECODE and points PYTHONPYCACHEPREFIX at the work dir, so both tools start from cached
bytecode, as installed packages do.

dbt is installed on first use into benchmarks/.venv-dbt (`pip install "dbt-core>=1.11,<1.12" dbt-duckdb`).

    .venv/bin/python benchmarks/bench_compile.py                        # 100, 500, 2000; 3 repeats
    .venv/bin/python benchmarks/bench_compile.py --sizes 2000 --repeats 5
    .venv/bin/python benchmarks/bench_compile.py --sizes 100 --repeats 1 --skip-dbt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_GENERATOR = Path("/work/shared/bench/gen_dbt_project.py")
DBT_VENV = HERE / ".venv-dbt"
DBT_REQUIREMENT = ("dbt-core>=1.11,<1.12", "dbt-duckdb")


def find_generator(explicit: str | None) -> Path:
    candidates = [explicit, os.environ.get("BENCH_GEN_DBT_PROJECT"), str(DEFAULT_GENERATOR)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    sys.exit(
        "error: the project generator gen_dbt_project.py was not found (looked at "
        f"{', '.join(c for c in candidates if c)}). Pass --generator PATH or set BENCH_GEN_DBT_PROJECT."
    )


def batchflow_exe() -> Path:
    exe = Path(sys.executable).parent / "batchflow"
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "batchflow"
    if not exe.exists():
        sys.exit(f"error: no batchflow executable next to {sys.executable} or in {REPO / '.venv/bin'}")
    return exe


def ensure_dbt(python: str) -> Path:
    """benchmarks/.venv-dbt/bin/dbt, created with `pip install` when missing."""
    dbt = DBT_VENV / "bin" / "dbt"
    if dbt.exists():
        return dbt
    print(f"installing {' '.join(DBT_REQUIREMENT)} into {DBT_VENV} ...", flush=True)
    subprocess.run([python, "-m", "venv", str(DBT_VENV)], check=True)
    subprocess.run([str(DBT_VENV / "bin" / "pip"), "install", "-q", *DBT_REQUIREMENT], check=True)
    if not dbt.exists():
        sys.exit(f"error: dbt was not installed into {DBT_VENV}")
    return dbt


@dataclass
class Command:
    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    prepare: list[list[str]] = field(default_factory=list)  # run (untimed) before every timed run
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def run_measured(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process; exits on failure with its output."""
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} (in {cwd}) exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KB


def child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["DBT_VERSION_CHECK"] = "false"
    env["DO_NOT_TRACK"] = "1"
    env.pop("BATCHFLOW_PARTIAL_PARSE", None)
    return env


def commands_for(n: int, root: Path, env: dict[str, str], dbt: Path | None) -> list[Command]:
    bf_dir, dbt_dir = root / "batchflow", root / "dbt"
    bf = str(batchflow_exe())
    cold = {**env, "BATCHFLOW_PARTIAL_PARSE": "0"}
    cmds = [
        Command("batchflow --help (start-up floor)", [bf, "--help"], bf_dir, env),
        Command("batchflow compile (cold, no cache)", [bf, "compile"], bf_dir, cold),
        Command("batchflow compile (warm cache)", [bf, "compile"], bf_dir, env),
        Command("batchflow ls (cold, no cache)", [bf, "ls"], bf_dir, cold),
        Command("batchflow ls (warm cache)", [bf, "ls"], bf_dir, env),
    ]
    if dbt is not None:
        d = str(dbt)
        common = ["--profiles-dir", str(dbt_dir), "--project-dir", str(dbt_dir)]
        cmds += [
            Command("dbt parse --no-partial-parse", [d, "parse", "--no-partial-parse", *common], dbt_dir, env),
            Command("dbt compile (warm partial parse)", [d, "compile", *common], dbt_dir, env,
                    prepare=[[d, "parse", *common]]),
            Command("dbt compile --no-partial-parse", [d, "compile", "--no-partial-parse", *common], dbt_dir, env),
            Command("dbt ls (warm partial parse)", [d, "ls", *common], dbt_dir, env, prepare=[[d, "parse", *common]]),
        ]
    return cmds


def generate(generator: Path, n: int, root: Path) -> None:
    src = root / "src"
    subprocess.run([sys.executable, str(generator), "--n", str(n), "--out", str(src), "--seed", "42"],
                   check=True, stdout=subprocess.DEVNULL)
    for name in ("batchflow", "dbt"):
        shutil.copytree(src, root / name)


def bench_size(n: int, args: argparse.Namespace, generator: Path, dbt: Path | None, work: Path) -> list[Command]:
    root = work / f"p{n}"
    generate(generator, n, root)
    env = child_env(work)
    cmds = commands_for(n, root, env, dbt)
    log = work / "last_command.log"
    print(f"\n== {n} models: warm-up ==", flush=True)
    for cmd in cmds:  # untimed: fills bytecode, file and partial-parse caches
        for prep in cmd.prepare:
            run_measured(prep, cmd.cwd, cmd.env, log)
        run_measured(cmd.argv, cmd.cwd, cmd.env, log)
    for i in range(args.repeats):
        for cmd in cmds:
            for prep in cmd.prepare:
                run_measured(prep, cmd.cwd, cmd.env, log)
            wall, rss = run_measured(cmd.argv, cmd.cwd, cmd.env, log)
            cmd.walls.append(wall)
            cmd.rss_mb.append(rss)
        print(f"   repeat {i + 1}/{args.repeats} done", flush=True)
    # The outputs must be the real thing: batchflow compiled every model.
    compiled = list((root / "batchflow" / "target" / "compiled").rglob("*.sql"))
    if len(compiled) != n:
        sys.exit(f"error: batchflow compiled {len(compiled)} files for {n} models")
    return cmds


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict[int, list[Command]]) -> dict:
    summary: dict = {}
    for n, cmds in results.items():
        by = {c.label: c for c in cmds}
        print(f"\n### {n} models (median of {len(cmds[0].walls)})\n")
        print("| command | wall s (median) | min | max | peak RSS MB |")
        print("|---|---:|---:|---:|---:|")
        for c in cmds:
            print(f"| `{c.label}` | {median(c.walls):.2f} | {min(c.walls):.2f} | {max(c.walls):.2f} | "
                  f"{max(c.rss_mb):.0f} |")
        ratios = []

        def ratio(num: str, den: str, what: str) -> None:
            if num in by and den in by:
                r = median(by[num].walls) / median(by[den].walls)
                ratios.append((what, r))

        ratio("dbt compile --no-partial-parse", "batchflow compile (cold, no cache)",
              "dbt compile --no-partial-parse / batchflow compile (cold)")
        ratio("dbt compile --no-partial-parse", "batchflow compile (warm cache)",
              "dbt compile --no-partial-parse / batchflow compile (warm)")
        ratio("dbt compile (warm partial parse)", "batchflow compile (warm cache)",
              "dbt compile (warm) / batchflow compile (warm)")
        ratio("dbt parse --no-partial-parse", "batchflow compile (cold, no cache)",
              "dbt parse --no-partial-parse / batchflow compile (cold)")
        ratio("dbt ls (warm partial parse)", "batchflow ls (warm cache)", "dbt ls / batchflow ls (warm)")
        ratio("dbt ls (warm partial parse)", "batchflow ls (cold, no cache)", "dbt ls / batchflow ls (cold)")
        if ratios:
            print("\n| ratio (speed-up of batchflow) | x |\n|---|---:|")
            for what, r in ratios:
                print(f"| {what} | {r:.1f} |")
        bf_rss = max(max(by[k].rss_mb) for k in by if k.startswith("batchflow") and "--help" not in k)
        dbt_rss = [min(by[k].rss_mb) for k in by if k.startswith("dbt")]
        if dbt_rss:
            print(f"\npeak RSS: batchflow max {bf_rss:.0f} MB vs dbt min {min(dbt_rss):.0f} MB")
        summary[n] = {
            c.label: {"wall_median": median(c.walls), "walls": c.walls, "rss_mb_max": max(c.rss_mb)} for c in cmds
        }
        summary[n]["ratios"] = dict(ratios)
    big = max(results)
    by = {c.label: c for c in results[big]}
    print(f"\n### targets at {big} models\n")
    cold = median(by["batchflow compile (cold, no cache)"].walls)
    warm = median(by["batchflow compile (warm cache)"].walls)
    if "dbt compile --no-partial-parse" in by:
        dbt_np = median(by["dbt compile --no-partial-parse"].walls)
        print(f"- compile >= 10x faster than dbt compile --no-partial-parse: cold {dbt_np / cold:.1f}x "
              f"({'met' if dbt_np / cold >= 10 else 'MISSED'}), warm {dbt_np / warm:.1f}x "
              f"({'met' if dbt_np / warm >= 10 else 'MISSED'})")
    ls_warm = median(by["batchflow ls (warm cache)"].walls)
    floor = median(by["batchflow --help (start-up floor)"].walls)
    print(f"- batchflow ls < 0.5 s: warm {ls_warm:.2f} s ({'met' if ls_warm < 0.5 else 'MISSED'}); "
          f"the CLI start-up alone (`batchflow --help`) takes {floor:.2f} s")
    dbt_labels = [k for k in by if k.startswith("dbt")]
    if dbt_labels:
        bf_rss = max(max(by[k].rss_mb) for k in by if k.startswith("batchflow"))
        dbt_rss = min(min(by[k].rss_mb) for k in dbt_labels)
        print(f"- peak RSS below dbt's: batchflow {bf_rss:.0f} MB vs dbt {dbt_rss:.0f} MB "
              f"({'met' if bf_rss < dbt_rss else 'MISSED'})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,500,2000", help="comma list of model counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generator", help="path of gen_dbt_project.py")
    parser.add_argument("--skip-dbt", action="store_true", help="time batchflow only")
    parser.add_argument("--workdir", help="keep generated projects here (default: a temp dir, removed)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    generator = find_generator(args.generator)
    dbt = None if args.skip_dbt else ensure_dbt(sys.executable)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bf-bench-compile-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), work dir {work}")
    if dbt is not None:
        version = subprocess.run([str(dbt), "--version"], capture_output=True, text=True, env=child_env(work)).stdout
        print(" ".join(line.strip() for line in version.splitlines() if "installed" in line or "duckdb" in line))
    try:
        results = {n: bench_size(n, args, generator, dbt, work) for n in sizes}
        summary = report(results)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
