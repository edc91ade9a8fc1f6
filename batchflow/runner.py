"""Executing a selection of the manifest: materializations, a thread pool over the DAG, run results.

The runner talks to the warehouse and the batch backend only through their protocols; which
concrete adapter it gets is decided by `batchflow.adapters`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from batchflow.batch.base import BatchBackend
from batchflow.compiler import Compiler, Manifest, Node, inline_unbuilt
from batchflow.csvfile import shape_problem
from batchflow.errors import BatchflowError, ConfigError
from batchflow.interrupt import Interrupt, block_signals_in_this_thread
from batchflow.ledger import Ledger
from batchflow.cost import RunBudget, price_table
from batchflow.lifecycle import BatchLifecycle, BatchProgress, RunFlags
from batchflow.seeds import load_seed, missing_relation_hint, upstream_seeds
from batchflow.warehouse.base import Warehouse


@dataclass
class NodeResult:
    """The outcome of one node in a run."""

    name: str
    resource_type: str
    materialized: str
    #: "success" | "error" | "skipped" | "pending" (batch jobs still running, --no-wait) | "interrupted"
    #: (a signal stopped it: what finished is landed, jobs still running stay in the ledger)
    status: str
    relation: str = ""
    message: str = ""
    rows: int | None = None
    execution_time: float = 0.0
    started_at: str = ""
    completed_at: str = ""
    batch: dict[str, Any] | None = None
    bytes_processed: int | None = None  # dry runs on BigQuery
    path: str = ""
    line: int | None = None


class Reporter(Protocol):
    """Receives progress from the runner (the CLI prints it; tests may record it)."""

    def node_started(self, node: Node, index: int, total: int) -> None:
        """A node began executing."""

    def node_finished(self, node: Node, result: NodeResult, index: int, total: int) -> None:
        """A node finished (success, error or skipped)."""

    def batch_progress(self, node: Node, progress: BatchProgress) -> None:
        """A batch model's jobs moved (rows done and failed out of the rows sent), or it entered
        another phase (landing a job's output, building the results table)."""


class SilentReporter:
    """A reporter that prints nothing."""

    def node_started(self, node: Node, index: int, total: int) -> None:  # noqa: D102
        pass

    def node_finished(self, node: Node, result: NodeResult, index: int, total: int) -> None:  # noqa: D102
        pass

    def batch_progress(self, node: Node, progress: BatchProgress) -> None:  # noqa: D102
        pass


@dataclass
class RunOptions:
    """Switches of one run."""

    threads: int = 4
    full_refresh: bool = False
    load_source_samples: bool = False  # local target: sources are read from their sample CSVs
    batch: RunFlags = field(default_factory=RunFlags)
    interrupt: Interrupt = field(default_factory=Interrupt)  # set by a signal: start nothing new
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")[:-3])


def load_source_samples(manifest: Manifest, warehouse: Warehouse, names: set[str]) -> None:
    """Local target: load the sample CSV of each named source into the source's relation."""
    for name in sorted(names):
        node = manifest.nodes.get(name)
        if node is None or node.resource_type != "source" or node.sample is None:
            continue
        warehouse.ensure_schema(node.relation.schema)
        warehouse.load_csv(node.relation, node.sample)


def _hinted(manifest: Manifest, message: str) -> str:
    """The message, with which node would create a relation it says does not exist."""
    hint = missing_relation_hint(manifest, message)
    return f"{message}\n{hint}" if hint else message


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Runner:
    """Runs selected nodes in dependency order on a thread pool."""

    def __init__(
        self,
        manifest: Manifest,
        compiler: Compiler,
        warehouse: Warehouse,
        backend_factory: Callable[[], BatchBackend],
        reporter: Reporter,
        options: RunOptions,
    ):
        self.manifest = manifest
        self.compiler = compiler
        self.wh = warehouse
        self._backend_factory = backend_factory
        self._backend: BatchBackend | None = None
        self._ledger: Ledger | None = None
        self.reporter = reporter
        self.options = options
        self._lock = threading.Lock()  # batch models on several threads share one backend and ledger
        defaults = manifest.project.batch_defaults
        self.prices = price_table(defaults)
        self.budget = RunBudget(defaults)

    # -- scheduling ------------------------------------------------------------------------------
    def run(self, selected: set[str]) -> list[NodeResult]:
        """Execute `selected` nodes (sources are prepared, not reported). Failed nodes skip their
        downstream; independent branches go on."""
        order = [n for n in self.manifest.graph.topological_order() if n in selected]
        self.preflight(order)
        sources = [n for n in order if self.manifest.nodes[n].resource_type == "source"]
        order = [n for n in order if n not in sources]
        if self.options.load_source_samples:
            needed = set(sources) | {d for n in order for d in self.manifest.nodes[n].depends_on}
            load_source_samples(self.manifest, self.wh, needed)
        results: dict[str, NodeResult] = {}
        deps = {n: [d for d in self.manifest.nodes[n].depends_on if d in order] for n in order}
        # A seed loaded in this run goes before every selected node that reads it, also through models
        # that are not selected (`run -s mart` loads a changed seed the mart's upstream reads).
        seeds_here = {n for n in order if self.manifest.nodes[n].resource_type == "seed"}
        if seeds_here:
            for n in order:
                deps[n] += sorted((upstream_seeds(self.manifest, {n}) & seeds_here) - set(deps[n]) - {n})
        index = {n: i + 1 for i, n in enumerate(order)}
        running: dict[Future[NodeResult], str] = {}
        remaining = list(order)
        with ThreadPoolExecutor(max_workers=max(1, self.options.threads), initializer=block_signals_in_this_thread) as pool:
            while remaining or running:
                for name in list(remaining):
                    if any(d not in results for d in deps[name]):
                        continue
                    remaining.remove(name)
                    failed = [d for d in deps[name] if results[d].status != "success" or self._dry_batch(d)]
                    node = self.manifest.nodes[name]
                    if self.options.interrupt.is_set():
                        results[name] = NodeResult(
                            name=node.name, resource_type=node.resource_type, materialized=node.materialized,
                            status="skipped", relation=str(node.relation), path=node.path,
                            message=f"skipped: the run was interrupted ({self.options.interrupt.name})")
                        self.reporter.node_finished(node, results[name], index[name], len(order))
                        continue
                    if failed:
                        results[name] = self._skipped(node, failed, results)
                        self.reporter.node_finished(node, results[name], index[name], len(order))
                        continue
                    self.reporter.node_started(node, index[name], len(order))
                    running[pool.submit(self._execute, node)] = name
                if not running:
                    continue
                # A timeout, so the main thread wakes to run signal handlers promptly.
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    results[name] = future.result()
                    self.reporter.node_finished(self.manifest.nodes[name], results[name], index[name], len(order))
        return [results[n] for n in order]

    def preflight(self, order: list[str]) -> None:
        """Checks that must pass before anything runs: every seed the run may load has a well-formed CSV
        (file:line of the first ragged row), and batch models need a warehouse and a backend in one
        region, so a wrong location fails the run up front, not after an hour of SQL."""
        for name in sorted(upstream_seeds(self.manifest, set(order))):
            path = self.manifest.project.seeds[name].abs_path
            problem = shape_problem(path)
            if problem is not None:
                raise ConfigError(f"seed {name}: {problem[0]}", path, problem[1])
        if not any(self.manifest.nodes[n].materialized == "batch" for n in order):
            return
        self.wh.check_batch_location()
        if not self.options.batch.dry_run:
            _ = self.backend  # opening it validates its project and location

    def _dry_batch(self, name: str) -> bool:
        """In a dry run a batch model lands nothing new, so what reads it is not rebuilt."""
        return self.options.batch.dry_run and self.manifest.nodes[name].materialized == "batch"

    def _skipped(self, node: Node, failed: list[str], results: dict[str, NodeResult]) -> NodeResult:
        reasons = {results[d].status for d in failed}
        if reasons == {"interrupted"}:
            why = f"upstream {', '.join(failed)} was interrupted"
        elif reasons == {"pending"}:
            why = f"upstream {', '.join(failed)} has batch jobs still running; a later run builds this"
        elif self.options.batch.dry_run and all(self._dry_batch(d) or results[d].status == "skipped" for d in failed):
            why = f"dry run: upstream {', '.join(failed)} submitted nothing"
        else:
            why = f"upstream {', '.join(failed)} did not succeed"
        return NodeResult(
            name=node.name,
            resource_type=node.resource_type,
            materialized=node.materialized,
            status="skipped",
            relation=str(node.relation),
            message=f"skipped: {why}",
            path=node.path,
        )

    # -- one node --------------------------------------------------------------------------------
    def _execute(self, node: Node) -> NodeResult:
        started = time.perf_counter()
        result = NodeResult(
            name=node.name,
            resource_type=node.resource_type,
            materialized=node.materialized,
            status="success",
            relation=str(node.relation),
            started_at=_now(),
            path=node.path,
        )
        try:
            self.wh.ensure_schema(node.relation.schema)
            result.rows = self._materialize(node, result)
        except BatchflowError as exc:
            result.status = "error"
            result.message = _hinted(self.manifest, exc.message)
            result.path = exc.path or node.path
            result.line = exc.line
        except Exception as exc:  # noqa: BLE001 - one model's bug must not kill the others
            result.status = "error"
            result.message = _hinted(self.manifest, f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        result.execution_time = round(time.perf_counter() - started, 3)
        result.completed_at = _now()
        return result

    def _materialize(self, node: Node, result: NodeResult) -> int | None:
        if node.resource_type == "seed":
            with self._lock:  # seeds on several threads share the seed-state table
                return load_seed(self.manifest, self.wh, node.name)
        kind = node.materialized
        sql = node.compiled_sql.strip().rstrip(";")
        if kind == "ephemeral":
            return None
        if self.options.batch.dry_run:
            # Nothing is built: models not built yet are inlined so the SQL can still be checked,
            # and a batch model counts its requests from the inlined SELECT.
            sql = inline_unbuilt(self.manifest, node.name, lambda n: self.wh.kind(n.relation) is not None)
            if kind != "batch":
                result.bytes_processed, columns = self.wh.dry_run(sql)
                size = "" if result.bytes_processed is None else f", {result.bytes_processed:,} bytes"
                result.message = f"dry run: valid, {len(columns)} columns{size}"
                return None
            node = dataclasses.replace(node, compiled_sql=sql)
        if kind == "view":
            self.wh.create_view_as(node.relation, sql)
            return None
        if kind == "table":
            return self.wh.create_table_as(node.relation, sql)
        if kind == "incremental":
            return self._incremental(node, sql)
        if kind == "batch":
            lifecycle = BatchLifecycle(
                node,
                self.wh,
                lambda: self.backend,
                self.ledger,
                self.compiler.renderer.call_macro,
                self.options.run_id,
                defaults=self.manifest.project.batch_defaults,
                prices=self.prices,
                budget=self.budget,
                flags=self.options.batch,
                interrupt=self.options.interrupt,
                progress=lambda update: self.reporter.batch_progress(node, update),
            )
            try:
                report = lifecycle.run()
            finally:
                result.batch = lifecycle.report.as_dict()
            if report.interrupted:
                result.status = "interrupted"
                result.message = (f"interrupted: {report.rows_pending:,} request(s) in jobs still running are "
                                  "recorded in the ledger; the next run lands them" if report.rows_pending
                                  else "interrupted")
            elif report.pending:
                result.status = "pending"
                result.message = f"{report.rows_pending:,} request(s) in batch jobs still running"
            return report.rows_total
        raise BatchflowError(f"unknown materialization {kind!r}", node.path)

    def _incremental(self, node: Node, sql: str) -> int:
        exists = self.wh.kind(node.relation) == "table"
        if not exists or self.options.full_refresh:
            return self.wh.create_table_as(node.relation, sql)
        sql = self.compiler.compile_for_run(self.manifest, node.name, is_incremental=True).strip().rstrip(";")
        key = node.config.get("unique_key")
        if key:
            return self.wh.merge_into(node.relation, sql, [key] if isinstance(key, str) else list(key))
        return self.wh.insert_into(node.relation, sql)

    # -- lazily opened batch machinery -------------------------------------------------------------
    @property
    def backend(self) -> BatchBackend:
        """The batch backend, opened on first use (runs without batch models never open it)."""
        with self._lock:
            if self._backend is None:
                self._backend = self._backend_factory()
            return self._backend

    @property
    def ledger(self) -> Ledger:
        """The job ledger in the target schema."""
        with self._lock:
            if self._ledger is None:
                self._ledger = Ledger(self.wh)
            return self._ledger
