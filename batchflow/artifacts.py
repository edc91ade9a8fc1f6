"""Files a run leaves in `target/`: compiled SQL, manifest.json and run_results.json."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow import __version__

if TYPE_CHECKING:  # annotations only: `compile` writes artifacts without importing the runner
    from batchflow.compiler import Manifest
    from batchflow.graph import NodeInfo
    from batchflow.runner import NodeResult


MANIFEST_SCHEMA = "https://schemas.getdbt.com/dbt/manifest/v12.json"
RUN_RESULTS_SCHEMA = "https://schemas.getdbt.com/dbt/run-results/v6.json"
#: the dbt-core release whose artifacts these follow
DBT_VERSION = "1.11.0"
#: batchflow's own fields live under this key: `meta.batchflow` of a manifest node, `adapter_response.batchflow`
#: of a run result (dbt's schema takes no other extra keys there)
NAMESPACE = "batchflow"
_RUN_STATUSES = {"success", "error", "skipped", "partial success", "no-op", "reused"}


def _metadata(manifest: Manifest, command: str, schema: str, invocation_id: str = "") -> dict[str, Any]:
    """dbt's artifact metadata, with batchflow's run facts in `env` (string values only, as dbt's schema says)."""
    project = manifest.project.name
    return {
        "dbt_schema_version": schema,
        "dbt_version": DBT_VERSION,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "invocation_id": invocation_id or str(uuid.uuid4()),
        "env": {"BATCHFLOW_VERSION": __version__, "BATCHFLOW_COMMAND": command,
                "BATCHFLOW_TARGET": manifest.target.name},
        "project_name": project,
        "project_id": hashlib.md5(project.encode()).hexdigest(),
        "adapter_type": manifest.target.type,
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
        if node.resource_type not in ("model", "snapshot"):
            continue
        path = root / node.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node.compiled_sql.rstrip() + "\n")
        written.append(path)
    return written


def _hooks(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value] if value else []
    return [h if isinstance(h, dict) else {"sql": str(h), "transaction": True, "index": i} for i, h in enumerate(items)]


def _config(info: NodeInfo) -> dict[str, Any]:
    """A node's config as dbt writes it (hooks as {sql, transaction, index})."""
    config = json.loads(json.dumps(info.config, default=str))
    for key in ("pre_hook", "post_hook", "pre-hook", "post-hook"):
        if key in config:
            config[key.replace("_", "-")] = _hooks(config.pop(key))
    return config


def manifest_data(manifest: Manifest, command: str, selection: Any = None) -> dict[str, Any]:
    """The manifest in dbt's v12 schema: `nodes` (models, seeds, tests) and `sources` by unique id, empty
    `macros`/`docs`/`exposures`/... where batchflow has none, `parent_map` and `child_map` by unique id.
    batchflow's own facts of each node (its batchflow name, relation, dependencies by name) are under
    `meta.batchflow`."""
    from batchflow import selection as selection_mod

    selection = selection or selection_mod.build(manifest, with_state=True)
    graph = selection.graph
    nodes: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    unit_tests: dict[str, Any] = {}
    for uid in sorted(graph.info):
        info = graph.info[uid]
        key = selection.keys.get(uid)
        node = manifest.nodes.get(key) if key else None
        relation = node.relation if node is not None else None
        parents = sorted(graph.parents[uid])
        own: dict[str, Any] = {"name": key or info.name}
        if node is not None:
            own.update(relation=str(node.relation), materialized=node.materialized, depends_on=list(node.depends_on))
        entry: dict[str, Any] = {
            "database": relation.database if relation is not None else None,
            "schema": relation.schema if relation is not None else (info.config.get("schema") or ""),
            "name": info.name,
            "resource_type": info.resource_type,
            "package_name": info.package_name,
            "path": info.path.split("/", 1)[-1],
            "original_file_path": info.path,
            "unique_id": uid,
            "fqn": list(info.fqn),
            "description": info.description,
            "tags": list(info.tags),
            "meta": {**(info.config.get("meta") or {}), NAMESPACE: own},
            "patch_path": f"{info.package_name}://{info.patch_path}" if info.patch_path else None,
        }
        columns = {name: {"name": name, "description": doc.get("description") or "", "meta": {},
                          "data_type": doc.get("data_type"), "constraints": [], "quote": None, "tags": []}
                   for name, doc in (node.columns.items() if node is not None else [])}
        if info.resource_type == "source":
            sources[uid] = {**entry, "source_name": info.source_name, "source_description": "", "loader": "",
                            "identifier": relation.identifier if relation is not None else info.name,
                            "columns": columns, "config": _config(info),
                            "relation_name": info.relation or None, "unrendered_config": {}}
            continue
        if info.resource_type == "unit_test":
            model = next((graph.info[p].name for p in parents), "")
            unit_tests[uid] = {k: entry[k] for k in ("name", "resource_type", "package_name", "path",
                                                     "original_file_path", "unique_id", "fqn", "description")} | {
                "model": model, "given": [], "expect": {"rows": []}, "config": _config(info),
                "depends_on": {"macros": [], "nodes": parents}, "checksum": info.checksum}
            continue
        entry.update(
            alias=relation.identifier if relation is not None else info.name,
            checksum={"name": "sha256", "checksum": info.checksum} if info.checksum else {"name": "none", "checksum": ""},
            config=_config(info),
            columns=columns,
            relation_name=info.relation or None,
            raw_code=node.raw_sql if node is not None else "",
            language="sql",
            refs=[{"name": graph.info[p].name, "package": None, "version": None} for p in parents
                  if graph.info[p].resource_type in ("model", "seed", "snapshot")],
            sources=[[graph.info[p].source_name, graph.info[p].name] for p in parents
                     if graph.info[p].resource_type == "source"],
            metrics=[],
            depends_on={"macros": [], "nodes": parents},
            compiled=node is not None and info.resource_type in ("model", "snapshot"),
            compiled_code=node.compiled_sql if node is not None and info.resource_type in ("model", "snapshot")
            else None,
            compiled_path=(f"target/compiled/{manifest.project.name}/{info.path}"
                           if info.resource_type in ("model", "snapshot") else None),
            extra_ctes_injected=False,
            extra_ctes=[],
            unrendered_config={},
        )
        if info.resource_type == "model":
            entry.update(contract={"enforced": False, "alias_types": True, "checksum": None}, access="protected",
                         constraints=[], version=None, latest_version=None)
        if info.resource_type == "seed":
            entry["root_path"] = str(manifest.project.root)
            for key in ("refs", "sources", "metrics", "compiled", "compiled_code", "compiled_path",
                        "extra_ctes_injected", "extra_ctes", "language"):
                entry.pop(key, None)
            entry["depends_on"] = {"macros": []}
        if info.resource_type == "test":
            entry["column_name"] = (selection.tests[uid].column if uid in selection.tests else None)
            if info.test_type == "generic":
                entry["test_metadata"] = {"name": info.test_name, "kwargs": {}, "namespace": None}
                entry["attached_node"] = parents[0] if parents else None
        nodes[uid] = entry
    children: dict[str, list[str]] = {uid: sorted(graph.children[uid]) for uid in sorted(graph.info)}
    return {
        "metadata": _metadata(manifest, command, MANIFEST_SCHEMA),
        "nodes": nodes,
        "sources": sources,
        "macros": {},
        "docs": {},
        "exposures": {},
        "metrics": {},
        "groups": {},
        "selectors": {name: {"name": name, "definition": str(spec)} for name, spec in selection.selectors.items()},
        "disabled": {},
        "parent_map": {uid: sorted(graph.parents[uid]) for uid in sorted(graph.info)},
        "child_map": children,
        "group_map": {},
        "saved_queries": {},
        "semantic_models": {},
        "unit_tests": unit_tests,
    }


def write_manifest(manifest: Manifest, command: str, selection: Any = None) -> Path:
    """target/manifest.json in dbt's v12 schema (see `manifest_data`)."""
    return _write_json(manifest.project.target_path / "manifest.json", manifest_data(manifest, command, selection))


def dbt_status(result: NodeResult) -> str:
    """A batchflow status as dbt writes it: tests pass/fail/error; `pending` (batch jobs still running)
    and `interrupted` are `partial success` for a model whose run stopped between submit and land."""
    if result.status in ("pass", "warn", "fail"):  # data tests and unit tests say it as dbt does
        return result.status
    if result.resource_type in ("test", "unit_test"):
        if result.status == "success":
            return "pass"
        return "fail" if result.status == "error" and result.rows else "error" if result.status == "error" else "skipped"
    if result.status in _RUN_STATUSES:
        return result.status
    return "partial success"


def run_results_data(manifest: Manifest, command: str, results: list[NodeResult], elapsed: float,
                     run_id: str, selection: Any = None) -> dict[str, Any]:
    """run_results.json in dbt's v6 schema. Each result's batchflow fields (its name, batchflow status,
    materialization, relation, rows, batch report) are under `adapter_response.batchflow`."""
    from batchflow import selection as selection_mod

    selection = selection or selection_mod.build(manifest)
    uid_of = {key: uid for uid, key in selection.keys.items()}
    test_uid = {}
    for uid, ref in selection.tests.items():
        node_name = ref.node.replace("source:", "").replace(".", "_")
        test_uid[(ref.node, f"{ref.kind}_{node_name}_{ref.column}")] = uid
    out = []
    for r in results:
        if r.unique_id:
            uid = r.unique_id
        elif r.resource_type == "test":
            uid = test_uid.get((r.relation, r.name)) or f"test.{manifest.project.name}.{r.name}"
        else:
            uid = uid_of.get(r.name) or f"{r.resource_type}.{manifest.project.name}.{r.name}"
        timing = [{"name": "execute", "started_at": r.started_at, "completed_at": r.completed_at}] if r.started_at else []
        own = asdict(r)
        response: dict[str, Any] = {"_message": r.message or r.status, NAMESPACE: own}
        if r.rows is not None:
            response["rows_affected"] = r.rows
        if r.bytes_processed is not None:
            response["bytes_processed"] = r.bytes_processed
        node = manifest.nodes.get(r.name)
        out.append({
            "status": dbt_status(r),
            "timing": timing,
            "thread_id": "Thread-1",
            "execution_time": r.execution_time,
            "adapter_response": response,
            "message": r.message or None,
            "failures": r.rows if r.resource_type in ("test", "unit_test") else None,
            "unique_id": uid,
            "compiled": (node is not None and node.resource_type in ("model", "snapshot")) or r.compiled_code is not None,
            "compiled_code": node.compiled_sql if node is not None and node.resource_type in ("model", "snapshot")
            else r.compiled_code,
            "relation_name": r.relation or None,
            "batch_results": None,
        })
    return {
        "metadata": {k: v for k, v in _metadata(manifest, command, RUN_RESULTS_SCHEMA).items()
                     if k in ("dbt_schema_version", "dbt_version", "generated_at", "invocation_id", "env")}
        | {"env": {"BATCHFLOW_VERSION": __version__, "BATCHFLOW_COMMAND": command,
                   "BATCHFLOW_TARGET": manifest.target.name, "BATCHFLOW_RUN_ID": run_id}},
        "results": out,
        "elapsed_time": round(elapsed, 3),
        "args": {"which": command, "batchflow_run_id": run_id, "batchflow_summary": summarize(results)},
    }


def write_run_results(manifest: Manifest, command: str, results: list[NodeResult], elapsed: float,
                      run_id: str, selection: Any = None) -> Path:
    """target/run_results.json in dbt's v6 schema (see `run_results_data`)."""
    data = run_results_data(manifest, command, results, elapsed, run_id, selection)
    return _write_json(manifest.project.target_path / "run_results.json", data)


def batchflow_results(data: dict[str, Any]) -> list[dict[str, Any]]:
    """batchflow's own view of a run_results.json: one dict per result with batchflow's fields (name,
    resource_type, materialized, status as batchflow says it, relation, message, rows, batch, ...)
    plus `unique_id` and `dbt_status`."""
    out = []
    for result in data.get("results") or []:
        own = dict((result.get("adapter_response") or {}).get(NAMESPACE) or {})
        own.setdefault("status", result.get("status"))
        own.setdefault("message", result.get("message") or "")
        out.append({**own, "unique_id": result.get("unique_id"), "dbt_status": result.get("status")})
    return out


def result_statuses(data: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """unique_id -> its statuses in a run_results.json (dbt's, then batchflow's where different), for the
    `result:` selector; a file dbt wrote works too."""
    statuses: dict[str, tuple[str, ...]] = {}
    for result in data.get("results") or []:
        own = ((result.get("adapter_response") or {}).get(NAMESPACE) or {}).get("status")
        values = tuple(dict.fromkeys(s for s in (result.get("status"), own) if s))
        if result.get("unique_id"):
            statuses[result["unique_id"]] = values
    return statuses


def summarize(results: list[NodeResult]) -> dict[str, int]:
    """Counts of nodes per status."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts
