"""Files a run leaves in `target/`: compiled SQL, manifest.json and run_results.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow import __version__

if TYPE_CHECKING:  # annotations only: `compile` writes artifacts without importing the runner
    from batchflow.compiler import Manifest
    from batchflow.runner import NodeResult


def _metadata(manifest: Manifest, command: str) -> dict[str, Any]:
    return {
        "batchflow_version": __version__,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "command": command,
        "project": manifest.project.name,
        "target": manifest.target.name,
        "target_type": manifest.target.type,
    }


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # readers never see a half-written file
    return path


def write_compiled(manifest: Manifest) -> list[Path]:
    """Write each model's compiled BigQuery SQL to target/compiled/<project>/<model path>."""
    root = manifest.project.target_path / "compiled" / manifest.project.name
    written = []
    for node in manifest.nodes.values():
        if node.resource_type != "model":
            continue
        path = root / node.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node.compiled_sql.rstrip() + "\n")
        written.append(path)
    return written


def write_manifest(manifest: Manifest, command: str) -> Path:
    """target/manifest.json: nodes, their config, relations, dependencies and compiled SQL."""
    nodes = {}
    for name, node in manifest.nodes.items():
        nodes[name] = {
            "name": node.name,
            "resource_type": node.resource_type,
            "path": node.path,
            "relation": str(node.relation),
            "materialized": node.materialized,
            "config": node.config,
            "tags": node.tags,
            "depends_on": node.depends_on,
            "description": node.description,
            "columns": node.columns,
            "compiled_sql": node.compiled_sql,
        }
    children: dict[str, list[str]] = {n: [] for n in manifest.nodes}
    for name, node in manifest.nodes.items():
        for dep in node.depends_on:
            children.setdefault(dep, []).append(name)
    data = {
        "metadata": _metadata(manifest, command),
        "nodes": nodes,
        "parent_map": {n: node.depends_on for n, node in manifest.nodes.items()},
        "child_map": children,
    }
    return _write_json(manifest.project.target_path / "manifest.json", data)


def write_run_results(manifest: Manifest, command: str, results: list[NodeResult], elapsed: float,
                      run_id: str) -> Path:
    """target/run_results.json: status, timing and rows per node; jobs and outcomes for batch models."""
    data = {
        "metadata": {**_metadata(manifest, command), "run_id": run_id},
        "elapsed_time": round(elapsed, 3),
        "results": [asdict(r) for r in results],
        "summary": summarize(results),
    }
    return _write_json(manifest.project.target_path / "run_results.json", data)


def summarize(results: list[NodeResult]) -> dict[str, int]:
    """Counts of nodes per status."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts
