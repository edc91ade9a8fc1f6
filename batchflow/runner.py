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
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from batchflow.batch.base import BatchBackend
from batchflow.compiler import Compiler, Manifest, Node, inline_unbuilt
from batchflow.csvfile import shape_problem
from batchflow.errors import BatchflowError, ConfigError
from batchflow.hooks import run_model_hooks
from batchflow.interrupt import Interrupt, block_signals_in_this_thread
from batchflow.ledger import Ledger
from batchflow.cost import RunBudget, price_table
from batchflow.lifecycle import BatchLifecycle, BatchProgress, RunFlags
from batchflow.seeds import load_seed, missing_relation_hint, upstream_seeds
from batchflow.table_options import not_applied, table_options_for
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
    unique_id: str = ""  # dbt's unique id, where the name alone does not say it (tests, unit tests, snapshots)
    compiled_code: str | None = None  # tests: the SELECT of the failing rows


#: held while a schema is created (nodes and tests on several threads may create the same one)
SCHEMA_LOCK = threading.Lock()
#: statuses after which what depends on a node or test may run (a test that warns does not block)
_DONE = ("success", "pass", "warn")


class Reporter(Protocol):
    """Receives progress from the runner (the CLI prints it; tests may record it)."""

    def node_started(self, node: Node, index: int, total: int) -> None:
        """A node began executing."""

    def node_finished(self, node: Node, result: NodeResult, index: int, total: int) -> None:
        """A node finished (success, error or skipped)."""

    def batch_progress(self, node: Node, progress: BatchProgress) -> None:
        """A batch model's jobs moved (rows done and failed out of the rows sent), or it entered
        another phase (landing a job's output, building the results table)."""

    def test_finished(self, result: NodeResult) -> None:
        """A data test or unit test finished (pass, warn, fail, error or skipped)."""


class SilentReporter:
    """A reporter that prints nothing."""

    def node_started(self, node: Node, index: int, total: int) -> None:  # noqa: D102
        pass

    def node_finished(self, node: Node, result: NodeResult, index: int, total: int) -> None:  # noqa: D102
        pass

    def batch_progress(self, node: Node, progress: BatchProgress) -> None:  # noqa: D102
        pass

    def test_finished(self, result: NodeResult) -> None:  # noqa: D102
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
    #: the snapshot time of check-strategy snapshots (dbt's snapshot_get_time); None: the warehouse clock
    snapshot_time: datetime | None = None


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
    def run(self, selected: set[str], checks: Sequence[Any] = (), run_check: Callable[[Any], NodeResult] | None = None,
            blocks: Mapping[str, Iterable[str]] | None = None) -> list[NodeResult]:
        """Execute `selected` nodes (sources are prepared, not reported). Failed nodes skip their
        downstream; independent branches go on. `checks`: data tests and unit tests (items with `key`,
        `name`, `path` and `depends_on`, node names), run by `run_check` on the same pool once what they read
        has built; `blocks`: check key -> nodes that wait for it (dbt's build: a model waits for its
        parents' tests and its own unit tests, and a failing one skips it)."""
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
        by_key = {c.key: c for c in checks}
        for check in checks:  # a check reads nodes of this run once built; the others are assumed built
            deps[check.key] = [d for d in check.depends_on if d in index]
            # ... and the seeds loaded in this run behind them (a unit test types its fixture rows from
            # the relations it replaces: a source a seed loads must exist first)
            if seeds_here:
                deps[check.key] += sorted((upstream_seeds(self.manifest, set(check.depends_on)) & seeds_here)
                                          - set(deps[check.key]))
        for key, waiting in (blocks or {}).items():
            for name in waiting:
                if name in index and key in by_key and key not in deps[name]:
                    deps[name].append(key)
        running: dict[Future[NodeResult], str] = {}
        remaining = list(order) + list(by_key)
        with ThreadPoolExecutor(max_workers=max(1, self.options.threads), initializer=block_signals_in_this_thread) as pool:
            while remaining or running:
                for name in list(remaining):
                    if any(d not in results for d in deps[name]):
                        continue
                    remaining.remove(name)
                    failed = [d for d in deps[name] if results[d].status not in _DONE or self._dry_batch(d)]
                    if name in by_key:  # a data test or unit test
                        check = by_key[name]
                        if failed or self.options.interrupt.is_set() or run_check is None:
                            from batchflow.testing import skipped

                            why = (f"upstream {', '.join(failed)} did not succeed" if failed
                                   else "the run was interrupted")
                            results[name] = skipped(check, why)
                            self.reporter.test_finished(results[name])
                        else:
                            running[pool.submit(run_check, check)] = name
                        continue
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
                    if remaining and all(any(d not in results for d in deps[n]) for n in remaining):
                        raise BatchflowError(f"nothing can start: {', '.join(remaining[:5])} wait on each other")
                    continue
                # A timeout, so the main thread wakes to run signal handlers promptly.
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    results[name] = future.result()
                    if name in by_key:
                        self.reporter.test_finished(results[name])
                    else:
                        self.reporter.node_finished(self.manifest.nodes[name], results[name], index[name], len(order))
        return [results[n] for n in order] + [results[k] for k in by_key]

    def preflight(self, order: list[str]) -> None:
        """Checks that must pass before anything runs: every seed the run may load has a well-formed CSV
        (file:line of the first ragged row), and batch models need a warehouse and a backend in one
        region, so a wrong location fails the run up front, not after an hour of SQL."""
        for name in sorted(upstream_seeds(self.manifest, set(order))):
            path = self.manifest.project.seeds[name].abs_path
            problem = shape_problem(path)
            if problem is not None:
                raise ConfigError(f"seed {name}: {problem[0]}", path, problem[1])
        for name in order:  # table configs (partition_by, cluster_by, ...) checked before anything is built
            node = self.manifest.nodes[name]
            if node.resource_type == "model" and node.materialized in ("view", "table", "incremental"):
                table_options_for(node)
        if not any(self.manifest.nodes[n].materialized == "batch" for n in order):
            return
        self.wh.check_batch_location()
        if not self.options.batch.dry_run:
            _ = self.backend  # opening it validates its project and location

    def _dry_batch(self, name: str) -> bool:
        """In a dry run a batch model lands nothing new, so what reads it is not rebuilt."""
        node = self.manifest.nodes.get(name)  # None: a data test or unit test
        return self.options.batch.dry_run and node is not None and node.materialized == "batch"

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
            with SCHEMA_LOCK:  # two threads creating one schema conflict on DuckDB
                self.wh.ensure_schema(node.relation.schema)
            hooked = (node.resource_type == "model" and node.materialized != "ephemeral"
                      and not self.options.batch.dry_run)
            if hooked:
                run_model_hooks(node, "pre", self.compiler, self.wh)
            result.rows = self._materialize(node, result)
            if hooked and result.status == "success":
                run_model_hooks(node, "post", self.compiler, self.wh)
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
        if node.resource_type == "snapshot":
            return self._snapshot(node)
        if kind == "ephemeral":  # inlined where it is read; one that did not compile fails here
            if node.error is not None:
                raise node.error
            return None
        # An incremental model adds to its table when the table exists (and no --full-refresh).
        adds = (kind == "incremental" and not self.options.full_refresh and not self.options.batch.dry_run
                and self.wh.kind(node.relation) == "table")
        # The one place a model renders with `execute` true (a model that did not compile raises here).
        sql = self.compiler.sql_for_build(node, self.wh, is_incremental=adds).strip().rstrip(";")
        if self.options.batch.dry_run:
            # Nothing is built: models not built yet are inlined so the SQL can still be checked,
            # and a batch model counts its requests from the inlined SELECT.
            sql = inline_unbuilt(self.manifest, node.name, lambda n: self.wh.kind(n.relation) is not None, sql)
            if kind != "batch":
                result.bytes_processed, columns = self.wh.dry_run(sql)
                size = "" if result.bytes_processed is None else f", {result.bytes_processed:,} bytes"
                result.message = f"dry run: valid, {len(columns)} columns{size}"
                return None
        if sql != node.compiled_sql.strip().rstrip(";"):
            node = dataclasses.replace(node, compiled_sql=sql)
        if kind in ("view", "table", "incremental"):
            options = table_options_for(node)
            ignored = not_applied(options, self.wh.TABLE_OPTIONS_IGNORED)
            if ignored:  # e.g. cluster_by on DuckDB: a note, the model still builds
                result.message = f"not applied on {self.wh.name}: " + ", ".join(ignored)
        if kind == "view":
            self.wh.create_view_as(node.relation, sql, options)
            return None
        if kind == "table":
            return self.wh.create_table_as(node.relation, sql, options)
        if kind == "incremental":
            return self._incremental(node, sql, adds)
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

    def _snapshot(self, node: Node) -> int | None:
        """dbt's snapshot materialization (batchflow.snapshots): create the table, or merge the changes."""
        from batchflow.snapshots import run_snapshot, snapshot_spec

        sql = self.compiler.sql_for_build(node, self.wh).strip().rstrip(";")
        if self.options.batch.dry_run:
            self.wh.dry_run(sql)
            return None
        return run_snapshot(self.wh, node.relation, sql, snapshot_spec(node.config, node.path),
                            now=self.options.snapshot_time)

    def _incremental(self, node: Node, sql: str, adds: bool) -> int:
        """`sql` was rendered with is_incremental() true exactly when `adds`."""
        options = table_options_for(node)
        if not adds:
            return self.wh.create_table_as(node.relation, sql, options)
        self.wh.apply_schema_change(node.relation, sql, options)  # on_schema_change (ignore: nothing)
        key = node.config.get("unique_key")
        if options.incremental_strategy == "insert_overwrite":
            rows = self.wh.insert_overwrite(node.relation, sql, options)
        elif key and options.incremental_strategy == "merge":
            rows = self.wh.merge_into(node.relation, sql, [key] if isinstance(key, str) else list(key))
        else:
            rows = self.wh.insert_into(node.relation, sql)
        self.wh.apply_table_options(node.relation, options)  # descriptions, labels, grants of the kept table
        return rows

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
