"""Reruns of the example pipeline: the first run, an unchanged rerun (0%), and a rerun with 1% of
the source rows changed. Prints requests sent and wall time per run, side by side.

    python benchmarks/bench_rerun.py [--rows 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchflow.artifacts import batchflow_results

REPO = Path(__file__).resolve().parents[1]
BATCHFLOW = Path(sys.executable).with_name("batchflow")
WORDS = ("great quality fast shipping broke quickly too small support helpful price fair battery lasts "
         "comfortable loud sturdy flimsy returned again recommend disappointed").split()


def make_project(root: Path, rows: int, seed: int) -> Path:
    """The example project with `rows` synthetic reviews instead of the 60-row sample."""
    for name in ("batchflow_project.yml", "profiles.yml", "models", "macros", "seeds", "data"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    rng = random.Random(seed)
    products = ["P100", "P200", "P300", "P400", "P500", "P600"]
    with (root / "data" / "reviews.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["review_id", "product_id", "rating", "body", "created_at"])
        for i in range(rows):
            body = " ".join(rng.choice(WORDS) for _ in range(12)) + f" (order {i})"
            out.writerow([f"R{i:07d}", rng.choice(products), rng.randint(1, 5), body,
                          f"2026-10-{1 + i % 28:02d} {i % 24:02d}:00:00"])
    return root


def change_rows(root: Path, fraction: float, seed: int) -> int:
    """Edit the text of `fraction` of the reviews; returns how many were changed."""
    path = root / "data" / "reviews.csv"
    lines = path.read_text().splitlines()
    rng = random.Random(seed)
    chosen = rng.sample(range(1, len(lines)), max(1, int((len(lines) - 1) * fraction)))
    for i in chosen:
        lines[i] = lines[i].replace("(order", "(edited order", 1)
    path.write_text("\n".join(lines) + "\n")
    return len(chosen)


def run(root: Path, *args: str) -> tuple[float, int]:
    """Wall seconds of one `batchflow` invocation and the requests its batch model sent."""
    started = time.perf_counter()
    proc = subprocess.run([str(BATCHFLOW), *args, "--project-dir", str(root)], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"batchflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    results = batchflow_results(json.loads((root / "target" / "run_results.json").read_text()))
    batch = next(r for r in results if r["name"] == "review_requests")["batch"]
    return elapsed, int(batch["rows_sent"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    figures: dict[str, list[tuple[float, int]]] = {"first run": [], "rerun, 0% changed": [], "rerun, 1% changed": []}
    changed = 0
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            root = make_project(Path(tmp), args.rows, seed=repeat)
            figures["first run"].append(run(root, "build"))
            figures["rerun, 0% changed"].append(run(root, "run"))
            changed = change_rows(root, 0.01, seed=repeat)
            figures["rerun, 1% changed"].append(run(root, "run"))

    first = statistics.median(t for t, _ in figures["first run"])
    print(f"{args.rows:,} source rows, {changed:,} changed in the 1% case; medians of {args.repeats} runs\n")
    print(f"{'run':<20} {'requests sent':>14} {'wall s':>8} {'vs first run':>13}")
    for name, values in figures.items():
        wall = statistics.median(t for t, _ in values)
        sent = sorted({s for _, s in values})
        print(f"{name:<20} {'/'.join(f'{s:,}' for s in sent):>14} {wall:>8.2f} {wall / first:>12.2f}x")


if __name__ == "__main__":
    main()
