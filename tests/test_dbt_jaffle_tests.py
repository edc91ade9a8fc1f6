"""jaffle-shop (../shared/dbt/jaffle-shop, unedited) passes every data test and unit test on the DuckDB target,
as dbt does: the same tests (dbt's unique ids, without their 10-hex digest) with the same statuses as dbt-core
1.11 + dbt-duckdb gave (`dbt seed`, `dbt run`, `dbt test`; tests/fixtures/dbt/jaffle_shop_tests.json), from
`batchflow build` (each test right after what it reads) and again from `batchflow test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.dbt_figures import SHARED, batchflow_copy

EXPECTED = Path(__file__).parent / "fixtures" / "dbt" / "jaffle_shop_tests.json"


def _copy(tmp_path: Path) -> Path:
    return batchflow_copy(tmp_path)


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC"}
    return subprocess.run([sys.executable, "-m", "batchflow.cli", *args, "--project-dir", str(root)],
                          capture_output=True, text=True, env=env, timeout=300)


def _tests(root: Path) -> dict[str, str]:
    results = json.loads((root / "target" / "run_results.json").read_text())["results"]
    return {re.sub(r"\.[0-9a-f]{10}$", "", r["unique_id"]): r["status"] for r in results
            if r["unique_id"].startswith(("test.", "unit_test."))}


@pytest.mark.e2e
def test_jaffle_shop_passes_its_data_and_unit_tests_as_dbt_does(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    for name in ("models", "macros", "seeds", "dbt_project.yml"):  # zero edits: the project is dbt's own
        assert not subprocess.run(["diff", "-r", str(SHARED / "jaffle-shop" / name), str(root / name)]).returncode
    expected = json.loads(EXPECTED.read_text())["results"]
    assert len(expected) == 30 and sum(u.startswith("unit_test.") for u in expected) == 3

    built = _cli(root, "build", "--vars", "{load_source_data: true}")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert _tests(root) == expected
    # build's order: a unit test before its model, a model's data tests after it and before its children
    out = built.stdout
    assert out.index("PASS test_supply_costs_sum_correctly") < out.index("START table order_items")
    assert out.index("OK table orders") < out.index("PASS not_null_orders_order_id") < out.index(
        "START table customers")

    tested = _cli(root, "test")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert "30 passed, 0 failed" in tested.stdout
    assert _tests(root) == expected
    # the unit test's failing rows are named, not just counted: break one expectation in a second copy
    broken = _copy(tmp_path / "broken")
    yml = broken / "models" / "marts" / "order_items.yml"
    yml.write_text(yml.read_text().replace("supply_cost: 8.50 }", "supply_cost: 9.50 }", 1))
    result = _cli(broken, "build", "--vars", "{load_source_data: true}", "-s", "+order_items")
    assert result.returncode == 1
    statuses = _tests(broken)
    assert statuses["unit_test.jaffle_shop.order_items.test_supply_costs_sum_correctly"] == "fail"
    assert "expected, not returned: ('2', '2', 9.5)" in result.stdout
    results = json.loads((broken / "target" / "run_results.json").read_text())["results"]
    assert next(r for r in results if r["unique_id"] == "model.jaffle_shop.order_items")["status"] == "skipped"


@pytest.mark.e2e
def test_a_unit_test_waits_for_the_seed_behind_the_source_it_replaces(tmp_path: Path, monkeypatch) -> None:
    """A unit test types its given rows from the relations it replaces: on jaffle-shop the source
    `ecom.raw_stores` is the seed `raw_stores`, so stg_locations' unit test must run after that seed
    loads. The seed's load is held until a unit test starts (or 5 s pass: then none was going to):
    a unit test that does not wait for it runs first, against the missing table."""
    import threading

    from batchflow import api, unit_tests
    from batchflow.warehouse.duckdb import DuckDBWarehouse

    root = _copy(tmp_path)
    unit_started = threading.Event()
    order: list[str] = []
    real_load, real_unit = DuckDBWarehouse.load_csv, unit_tests.run_one

    def load_csv(self, relation, path):
        if relation.identifier == "raw_stores":
            unit_started.wait(5)
            order.append("seed raw_stores")
        return real_load(self, relation, path)

    def run_one(test, *args, **kwargs):
        unit_started.set()
        order.append(f"unit {test.name}")
        return real_unit(test, *args, **kwargs)

    monkeypatch.setattr(DuckDBWarehouse, "load_csv", load_csv)
    monkeypatch.setattr(unit_tests, "run_one", run_one)
    report = api.build(root, vars={"load_source_data": True}, select=["+stg_locations"])
    assert report.exit_code == 0, [(r.name, r.status, r.message) for r in report.results if r.status != "pass"]
    assert order.index("seed raw_stores") < order.index("unit test_does_location_opened_at_trunc_to_date")
