"""The selectors compared with `dbt ls`, and the script that records dbt's answers live.

`SELECTORS` is shared by the CI test (tests/test_select_dbt.py, against the recorded fixture) and by this
script run live against dbt-core 1.11 + dbt-duckdb in its own virtualenv (benchmarks/.venv-dbt, made on
first use as benchmarks/bench_compile.py makes it):

    .venv/bin/python tests/tools/dbt_selectors.py --write tests/fixtures/dbt/jaffle_shop_selectors.json

It copies ../shared/dbt/jaffle-shop (packages in dbt_packages/, as tests/tools/dbt_figures.py does), and for
each selector runs `dbt ls --output selector` over the resource types batchflow knows. `state:` selectors
run after the script saves the parsed manifest as the state and edits one model and one yml file
(`modify_project`); each tool compares against a state it wrote itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))

from tests.tools.dbt_figures import prepare_project  # noqa: E402

VARS = "{load_source_data: true}"
RESOURCE_TYPES = ("model", "seed", "source", "test", "unit_test")
#: (selectors after one --select, excludes after one --exclude)
SELECTORS: list[tuple[list[str], list[str]]] = [
    ([], []),
    (["stg_orders"], []),
    (["+orders"], []),
    (["orders+"], []),
    (["1+orders"], []),
    (["2+customers"], []),
    (["stg_orders+1"], []),
    (["@stg_supplies"], []),
    (["+order_items+"], []),
    (["staging"], []),
    (["marts"], []),
    (["jaffle_shop"], []),
    (["jaffle_shop.staging"], []),
    (["staging.stg_orders"], []),
    (["jaffle_shop.marts.orders"], []),
    (["fqn:jaffle_shop.staging.*"], []),
    (["fqn:*supplies"], []),
    (["stg_*"], []),
    (["jaffle-data"], []),
    (["path:models/staging"], []),
    (["path:models/marts/orders.yml"], []),
    (["path:models/marts/*.sql"], []),
    (["models/staging/stg_orders.sql"], []),
    (["path:seeds"], []),
    (["file:orders.sql"], []),
    (["file:stg_orders"], []),
    (["orders.sql"], []),
    (["package:jaffle_shop"], []),
    (["package:this"], []),
    (["package:dbt_utils"], []),
    (["config.materialized:view"], []),
    (["config.materialized:table"], []),
    (["config.schema:raw"], []),
    (["config.enabled:true"], []),
    (["config.severity:error"], []),
    (["config.docs.show:true"], []),
    (["config.contract.enforced:false"], []),
    (["config.access:protected"], []),
    (["resource_type:seed"], []),
    (["resource_type:source"], []),
    (["resource_type:test"], []),
    (["resource_type:unit_test"], []),
    (["source:ecom"], []),
    (["source:ecom.raw_orders+"], []),
    (["source:jaffle_shop.ecom.raw_items"], []),
    (["source:*"], []),
    (["test_type:generic"], []),
    (["test_type:singular"], []),
    (["test_type:unit"], []),
    (["test_type:data"], []),
    (["test_name:not_null"], []),
    (["test_name:expression_is_true"], []),
    (["test_name:relationships"], []),
    (["unit_test:test_supply_costs_sum_correctly"], []),
    (["tag:nothing_has_it"], []),
    (["version:none"], []),
    (["stg_orders stg_customers"], []),
    (["stg_orders", "stg_customers"], []),
    (["+customers,staging"], []),
    (["marts,config.materialized:table"], []),
    (["staging,test_type:generic"], []),
    (["stg_orders+,marts"], []),
    (["+orders"], ["stg_orders"]),
    (["marts"], ["orders+"]),
    ([], ["staging"]),
    ([], ["resource_type:test resource_type:unit_test"]),
    (["resource_type:model"], ["config.materialized:view"]),
    (["state:modified"], []),
    (["state:modified+"], []),
    (["state:new"], []),
    (["state:modified.body"], []),
    (["state:unmodified,resource_type:model"], []),
]
STATE_SELECTORS = [s for s in SELECTORS if any(x.startswith("state:") for x in s[0])]


def key(selection: tuple[list[str], list[str]]) -> str:
    """The fixture's key for one selection: `-s ... --exclude ...` as typed."""
    select, exclude = selection
    return " ".join((["-s", *select] if select else []) + (["--exclude", *exclude] if exclude else [])) or "(all)"


def modify_project(project: Path) -> None:
    """The edit `state:` selectors see: one model's SQL changes and one model file is added."""
    stg = project / "models" / "staging" / "stg_orders.sql"
    stg.write_text(stg.read_text() + "\n-- edited after the state was saved\n")
    (project / "models" / "marts" / "brand_new.sql").write_text("select * from {{ ref('orders') }}\n")


def ensure_dbt(python: str) -> Path:
    """benchmarks/.venv-dbt/bin/dbt, as benchmarks/bench_compile.py makes and caches it."""
    sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
    from bench_compile import ensure_dbt as make  # type: ignore[import-not-found]

    return make(python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dbt", help="the dbt executable (default: benchmarks/.venv-dbt, installed on first use)")
    parser.add_argument("--write", type=Path, help="write dbt's answers to this JSON file")
    args = parser.parse_args()
    dbt = args.dbt or str(ensure_dbt(sys.executable))
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1", "DBT_VERSION_CHECK": "false"}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = prepare_project(Path(tmp))
        common = ["--profiles-dir", str(project), "--project-dir", str(project), "--vars", VARS, "-q"]
        types = [flag for t in RESOURCE_TYPES for flag in ("--resource-type", t)]

        def ls(selection: tuple[list[str], list[str]], extra: list[str]) -> list[str]:
            select, exclude = selection
            argv = [dbt, "ls", *common, "--output", "selector", *types, *extra]
            argv += (["--select", *select] if select else []) + (["--exclude", *exclude] if exclude else [])
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
            return sorted(line for line in done.stdout.splitlines() if line.strip())

        for selection in SELECTORS:
            if selection not in STATE_SELECTORS:
                answers[key(selection)] = ls(selection, [])
                print(f"{key(selection)}: {len(answers[key(selection)])}", file=sys.stderr)
        subprocess.run([dbt, "parse", *common], capture_output=True, text=True, env=env, check=True)
        state = Path(tmp) / "state"
        state.mkdir()
        shutil.copy(project / "target" / "manifest.json", state / "manifest.json")
        modify_project(project)
        for selection in STATE_SELECTORS:
            answers[key(selection)] = ls(selection, ["--state", str(state)])
            print(f"{key(selection)}: {len(answers[key(selection)])}", file=sys.stderr)
        version = subprocess.run([dbt, "--version"], capture_output=True, text=True, env=env).stdout
    versions = [line.strip() for line in version.splitlines() if "installed" in line or "duckdb:" in line]
    text = json.dumps({"dbt_version": versions, "resource_types": list(RESOURCE_TYPES), "vars": VARS,
                       "selections": answers}, indent=2, sort_keys=True) + "\n"
    if args.write:
        args.write.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
