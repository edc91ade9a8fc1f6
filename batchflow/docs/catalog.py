"""The docs site's data: every model, source, seed and test of the compiled project, as plain
JSON-ready dicts, with what the warehouse knows (column types, whether a node is built), column-level
lineage and each batch model's history.

Built from batchflow's in-memory compiled project (`api.load`), never from target/*.json; the warehouse
is read through its protocol (`batchflow.warehouse.base.Warehouse`) and only read.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from batchflow import __version__
from batchflow.docs.lineage import ModelLineage, SchemaBook, trace_model

if TYPE_CHECKING:
    from batchflow.api import Session
    from batchflow.compiler import Manifest, Node
    from batchflow.warehouse.base import Warehouse

#: the columns a batch model's relation adds to its SELECT's (see batch_stages.results_sql), with types:
#: a Gemini model's, and an embedding model's (Vertex's `predictions`, no processed_time)
BATCH_RESULT_COLUMNS = {"response": "JSON", "status": "STRING", "processed_time": "TIMESTAMP",
                        "request_hash": "STRING", "job_name": "STRING", "model_name": "STRING", "attempt": "INT64"}
EMBEDDING_RESULT_COLUMNS = {"predictions": "JSON", "status": "STRING", "request_hash": "STRING",
                            "job_name": "STRING", "model_name": "STRING", "attempt": "INT64"}
BATCH_RESULT_DOCS = {
    "response": "The model's answer (Vertex's GenerateContentResponse JSON); NULL until answered.",
    "predictions": "The embedding job's answer (Vertex's predictions JSON); NULL until answered.",
    "status": "The row's error from the batch job; empty when the request was answered.",
    "processed_time": "When the batch job answered the row.",
    "request_hash": "SHA-256 of the canonical request JSON and the model name: how answers are reused.",
    "job_name": "The batch job that landed the stored answer.",
    "model_name": "The model that answered.",
    "attempt": "How many times the row was sent.",
}


def result_columns(node: "Node") -> dict[str, str]:
    """The columns batchflow adds to a batch model's SELECT in its relation (none for other nodes)."""
    from batchflow.requests import is_embedding_model

    if node.materialized != "batch":
        return {}
    return EMBEDDING_RESULT_COLUMNS if is_embedding_model(node.config.get("model")) else BATCH_RESULT_COLUMNS


#: node config keys shown on the site (the rest is internal or repeated elsewhere)
_CONFIG_KEYS = ("materialized", "model", "key", "unique_key", "incremental_strategy", "schema", "alias", "tags",
                "max_rows_per_job", "max_concurrent_jobs", "max_attempts", "fallback_model", "enabled")


def build_catalog(session: "Session", warehouse: Optional["Warehouse"]) -> dict[str, Any]:
    """Everything the site shows, as plain data. `warehouse` None: from the project alone (no types, no
    built state, no batch history)."""
    from batchflow import testing

    manifest = session.manifest
    order = manifest.graph.topological_order()
    names = [n for n in order if n in manifest.nodes] + sorted(set(manifest.nodes) - set(order))
    children: dict[str, list[str]] = {n: [] for n in names}
    for name in names:
        for dep in manifest.nodes[name].depends_on:
            if dep in children:
                children[dep].append(name)

    built = {n: _built(warehouse, manifest.nodes[n]) for n in names}
    types = {n: _warehouse_columns(warehouse, manifest.nodes[n]) if built[n] else {} for n in names}
    lineage = trace_project(manifest, names, types)

    tests = testing.collect(manifest, set(manifest.nodes))
    tests_of: dict[str, list[str]] = {}
    for test in tests:
        tests_of.setdefault(test.node, []).append(test.name)

    history = _history_reader(session, warehouse)
    nodes: dict[str, Any] = {}
    for name in names:
        node = manifest.nodes[name]
        traced = lineage.get(name)
        nodes[name] = {
            "name": name,
            "label": name.removeprefix("source:"),
            "resource_type": node.resource_type,
            "materialized": node.materialized,
            "path": node.path,
            "relation": str(node.relation),
            "description": node.description or "",
            "tags": node.tags,
            "config": {k: _jsonable(node.config[k]) for k in _CONFIG_KEYS if k in node.config},
            "depends_on": [d for d in node.depends_on if d in manifest.nodes],
            "children": children[name],
            "raw_sql": node.raw_sql,
            "compiled_sql": _compiled_sql(node),
            "compile_error": _error_text(manifest.errors.get(name)),
            "built": built[name],
            "columns": _columns(node, types[name], traced, _file_columns(node, manifest)),
            "lineage_error": (traced.errors.get("*") if traced else None),
            "tests": tests_of.get(name, []),
            "batch": history.history(node) if history and node.materialized == "batch" else None,
        }
    return {
        "metadata": {
            "project": manifest.project.name,
            "target": manifest.target.name,
            "target_type": manifest.target.type,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "batchflow_version": __version__,
            "warehouse": warehouse is not None,
        },
        "nodes": nodes,
        "tests": [_test(t, manifest) for t in tests],
        "layout": layout(nodes),
    }


