"""Data tests declared in yml (`not_null`, `unique`, `accepted_values`, `relationships`): each is
a BigQuery query counting the rows that break it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from batchflow.compiler import Manifest
from batchflow.errors import BatchflowError, ConfigError
from batchflow.relation import string_literal
from batchflow.runner import NodeResult
from batchflow.warehouse.base import Warehouse

SUPPORTED = ("not_null", "unique", "accepted_values", "relationships")
_REF = re.compile(r"""^\s*ref\(\s*['"]([^'"]+)['"]\s*\)\s*$""")


@dataclass
class DataTest:
    """One test on one column of one node."""

    name: str  # e.g. not_null_review_labels_review_id
    node: str
    column: str
    kind: str
    args: dict[str, Any]
    path: str


def collect(manifest: Manifest, selected: set[str]) -> list[DataTest]:
    """The column tests of the selected models, seeds and sources, in a stable order. Test names were
    checked when the project loaded (an unknown one is an error there); tests batchflow does not run
    (`dbt_utils.*`, the project's own generic tests) were warned about then and are left out here."""
    tests: list[DataTest] = []
    for name in sorted(selected):
        node = manifest.nodes[name]
        for column, doc in node.columns.items():
            for spec in doc.get("tests") or []:
                kind, args = (spec, {}) if isinstance(spec, str) else next(iter(dict(spec).items()))
                if kind not in SUPPORTED:
                    continue  # a package or custom generic test: reported as a warning when the project loaded
                args = dict(args or {})
                args = dict(args.get("arguments", args))  # dbt 1.10 nests arguments
                test_name = f"{kind}_{node.name.replace('source:', '').replace('.', '_')}_{column}"
                tests.append(DataTest(test_name, name, column, kind, args, node.path))
    return tests


def failing_rows_sql(test: DataTest, manifest: Manifest) -> str:
    """BigQuery SQL returning one row, `failures`, for `test`."""
    rel = manifest.nodes[test.node].relation.render()
    col = f"`{test.column}`"
    if test.kind == "not_null":
        return f"SELECT COUNT(*) AS failures FROM {rel} WHERE {col} IS NULL"
    if test.kind == "unique":
        return (f"SELECT COUNT(*) AS failures FROM (SELECT {col} FROM {rel} WHERE {col} IS NOT NULL "
                f"GROUP BY {col} HAVING COUNT(*) > 1)")
    if test.kind == "accepted_values":
        values = test.args.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{test.name}: accepted_values needs a non-empty `values:` list", test.path)
        listed = ", ".join(string_literal(str(v)) for v in values)
        return f"SELECT COUNT(*) AS failures FROM {rel} WHERE {col} IS NOT NULL AND CAST({col} AS STRING) NOT IN ({listed})"
    if test.kind == "relationships":
        match = _REF.match(str(test.args.get("to", "")))
        field = test.args.get("field")
        if not match or not field or match.group(1) not in manifest.nodes:
            raise ConfigError(f"{test.name}: relationships needs `to: ref('model')` and `field:`", test.path)
        parent = manifest.nodes[match.group(1)].relation.render()
        return (f"SELECT COUNT(*) AS failures FROM {rel} c LEFT JOIN {parent} p ON c.{col} = p.`{field}` "
                f"WHERE c.{col} IS NOT NULL AND p.`{field}` IS NULL")
    raise ConfigError(f"{test.name}: unknown test {test.kind!r}; batchflow runs {', '.join(SUPPORTED)}", test.path)


def run(tests: list[DataTest], manifest: Manifest, warehouse: Warehouse) -> list[NodeResult]:
    """Run each test; a test with failing rows is an error result naming the count."""
    results = []
    for test in tests:
        started = time.perf_counter()
        result = NodeResult(name=test.name, resource_type="test", materialized="test", status="success",
                            relation=test.node, path=test.path)
        try:
            failures = int(warehouse.query_arrow(failing_rows_sql(test, manifest)).column("failures")[0].as_py())
            result.rows = failures
            if failures:
                result.status = "error"
                result.message = f"{failures:,} row(s) fail {test.kind} on {test.node}.{test.column}"
        except BatchflowError as exc:
            result.status = "error"
            result.message = exc.message
        result.execution_time = round(time.perf_counter() - started, 3)
        results.append(result)
    return results

