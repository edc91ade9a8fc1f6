"""The rows dbt-core 1.11 + dbt-duckdb's snapshots hold after three runs (insert, change a row, delete a row),
for each strategy and hard_deletes mode, and the script that records them live:

    benchmarks/.venv-dbt/bin/python tests/tools/dbt_snapshots.py --dbt benchmarks/.venv-dbt/bin/dbt \
        --write tests/fixtures/dbt/snapshot_rows.json

(the venv of benchmarks/bench_compile.py's `ensure_dbt`). Times that are snapshot times (the warehouse clock)
are written as `run 1`..`run 3`, the run whose clock they come from; source times as ISO text. tests/test_snapshots.py
replays the same runs through batchflow.snapshots and expects the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: the source table of each run: (id, v, updated_at)
RUNS: list[list[tuple[int, str, str]]] = [
    [(1, "a", "2024-01-01 00:00:00"), (2, "b", "2024-01-01 00:00:00")],
    [(1, "a2", "2024-02-01 00:00:00"), (2, "b", "2024-01-01 00:00:00")],
    [(1, "a2", "2024-02-01 00:00:00")],
]
#: snapshot name -> config
CASES: dict[str, dict[str, Any]] = {
    f"{strategy}_{mode}": {"unique_key": "id", "strategy": strategy, "hard_deletes": mode,
                           **({"updated_at": "updated_at"} if strategy == "timestamp" else {"check_cols": ["v"]})}
    for strategy in ("timestamp", "check") for mode in ("ignore", "invalidate", "new_record")
}
SOURCE_TIMES = sorted({t for run in RUNS for _, _, t in run})


def label(value: Any, windows: list[tuple[dt.datetime, dt.datetime]]) -> Any:
    """A time as its source text, or `run N` for a snapshot time in run N's window; other values as they are."""
    if not isinstance(value, dt.datetime):
        return value
    naive = value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    text = naive.strftime("%Y-%m-%d %H:%M:%S")
    if text in SOURCE_TIMES:
        return text
    for i, (start, end) in enumerate(windows, 1):
        if start <= naive <= end:
            return f"run {i}"
    raise AssertionError(f"{value} is neither a source time nor in a run's window")


def normalized(rows: list[dict[str, Any]], windows: list[tuple[dt.datetime, dt.datetime]]) -> list[list[Any]]:
    """Rows as [id, v, valid_from, valid_to, is_deleted or None], sorted."""
    out = [[r["id"], r["v"], label(r["dbt_valid_from"], windows), label(r["dbt_valid_to"], windows),
            r.get("dbt_is_deleted")] for r in rows]
    return sorted(out, key=lambda r: [str(x) for x in r])


def _load(con: Any, run: list[tuple[int, str, str]]) -> None:
    con.execute("create or replace table main.src (id integer, v varchar, updated_at timestamp)")
    for row in run:
        con.execute("insert into main.src values (?, ?, ?)", list(row))


def record(dbt: Path) -> dict[str, list[list[Any]]]:
    """Run dbt snapshot three times in a temporary project; the normalized rows of each snapshot."""
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "snapshots").mkdir()
        (root / "models").mkdir()
        (root / "dbt_project.yml").write_text("name: snaps\nprofile: snaps\nconfig-version: 2\n")
        (root / "profiles.yml").write_text(f"snaps:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                           f"      path: {root / 'w.duckdb'}\n      schema: main\n")
        (root / "models/sources.yml").write_text("version: 2\nsources:\n  - name: raw\n    schema: main\n"
                                                 "    tables:\n      - name: src\n")
        entries = "".join(f"  - name: {name}\n    relation: source('raw', 'src')\n    config:\n"
                          + "".join(f"      {k}: {json.dumps(v)}\n" for k, v in config.items())
                          for name, config in CASES.items())
        (root / "snapshots/snapshots.yml").write_text("snapshots:\n" + entries)
        windows = []
        for run in RUNS:
            with duckdb.connect(str(root / "w.duckdb")) as con:
                _load(con, run)
            start = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            subprocess.run([str(dbt), "snapshot", "--project-dir", str(root), "--profiles-dir", str(root)],
                           check=True, capture_output=True)
            windows.append((start, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)))
        with duckdb.connect(str(root / "w.duckdb")) as con:
            found = {}
            for name in CASES:
                cur = con.execute(f"select * from main.{name}")
                cols = [d[0] for d in cur.description]
                found[name] = normalized([dict(zip(cols, r)) for r in cur.fetchall()], windows)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbt", type=Path, required=True)
    parser.add_argument("--write", type=Path, required=True)
    args = parser.parse_args()
    rows = record(args.dbt)
    args.write.write_text(json.dumps({"dbt": "dbt-core 1.11 + dbt-duckdb", "runs": RUNS, "snapshots": rows},
                                     indent=1) + "\n")
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