def trace_project(manifest: "Manifest", names: list[str], types: dict[str, dict[str, str]]) -> dict[str, ModelLineage]:
    """Column lineage of every model, parents first, so each model's columns are known to its children."""
    book = SchemaBook([manifest.nodes[n].relation for n in names if manifest.nodes[n].materialized != "ephemeral"])
    traced: dict[str, ModelLineage] = {}
    for name in names:
        node = manifest.nodes[name]
        if node.resource_type == "model" and name in manifest.errors:
            traced[name] = found = ModelLineage(errors={"*": "the model did not compile"})
            columns = types[name]
        elif node.resource_type == "model":
            traced[name] = found = trace_model(_compiled_sql(node), book)
            columns = types[name] or {c: "" for c in found.columns}
            if not types[name]:
                columns = {**columns, **result_columns(node)}  # what ref() of a batch model reads
        else:
            columns = types[name] or {c: "" for c in _file_columns(node, manifest)}
            columns = {**columns, **{c: "" for c in node.columns if c not in columns}}
        if node.materialized != "ephemeral":  # ephemerals are inlined: lineage passes through them
            book.add(name, node.relation, columns)
    return traced


def layout(nodes: dict[str, Any]) -> dict[str, Any]:
    """Where each node of the lineage picture goes: its layer (longest path from a node with no
    parents, so every edge points right) and its row within the layer (ordered by the mean row of its
    parents, then of its children, a few sweeps: fewer crossing edges)."""
    layer: dict[str, int] = {}
    for name, node in nodes.items():  # nodes are in dependency order
        layer[name] = 1 + max((layer[d] for d in node["depends_on"] if d in layer), default=-1)
    layers: dict[int, list[str]] = {}
    for name in nodes:
        layers.setdefault(layer[name], []).append(name)
    rows = {name: i for names in layers.values() for i, name in enumerate(names)}
    for sweep in range(4):
        key = "depends_on" if sweep % 2 == 0 else "children"
        for depth in (sorted(layers) if key == "depends_on" else sorted(layers, reverse=True)):
            def mean(name: str) -> float:
                links = [rows[n] for n in nodes[name][key] if n in rows]
                return sum(links) / len(links) if links else rows[name]
            layers[depth].sort(key=lambda n: (mean(n), rows[n]))
            rows.update({name: i for i, name in enumerate(layers[depth])})
    return {"layers": [layers[d] for d in sorted(layers)],
            "edges": [[d, name] for name, node in nodes.items() for d in node["depends_on"]]}


# ---- pieces ---------------------------------------------------------------------------------------------


def _compiled_sql(node: "Node") -> str:
    try:
        return node.compiled_sql
    except Exception:  # noqa: BLE001 - a model that did not compile has none (its error is shown)
        return ""


def _error_text(error: Any) -> Optional[str]:
    if error is None:
        return None
    where = f"{error.path}:{error.line}: " if getattr(error, "path", None) and getattr(error, "line", None) else ""
    return where + getattr(error, "message", str(error))


def _built(warehouse: Optional["Warehouse"], node: "Node") -> Optional[str]:
    """"table" / "view" when the relation exists, None when not (or when there is no warehouse)."""
    if warehouse is None or node.materialized == "ephemeral":
        return None
    try:
        return warehouse.kind(node.relation)
    except Exception:  # noqa: BLE001 - a relation the warehouse cannot look at is shown as not built
        return None


def _warehouse_columns(warehouse: Optional["Warehouse"], node: "Node") -> dict[str, str]:
    if warehouse is None:
        return {}
    try:
        return {c.name: c.type for c in warehouse.columns(node.relation)}
    except Exception:  # noqa: BLE001
        return {}


def _file_columns(node: "Node", manifest: "Manifest") -> list[str]:
    """Column names from a seed's CSV or a source's sample file header."""
    path: Optional[Path] = None
    if node.resource_type == "seed":
        path = manifest.project.root / node.path
    elif node.resource_type == "source" and node.sample:
        path = Path(node.sample)
    if path is None or not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _columns(node: "Node", types: dict[str, str], traced: Optional[ModelLineage], from_file: list[str]) -> list[dict[str, Any]]:
    """Columns in the warehouse's order (else the SELECT's, else the file's), then those only yml names."""
    added = result_columns(node)
    names = list(types) or (traced.columns if traced else []) or from_file
    if not types:
        names = [*names, *added]
    names += [c for c in node.columns if c not in names]
    out = []
    for name in names:
        doc = node.columns.get(name) or {}
        upstream = traced.upstream.get(name) if traced else None
        out.append({
            "name": name,
            "type": types.get(name) or doc.get("data_type") or added.get(name, ""),
            "description": doc.get("description") or (BATCH_RESULT_DOCS.get(name, "") if name in added else ""),
            "added_by": "batchflow" if name in added else None,
            "tests": [t if isinstance(t, str) else next(iter(t)) for t in doc.get("tests") or []],
            "upstream": None if upstream is None else [{"node": r.node, "column": r.column} for r in upstream],
            "lineage_error": traced.errors.get(name) if traced else None,
        })
    return out


def _test(test: Any, manifest: "Manifest") -> dict[str, Any]:
    from batchflow.testing import failing_rows_sql

    try:
        sql = failing_rows_sql(test, manifest)
    except Exception as exc:  # noqa: BLE001 - shown on the page instead of the SQL
        sql = f"-- cannot render: {exc}"
    return {"name": test.name, "node": test.node, "column": test.column, "kind": test.kind,
            "args": _jsonable(test.args), "path": test.path, "sql": sql}


def _history_reader(session: "Session", warehouse: Optional["Warehouse"]) -> Any:
    if warehouse is None:
        return None
    from batchflow.cost import price_table
    from batchflow.docs.history import HistoryReader

    return HistoryReader(warehouse, session.compiler.renderer.call_macro,
                         price_table(session.project.batch_defaults))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
