"""Row counts and checksums of the tables a dbt project built, and the script that records them live.

`table_figures` is shared by the CI test (tests/test_dbt_jaffle_shop.py, on batchflow's DuckDB file) and by
this script run live against dbt-core 1.11 + dbt-duckdb in its own virtualenv:

    python3 -m venv /tmp/dbtvenv && /tmp/dbtvenv/bin/pip install "dbt-core>=1.11,<1.12" dbt-duckdb
    /tmp/dbtvenv/bin/python tests/tools/dbt_figures.py --dbt /tmp/dbtvenv/bin/dbt \
        --write tests/fixtures/dbt/jaffle_shop_figures.json

It copies ../shared/dbt/jaffle-shop to a temporary folder, puts the packages of ../shared/dbt/packages into
its dbt_packages/ (as `dbt deps` would; hub.getdbt.com cannot be reached here), seeds with
`load_source_data: true`, runs, and writes the figures of every table and view it built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[3] / "shared" / "dbt"
#: Tables whose rows depend on the day they are built (dbt_date.get_base_dates counts back from today):
#: compared by row count only.
DATE_DEPENDENT = frozenset({"metricflow_time_spine"})


def _text(value: Any) -> str:
    """One value as text that does not depend on the exact column type (INTEGER vs BIGINT,
    DECIMAL(16,2) vs DECIMAL(18,3), float noise)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        normal = value.normalize()
        return format(normal, "f") if normal != 0 else "0"
    if isinstance(value, float):
        rounded = round(value, 6)
        return format(decimal.Decimal(repr(rounded)).normalize(), "f") if rounded != 0 else "0"
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # batchflow loads CSV timestamps as BigQuery does (TIMESTAMP = UTC instants, TIMESTAMPTZ on DuckDB);
        # dbt-duckdb loads them naive: the same instants compare equal in UTC.
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def table_figures(database: str | Path, schemas: list[str]) -> dict[str, dict[str, Any]]:
    """`{schema.table: {rows, columns, checksum}}` of every table and view in `schemas` of a DuckDB file:
    the checksum is the SHA-256 of the sorted rows, each row its values as text joined by tabs."""
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    try:
        names = con.execute(
            "select table_schema, table_name from information_schema.tables where table_schema in ("
            + ", ".join("?" for _ in schemas) + ") order by 1, 2", schemas).fetchall()
        figures: dict[str, dict[str, Any]] = {}
        for schema, table in names:
            if table.startswith("_batchflow"):
                continue
            cur = con.execute(f'select * from "{schema}"."{table}"')
            columns = [d[0] for d in cur.description]
            rows = sorted("\t".join(_text(v) for v in row) for row in cur.fetchall())
            figures[f"{schema}.{table}"] = {
                "rows": len(rows),
                "columns": columns,
                "checksum": hashlib.sha256("\n".join(rows).encode()).hexdigest(),
            }
        return figures
    finally:
        con.close()


def prepare_project(dest: Path) -> Path:
    """A copy of jaffle-shop in `dest` with the shared packages in dbt_packages/ and a DuckDB profile."""
    project = dest / "jaffle-shop"
    shutil.copytree(SHARED / "jaffle-shop", project)
    for name in ("dbt_utils", "dbt_date", "audit_helper"):
        shutil.copytree(SHARED / "packages" / name, project / "dbt_packages" / name)
    (project / "profiles.yml").write_text(
        "default:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {dest / 'dbt.duckdb'}\n      schema: main\n      threads: 2\n")
    return project


def batchflow_copy(dest: Path) -> Path:
    """A copy of jaffle-shop in `dest` for batchflow, unedited but for what a user adds beside it:
    `packages.yml` pointing at the shared packages (`local:`, as /work/shared/dbt/README.md says) and
    a DuckDB profile whose `dialect: duckdb` says the project is written for DuckDB, as dbt-duckdb's is."""
    root = dest / "jaffle-shop"
    shutil.copytree(SHARED / "jaffle-shop", root)
    packages = SHARED / "packages"
    (root / "packages.yml").write_text("packages:\n" + "".join(
        f"  - local: {packages / name}\n" for name in ("dbt_utils", "dbt_date", "audit_helper")))
    (root / "profiles.yml").write_text(
        "default:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {dest / 'jaffle.duckdb'}\n      schema: main\n      threads: 2\n      dialect: duckdb\n")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dbt", default="dbt", help="the dbt executable (dbt-core 1.11 with dbt-duckdb)")
    parser.add_argument("--write", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = prepare_project(Path(tmp))
        env_args = ["--profiles-dir", str(project), "--project-dir", str(project)]
        for command in (["seed", "--vars", "{load_source_data: true}"], ["run"]):
            subprocess.run([args.dbt, *command, *env_args], check=True)
        version = subprocess.run([args.dbt, "--version"], capture_output=True, text=True).stdout
        figures = table_figures(Path(tmp) / "dbt.duckdb", ["main", "raw"])
    versions = [line.strip() for line in version.splitlines() if "installed" in line or "duckdb:" in line]
    record = {"dbt_version": versions, "date_dependent": sorted(DATE_DEPENDENT),
              "tables": figures}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    if args.write:
        args.write.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
