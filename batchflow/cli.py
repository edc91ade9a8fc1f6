"""The `batchflow` command line: argument parsing and output only.

Every command is a thin shell over functions a test can call directly (load → compile → select →
run → write artifacts). Exit codes: 0 success, 1 a model or test failed, 2 usage or configuration.

Start-up matters (`batchflow ls` on a 2,000-model project should take well under half a second), so
importing this module costs next to nothing: typer (which brings pydantic), rich, the project loader,
the compiler, the runner, the adapters and the artifacts writers are imported by the commands that
use them. The typer app (`app`) is built on first use; `main()` runs `batchflow ls` with plain options
without it (see `_ls_arguments`), so listing imports only the loader, the compiler and the graph.
"""

import gc
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from batchflow import __version__
from batchflow.errors import BatchflowError, ConfigError, ExecutionError

if TYPE_CHECKING:
    import typer
    from rich.console import Console
    from rich.progress import Progress

    from batchflow.compiler import Compiler, Manifest, Node
    from batchflow.ledger import Ledger, LedgerEntry
    from batchflow.lifecycle import RunFlags
    from batchflow.project import Project, Target
    from batchflow.runner import NodeResult

# No `from __future__ import annotations` here: the typer commands are defined inside `_build_app`,
# and typer resolves string annotations against the module's globals, where the option types defined
# there are not. Names imported only for type checking are written as strings below.

APP_HELP = "batchflow: dbt-style SQL projects for Gemini batch prediction (BigQuery in, BigQuery out)."
LOG_FORMATS = ("text", "json")
LS_OUTPUTS = ("name", "path", "json")
JOBS_OUTPUTS = ("table", "json")
RESOURCE_TYPES = ("model", "seed", "source")
#: options that take several values after one flag, as dbt's do (`-s a b` is `-s a -s b`)
MULTI_VALUE_OPTIONS = frozenset({"--select", "-s", "--exclude"})

_consoles: dict[str, "Console"] = {}


def _console() -> "Console":
    """The rich console for standard output (created on first use)."""
    if "out" not in _consoles:
        from rich.console import Console

        _consoles["out"] = Console(highlight=False, soft_wrap=True)
    return _consoles["out"]


def _err_console() -> "Console":
    """The rich console for standard error (created on first use)."""
    if "err" not in _consoles:
        from rich.console import Console

        _consoles["err"] = Console(stderr=True, highlight=False, soft_wrap=True)
    return _consoles["err"]


@dataclass
class Session:
    """A loaded and compiled project for one command."""

    project: "Project"
    target: "Target"
    compiler: "Compiler"
    manifest: "Manifest"


def _parse_vars(text: Optional[str]) -> dict[str, Any]:
    if not text:
        return {}
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--vars is not valid YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--vars must be a mapping, e.g. --vars '{start_date: 2024-01-01}'")
    return value


def _print_warnings(warnings: list[Any], log_format: str = "text") -> None:
    """Configuration warnings (dbt keys batchflow ignores, unused config paths): printed by every command
    that loads the project, on stderr (a JSON event on stdout with --log-format json)."""
    for warning in warnings:
        if log_format == "json":
            print(json.dumps({"event": "warning", "message": getattr(warning, "message", str(warning)),
                              "path": getattr(warning, "path", None), "line": getattr(warning, "line", None)}))
        else:
            sys.stderr.write(f"warning: {warning}\n")
    sys.stderr.flush()


def _session(project_dir: Path, profiles_dir: Optional[Path], target: Optional[str],
             vars_text: Optional[str], log_format: str = "text") -> Session:
    from batchflow.compiler import Compiler
    from batchflow.project import load_profile, load_project

    # Loading and compiling create many objects that all live on and few cycles: with Python's default
    # threshold (700) the collector rescans them a few hundred times, ~15% of a warm `ls`.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        project = load_project(project_dir.resolve(), _parse_vars(vars_text))
        tgt = load_profile(project, profiles_dir, target)
        compiler = Compiler(project, tgt)
        session = Session(project, tgt, compiler, compiler.compile())
        _print_warnings(session.manifest.warnings, log_format)
        return session
    finally:
        gc.set_threshold(*thresholds)


def _select(session: Session, select: Optional[list[str]], exclude: Optional[list[str]],
            resource_types: tuple[str, ...] = ("model", "seed")) -> set[str]:
    chosen = session.manifest.graph.select(select or None, exclude or None)
    return {n for n in chosen if session.manifest.nodes[n].resource_type in resource_types}


def _exit(code: int) -> NoReturn:
    """End a typer command with `code`."""
    import typer

    raise typer.Exit(code)


def _report(exc: BatchflowError, log_format: str) -> int:
    """Print a batchflow error (text or one JSON event); returns its exit code."""
    if log_format == "json":
        print(json.dumps({"event": "error", "message": exc.message, "path": exc.path, "line": exc.line}))
    else:
        _err_console().print(f"[bold red]error[/] {exc}")
    return exc.exit_code


def _fail(exc: BatchflowError, log_format: str) -> NoReturn:
    _exit(_report(exc, log_format))


class ConsoleReporter:
    """Per-model progress lines, and a live bar per batch model (rows done / failed)."""

    def __init__(self, log_format: str):
        self.json = log_format == "json"
        self._lock = threading.Lock()
        self._progress: "Progress | None" = None
        self._tasks: dict[str, Any] = {}

    def _emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event, default=str), flush=True)

    def node_started(self, node: "Node", index: int, total: int) -> None:
        """Print the START line."""
        if self.json:
            self._emit({"event": "node_start", "node": node.name, "index": index, "total": total})
            return
        with self._lock:
            self._console().print(f"{index} of {total} START {node.materialized} [bold]{node.name}[/] → {node.relation}")

    def node_finished(self, node: "Node", result: "NodeResult", index: int, total: int) -> None:
        """Print the OK / ERROR / SKIP line (and the batch summary)."""
        self._stop_bar(node.name)
        if self.json:
            self._emit({"event": "node_finish", "node": node.name, "status": result.status, "rows": result.rows,
                        "seconds": result.execution_time, "message": result.message, "batch": result.batch})
            return
        color = {"success": "green", "error": "red", "skipped": "yellow", "pending": "blue",
                 "interrupted": "magenta"}[result.status]
        label = {"success": "OK", "error": "ERROR", "skipped": "SKIP", "pending": "PENDING",
                 "interrupted": "INTERRUPTED"}[result.status]
        rows = f"{result.rows:,} rows " if result.rows is not None else ""
        with self._lock:
            out = self._console()
            out.print(f"{index} of {total} [{color}]{label}[/] {node.materialized} [bold]{node.name}[/] "
                      f"[dim]{rows}in {result.execution_time:.2f}s[/]")
            if result.batch:
                for line in _batch_lines(result.batch):
                    out.print(f"      {line}")
            if result.status in ("skipped", "pending", "interrupted") and result.message:
                out.print(f"      [dim]{result.message}[/]")
            if result.status == "error":
                where = f"{result.path}:{result.line}" if result.line else result.path
                out.print(f"      [red]{where}: {result.message}[/]")

    def batch_progress(self, node: "Node", state: str, done: int, failed: int, total: int) -> None:
        """Update the live bar of a batch model."""
        if self.json:
            self._emit({"event": "batch_progress", "node": node.name, "state": state, "done": done,
                        "failed": failed, "total": total})
            return
        with self._lock:
            if self._progress is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self._progress = Progress(
                    TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[red]{task.fields[failed]} failed[/] {task.fields[state]}"), TimeElapsedColumn(),
                    console=_console(), transient=True,
                )
                self._progress.start()
            if node.name not in self._tasks:
                self._tasks[node.name] = self._progress.add_task(node.name, total=total, failed=0, state=state)
            self._progress.update(self._tasks[node.name], completed=done, total=total, failed=failed, state=state)

    def _stop_bar(self, name: str) -> None:
        with self._lock:
            if self._progress is not None and name in self._tasks:
                self._progress.remove_task(self._tasks.pop(name))
                if not self._tasks:
                    self._progress.stop()
                    self._progress = None

    def _console(self) -> "Console":
        return self._progress.console if self._progress is not None else _console()


def _money(value: Optional[float]) -> str:
    return "no price configured" if value is None else f"${value:,.4f}"


def _batch_lines(b: dict[str, Any]) -> list[str]:
    """The batch summary under a batch model's result line."""
    sent = (f"would send {b['would_send']:,}" if b.get("dry_run")
            else f"sent {b['rows_sent']:,}" + (f" ({b['rows_retried']:,} of them retries)" if b.get("rows_retried") else ""))
    lines = [f"rows {b['rows_total']:,}: {sent}, reused {b['rows_reused']:,}, duplicate {b['rows_duplicate']:,}, "
             f"invalid {b['rows_invalid']:,}" + (f", pending {b['rows_pending']:,}" if b.get("rows_pending") else "")
             + (f", missing {b['rows_missing']:,}" if b.get("rows_missing") else "")]
    if b.get("dry_run") and b.get("plan"):
        lines.append(f"plan: {b['plan']}")
    est = b.get("estimate") or {}
    if est:
        lines.append(f"estimate: {est['requests']:,} requests, ~{est['input_tokens']:,} input + "
                     f"~{est['output_tokens']:,} output tokens, {_money(est['cost'])}")
    if b.get("outcomes"):
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(b["outcomes"].items()))
        tokens = b.get("tokens") or {}
        lines.append(f"outcomes: {outcomes} | this run: {tokens.get('total', 0):,} tokens, "
                     f"{_money(b.get('actual_cost'))} | jobs {len(b['jobs'])}")
    lines += [f"[yellow]warning[/] {w}" for w in b.get("warnings", [])]
    return lines


def _execute(command: str, project_dir: Path, profiles_dir: Optional[Path], target: Optional[str],
             select: Optional[list[str]], exclude: Optional[list[str]], vars_text: Optional[str],
             threads: Optional[int], full_refresh: bool, log_format: str, resource_types: tuple[str, ...],
             flags: "RunFlags", with_tests: bool = False) -> None:
    from batchflow.adapters import open_backend, open_warehouse
    from batchflow.artifacts import summarize, write_compiled, write_manifest, write_run_results
    from batchflow.interrupt import Interrupt, handle_signals
    from batchflow.runner import RunOptions, Runner

    interrupt = Interrupt()
    with handle_signals(interrupt, on_first=lambda signum: _interrupt_note(signum, log_format)):
        _execute_run(command, project_dir, profiles_dir, target, select, exclude, vars_text, threads, full_refresh,
                     log_format, resource_types, flags, with_tests, interrupt)


def _interrupt_note(signum: int, log_format: str) -> None:
    import signal

    name = signal.Signals(signum).name
    if log_format == "json":
        print(json.dumps({"event": "interrupt", "signal": name}), flush=True)
    else:
        _err_console().print(f"[magenta]{name}[/]: stopping — nothing new is submitted, finished jobs are landed, "
                             "running jobs stay in the ledger for the next run (again to exit at once)")


def _execute_run(command: str, project_dir: Path, profiles_dir: Optional[Path], target: Optional[str],
                 select: Optional[list[str]], exclude: Optional[list[str]], vars_text: Optional[str],
                 threads: Optional[int], full_refresh: bool, log_format: str, resource_types: tuple[str, ...],
                 flags: "RunFlags", with_tests: bool, interrupt: Any) -> None:
    from batchflow.adapters import open_backend, open_warehouse
    from batchflow.artifacts import summarize, write_compiled, write_manifest, write_run_results
    from batchflow.runner import RunOptions, Runner

    started = time.perf_counter()
    session = _session(project_dir, profiles_dir, target, vars_text, log_format)
    write_compiled(session.manifest)
    write_manifest(session.manifest, command)
    selected = _select(session, select, exclude, resource_types)
    options = RunOptions(threads=threads or session.target.threads, full_refresh=full_refresh,
                         load_source_samples=session.target.type == "duckdb", batch=flags, interrupt=interrupt)
    warehouse = open_warehouse(session.target, session.project)
    reporter = ConsoleReporter(log_format)
    console = _console()
    if log_format != "json":
        console.print(f"batchflow {__version__} · project [bold]{session.project.name}[/] · target "
                      f"[bold]{session.target.name}[/] ({session.target.type}) · {len(selected)} node(s)")
    try:
        runner = Runner(session.manifest, session.compiler, warehouse,
                        lambda: open_backend(session.target, warehouse), reporter, options)
        results = runner.run(selected)
        if with_tests and not interrupt.is_set():  # dbt's habit: build = seeds + models + the tests of what was built
            built = {r.name for r in results if r.status == "success"}
            results += _run_tests(session, warehouse, built, log_format)
    finally:
        warehouse.close()
    elapsed = time.perf_counter() - started
    write_run_results(session.manifest, command, results, elapsed, options.run_id)
    counts = summarize(results)
    if log_format == "json":
        print(json.dumps({"event": "run_finish", "summary": counts, "seconds": round(elapsed, 3)}))
    else:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing selected"
        if interrupt.is_set():
            console.print(f"[magenta]Interrupted[/] ({interrupt.name}) after {elapsed:.2f}s: {parts}; "
                          "rerun to finish — jobs still running are adopted, nothing is paid twice")
        else:
            console.print(f"Finished in {elapsed:.2f}s: {parts}" + (" (dry run: nothing was submitted)" if flags.dry_run else ""))
        if full_refresh and not flags.resubmit_all and any(r.materialized == "batch" for r in results):
            console.print("[dim]--full-refresh kept every batch answer already paid for; add --resubmit-batches "
                          "to send them again[/]")
    if interrupt.is_set():
        _exit(interrupt.exit_code)
    if any(r.status == "error" for r in results):
        _exit(1)


def _run_tests(session: Session, warehouse: Any, nodes: set[str], log_format: str) -> list["NodeResult"]:
    from batchflow import testing

    tests = testing.collect(session.manifest, nodes)
    results = testing.run(tests, session.manifest, warehouse)
    for result in results:
        if log_format == "json":
            print(json.dumps({"event": "test", "test": result.name, "status": result.status,
                              "failures": result.rows, "message": result.message}))
        else:
            label = "[green]PASS[/]" if result.status == "success" else "[red]FAIL[/]"
            _console().print(f"{label} {result.name}" + (f"  [red]{result.message}[/]" if result.message else ""))
    return results


def _test(project_dir: Path, profiles_dir: Optional[Path], target: Optional[str], select: Optional[list[str]],
          exclude: Optional[list[str]], vars_text: Optional[str], log_format: str) -> None:
    from batchflow.adapters import open_warehouse
    from batchflow.artifacts import write_run_results

    started = time.perf_counter()
    session = _session(project_dir, profiles_dir, target, vars_text, log_format)
    selected = _select(session, select, exclude, ("model", "seed", "source"))
    warehouse = open_warehouse(session.target, session.project)
    try:
        results = _run_tests(session, warehouse, selected, log_format)
    finally:
        warehouse.close()
    write_run_results(session.manifest, "test", results, time.perf_counter() - started, "test")
    failed = sum(r.status != "success" for r in results)
    if log_format != "json":
        _console().print(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        _exit(1)


def _flags(dry_run: bool, no_wait: bool, retry_failed: bool, resubmit: bool, full_refresh: bool) -> "RunFlags":
    from batchflow.lifecycle import RunFlags

    if resubmit and not full_refresh:
        raise ConfigError("--resubmit-batches pays for every request again; it only works with --full-refresh")
    if dry_run and (no_wait or retry_failed):
        raise ConfigError("--dry-run submits nothing; it cannot be combined with --no-wait or --retry-failed")
    return RunFlags(dry_run=dry_run, no_wait=no_wait, retry_failed=retry_failed, resubmit_all=resubmit)


def _validate(session: Session, order: list[str]) -> bool:
    """Dry-run each model in the warehouse (models not built yet are inlined); True when all pass."""
    from batchflow.adapters import open_warehouse
    from batchflow.compiler import NeedsBatchResults, inline_unbuilt
    from batchflow.runner import load_source_samples

    manifest, ok = session.manifest, True
    console = _console()
    warehouse = open_warehouse(session.target, session.project)
    try:
        if session.target.type == "duckdb":  # sources stand in as their samples, as in a run
            load_source_samples(manifest, warehouse, {d for n in order for d in manifest.nodes[n].depends_on})
        for name in order:
            node = manifest.nodes[name]
            if node.materialized == "ephemeral":
                continue
            try:
                sql = inline_unbuilt(manifest, name, lambda n: warehouse.kind(n.relation) is not None)
                size, _ = warehouse.dry_run(sql)
                console.print(f"[green]valid[/] {name}" + ("" if size is None else f"  [dim]{size:,} bytes[/]"))
            except NeedsBatchResults as exc:
                console.print(f"[yellow]skipped[/] {name}: {exc.message}")
            except BatchflowError as exc:
                ok = False
                console.print(f"[red]invalid[/] {name}  {node.path}: {exc.message}")
    finally:
        warehouse.close()
    return ok


def _compile(project_dir: Path, profiles_dir: Optional[Path], target: Optional[str], select: Optional[list[str]],
             exclude: Optional[list[str]], vars_text: Optional[str], log_format: str, validate: bool) -> None:
    from batchflow.artifacts import write_compiled, write_manifest

    session = _session(project_dir, profiles_dir, target, vars_text, log_format)
    write_compiled(session.manifest)
    write_manifest(session.manifest, "compile")
    selected = _select(session, select, exclude, ("model",))
    order = [n for n in session.manifest.graph.topological_order() if n in selected]
    if validate and not _validate(session, order):
        _exit(1)
    if log_format == "json":
        print(json.dumps({"event": "compiled", "nodes": order}))
    else:
        console = _console()
        for name in order:
            node = session.manifest.nodes[name]
            console.print(f"compiled {node.materialized:<11} {name}  [dim]{node.path}[/]")
        console.print(f"{len(order)} model(s) compiled into {session.project.target_path / 'compiled'}")


def _list_nodes(project_dir: Path = Path("."), profiles_dir: Optional[Path] = None, target: Optional[str] = None,
                select: Optional[list[str]] = None, exclude: Optional[list[str]] = None,
                vars: Optional[str] = None, resource_type: Optional[str] = None, output: str = "name") -> None:
    """`batchflow ls`: plain print (no rich), so listing needs neither rich nor typer."""
    session = _session(project_dir, profiles_dir, target, vars)
    types = (resource_type,) if resource_type else ("model", "seed", "source")
    selected = _select(session, select, exclude, types)
    for name in session.manifest.graph.topological_order():
        if name not in selected:
            continue
        node = session.manifest.nodes[name]
        if output == "json":
            print(json.dumps({"name": name, "resource_type": node.resource_type, "path": node.path,
                              "materialized": node.materialized, "tags": node.tags}))
        else:
            print(node.path if output == "path" else name)


def _debug(project_dir: Path, profiles_dir: Optional[Path], target: Optional[str]) -> None:
    """Load the project and profile, then construct the warehouse, the batch backend and its provider
    and make one real call to each, reporting what answered."""
    from batchflow.adapters import open_backend, open_warehouse
    from batchflow.project import load_profile, load_project

    console = _console()
    project = load_project(project_dir.resolve())
    console.print(f"[green]OK[/] project {project.name!r} at {project.root} "
                  f"({len(project.models)} models, {len(project.seeds)} seeds, {len(project.sources)} sources)")
    tgt = load_profile(project, profiles_dir, target)
    _print_warnings([*project.warnings, *tgt.warnings])
    console.print(f"[green]OK[/] profile {tgt.profile!r}, target {tgt.name!r} ({tgt.type}, schema {tgt.schema})")
    warehouse = open_warehouse(tgt, project)
    try:
        warehouse.query_arrow("SELECT 1 AS ok")
        console.print(f"[green]OK[/] connection to {warehouse.name}")
        backend = open_backend(tgt, warehouse)
        try:
            backend.list({"batchflow_debug": "1"})  # one real call: credentials, endpoint, permissions
        except BatchflowError as exc:
            raise ExecutionError(f"batch backend {backend.name} ({backend.describe()}) did not answer: "
                                 f"{exc.message}") from None
        console.print(f"[green]OK[/] batch backend {backend.name}: {backend.describe()}")
    finally:
        warehouse.close()


# ---- jobs ------------------------------------------------------------------------------------------


def _ledger_session(project_dir: Path, profiles_dir: Optional[Path],
                    target: Optional[str]) -> tuple["Target", Any, "Ledger"]:
    from batchflow.adapters import open_warehouse
    from batchflow.ledger import Ledger
    from batchflow.project import load_profile, load_project

    project = load_project(project_dir.resolve())
    tgt = load_profile(project, profiles_dir, target)
    _print_warnings([*project.warnings, *tgt.warnings])
    warehouse = open_warehouse(tgt, project)
    return tgt, warehouse, Ledger(warehouse)


def _live(backend: Any, entry: "LedgerEntry") -> dict[str, Any]:
    """The ledger row, refreshed from the backend for jobs that may still change."""
    from batchflow.batch.states import rule

    row = {k: v for k, v in entry.__dict__.items()}
    if backend is not None and entry.job_name and not rule(entry.state).terminal:
        try:
            status = backend.get(entry.job_name)
            row.update(state=status.state.value, successful_count=status.successful,
                       failed_count=status.failed, error=status.error)
        except BatchflowError as exc:
            row["error"] = f"backend: {exc.message}"
    return row


def _find_entry(ledger: "Ledger", job: str) -> "LedgerEntry":
    matches = [e for e in ledger.entries() if job in (e.job_key, e.job_name) or (e.job_name or "").endswith("/" + job)]
    if not matches:
        raise ConfigError(f"no job {job!r} in the ledger; see `batchflow jobs list --all`")
    return matches[-1]


def _jobs_list(project_dir: Path, profiles_dir: Optional[Path], target: Optional[str], all_jobs: bool,
               model: Optional[str], output: str) -> None:
    from batchflow.adapters import open_backend

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target)
    try:
        entries = ledger.entries(node=model, open_only=not all_jobs)
        backend = open_backend(tgt, warehouse) if any(e.job_name for e in entries) else None
        rows = [_live(backend, e) for e in entries]
    finally:
        warehouse.close()
    if output == "json":
        for row in rows:
            print(json.dumps(row, default=str))
        return
    console = _console()
    if not rows:
        console.print("no jobs" + ("" if all_jobs else " still open (use --all for every job)"))
    for r in rows:
        console.print(f"{r['job_key']}  {r['state']:<20} {r['node']}  shard {r['shard']}  "
                      f"{r['successful_count']:,}/{r['row_count']:,} ok, {r['failed_count']:,} failed  "
                      f"[dim]{r['job_name'] or '(not created)'}[/]")


def _jobs_show(job: str, project_dir: Path, profiles_dir: Optional[Path], target: Optional[str]) -> None:
    from batchflow.adapters import open_backend

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target)
    try:
        entry = _find_entry(ledger, job)
        row = _live(open_backend(tgt, warehouse) if entry.job_name else None, entry)
    finally:
        warehouse.close()
    print(json.dumps(row, indent=2, default=str))


def _jobs_cancel(job: str, project_dir: Path, profiles_dir: Optional[Path], target: Optional[str]) -> None:
    from batchflow.adapters import open_backend
    from batchflow.batch.base import JobNotFoundError
    from batchflow.batch.states import JobState, rule

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target)
    try:
        entry = _find_entry(ledger, job)
        if not entry.job_name or not rule(entry.state).cancellable:
            raise ConfigError(f"job {job!r} is {entry.state}: {rule(entry.state).doc}; nothing to cancel")
        backend = open_backend(tgt, warehouse)
        try:
            live = backend.get(entry.job_name)
        except JobNotFoundError:
            raise ConfigError(f"job {job!r} is not known to the {backend.name} backend any more; the next run "
                              "lands whatever it left") from None
        if not rule(live.state.value).cancellable:
            ledger.update(entry.job_key, state=live.state.value, job_state=live.state.value)
            raise ConfigError(f"job {job!r} is {live.state.value} at the backend: {rule(live.state.value).doc}; "
                              "nothing to cancel")
        backend.cancel(entry.job_name)
        after = backend.get(entry.job_name)
        ledger.update(entry.job_key, state=after.state.value, job_state=after.state.value)
        if after.state.terminal and after.state is not JobState.CANCELLED:
            raise ConfigError(f"job {job!r} ended {after.state.value} before the cancel reached it; nothing to cancel")
    finally:
        warehouse.close()
    done = after.state is JobState.CANCELLED
    _console().print(f"{'cancelled' if done else 'cancel requested for'} {entry.job_name} ({after.state.value}); "
                     "the next run lands the rows it finished and resends the rest")


# ---- the typer app ---------------------------------------------------------------------------------


def _build_app() -> "typer.Typer":
    """The typer app with every command (built once, on first use: importing typer costs ~0.2 s)."""
    if "app" in globals():
        return globals()["app"]
    from typing import Annotated

    from enum import Enum

    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=APP_HELP)

    # Choices as str enums: typer checks them (exit 2 with the allowed values), and a member compares
    # equal to its text, so the functions below take plain strings.
    LogFormat = Enum("LogFormat", {v: v for v in LOG_FORMATS}, type=str)
    LsOutput = Enum("LsOutput", {v: v for v in LS_OUTPUTS}, type=str)
    JobsOutput = Enum("JobsOutput", {v: v for v in JOBS_OUTPUTS}, type=str)
    ResourceType = Enum("ResourceType", {v: v for v in RESOURCE_TYPES}, type=str)

    ProjectDir = Annotated[Path, typer.Option("--project-dir", help="Folder holding batchflow_project.yml.")]
    ProfilesDir = Annotated[Optional[Path], typer.Option("--profiles-dir", help="Folder holding profiles.yml.")]
    TargetOpt = Annotated[Optional[str], typer.Option("--target", "-t", help="Target in profiles.yml.")]
    SelectOpt = Annotated[Optional[list[str]], typer.Option("--select", "-s", help="dbt selection syntax.")]
    ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", help="dbt selection syntax.")]
    VarsOpt = Annotated[Optional[str], typer.Option("--vars", help="YAML/JSON mapping of project vars.")]
    ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Models built at once (1 or more).")]
    FullRefreshOpt = Annotated[bool, typer.Option("--full-refresh", help="Rebuild incremental models from scratch.")]
    LogFormatOpt = Annotated[LogFormat, typer.Option("--log-format", help="Output as text or JSON events.")]
    DryRunOpt = Annotated[bool, typer.Option(
        "--dry-run", help="Build and validate requests, count and estimate cost; submit nothing.")]
    NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Submit batch jobs and exit; a later run lands them.")]
    RetryFailedOpt = Annotated[bool, typer.Option("--retry-failed", help="Send only rows whose last answer failed.")]
    ResubmitOpt = Annotated[bool, typer.Option(
        "--resubmit-batches", help="Send every request again, even answered ones (pays again).")]
    JobArg = Annotated[str, typer.Argument(help="Job key or job name.")]

    @app.command("test")
    def test_command(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
                     select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None,
                     log_format: LogFormatOpt = LogFormat.text) -> None:
        """Run the data tests (not_null, unique, accepted_values, relationships) of the selected nodes."""
        try:
            _test(project_dir, profiles_dir, target, select, exclude, vars, log_format)
        except BatchflowError as exc:
            _fail(exc, log_format)

    @app.command()
    def retry(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
              select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None, threads: ThreadsOpt = None,
              log_format: LogFormatOpt = LogFormat.text, no_wait: NoWaitOpt = False) -> None:
        """Resend only the failed rows of the selected batch models (same as `run --retry-failed`)."""
        from batchflow.lifecycle import RunFlags

        try:
            _execute("retry", project_dir, profiles_dir, target, select, exclude, vars, threads, False,
                     log_format, ("model",), RunFlags(no_wait=no_wait, retry_failed=True))
        except BatchflowError as exc:
            _fail(exc, log_format)

    @app.command()
    def run(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
            select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None, threads: ThreadsOpt = None,
            full_refresh: FullRefreshOpt = False, log_format: LogFormatOpt = LogFormat.text, dry_run: DryRunOpt = False,
            no_wait: NoWaitOpt = False, retry_failed: RetryFailedOpt = False,
            resubmit_batches: ResubmitOpt = False) -> None:
        """Build the selected models (batch models submit their requests and land the answers)."""
        try:
            _execute("run", project_dir, profiles_dir, target, select, exclude, vars, threads, full_refresh,
                     log_format, ("model",), _flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh))
        except BatchflowError as exc:
            _fail(exc, log_format)

    @app.command()
    def build(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
              select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None, threads: ThreadsOpt = None,
              full_refresh: FullRefreshOpt = False, log_format: LogFormatOpt = LogFormat.text, dry_run: DryRunOpt = False,
              no_wait: NoWaitOpt = False, retry_failed: RetryFailedOpt = False,
              resubmit_batches: ResubmitOpt = False) -> None:
        """Load seeds, then build the selected models, in dependency order."""
        try:
            _execute("build", project_dir, profiles_dir, target, select, exclude, vars, threads, full_refresh,
                     log_format, ("model", "seed"),
                     _flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh), with_tests=not dry_run)
        except BatchflowError as exc:
            _fail(exc, log_format)

    @app.command()
    def compile(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
                select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None,
                log_format: LogFormatOpt = LogFormat.text,
                validate: Annotated[bool, typer.Option("--validate", help="Also dry-run each model in the warehouse.")]
                = False) -> None:
        """Render and parse every model; write target/compiled/ and target/manifest.json. Runs nothing."""
        try:
            _compile(project_dir, profiles_dir, target, select, exclude, vars, log_format, validate)
        except BatchflowError as exc:
            _fail(exc, log_format)

    @app.command("ls")
    def list_nodes(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
                   select: SelectOpt = None, exclude: ExcludeOpt = None, vars: VarsOpt = None,
                   resource_type: Annotated[Optional[ResourceType], typer.Option(
                       "--resource-type", help="Only nodes of this type.")] = None,
                   output: Annotated[LsOutput, typer.Option("--output", help="Names, paths or JSON lines.")]
                   = LsOutput.name) -> None:
        """List the selected nodes in dependency order."""
        try:
            _list_nodes(project_dir, profiles_dir, target, select, exclude, vars, resource_type, output)
        except BatchflowError as exc:
            _fail(exc, "text")

    @app.command()
    def debug(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None,
              target: TargetOpt = None) -> None:
        """Check the project, the profile and the warehouse connection."""
        try:
            _debug(project_dir, profiles_dir, target)
        except BatchflowError as exc:
            _fail(exc, "text")

    jobs_app = typer.Typer(no_args_is_help=True, help="Batch jobs recorded in the ledger (_batchflow_jobs).")
    app.add_typer(jobs_app, name="jobs")

    @jobs_app.command("list")
    def jobs_list(project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None, target: TargetOpt = None,
                  all_jobs: Annotated[bool, typer.Option("--all", help="Include landed, lost and failed jobs.")] = False,
                  model: Annotated[Optional[str], typer.Option("--model", help="Only this batch model.")] = None,
                  output: Annotated[JobsOutput, typer.Option("--output", help="A table or JSON lines.")]
                  = JobsOutput.table) -> None:
        """Jobs of the ledger with their live state and completion counts."""
        try:
            _jobs_list(project_dir, profiles_dir, target, all_jobs, model, output)
        except BatchflowError as exc:
            _fail(exc, "text")

    @jobs_app.command("show")
    def jobs_show(job: JobArg, project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None,
                  target: TargetOpt = None) -> None:
        """Everything the ledger and the backend know about one job."""
        try:
            _jobs_show(job, project_dir, profiles_dir, target)
        except BatchflowError as exc:
            _fail(exc, "text")

    @jobs_app.command("cancel")
    def jobs_cancel(job: JobArg, project_dir: ProjectDir = Path("."), profiles_dir: ProfilesDir = None,
                    target: TargetOpt = None) -> None:
        """Cancel a running job; the rows it finished are landed by the next run."""
        try:
            _jobs_cancel(job, project_dir, profiles_dir, target)
        except BatchflowError as exc:
            _fail(exc, "text")

    @app.callback(invoke_without_command=True)
    def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
        if version:
            _console().print(f"batchflow {__version__}")
            raise typer.Exit(0)

    globals().update(app=app, jobs_app=jobs_app)
    return app


def __getattr__(name: str) -> Any:
    """`app` and `jobs_app` (typer) and `console` / `err_console` (rich) are created on first access."""
    if name in ("app", "jobs_app"):
        _build_app()
        return globals()[name]
    if name == "console":
        return _console()
    if name == "err_console":
        return _err_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- `batchflow ls` without typer ------------------------------------------------------------------

# The options of `batchflow ls` (as declared in `_build_app`) and the keyword of `_list_nodes` each sets.
# tests/test_cli_startup.py checks this table against the typer command.
_LS_OPTIONS = {
    "--project-dir": "project_dir", "--profiles-dir": "profiles_dir", "--target": "target", "-t": "target",
    "--select": "select", "-s": "select", "--exclude": "exclude", "--vars": "vars",
    "--resource-type": "resource_type", "--output": "output",
}
_LS_MULTIPLE = frozenset({"select", "exclude"})
_LS_PATHS = frozenset({"project_dir", "profiles_dir"})


def _ls_arguments(argv: list[str]) -> Optional[dict[str, Any]]:
    """The `_list_nodes` keywords when `argv` is `ls` followed only by its options, each written
    `--option value` or `--option=value` (repeatable: --select/-s and --exclude), as typer would parse
    them. None for anything else — another command, --help, an unknown or repeated option, a missing
    value, a value starting with `-` — which then goes through typer, so its parsing and its messages
    stay the only ones."""
    if not argv or argv[0] != "ls":
        return None
    kwargs: dict[str, Any] = {}
    rest, i = argv[1:], 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("--") and "=" in token:
            flag, value = token.split("=", 1)
            i += 1
        elif i + 1 < len(rest):
            flag, value = token, rest[i + 1]
            i += 2
        else:
            return None
        dest = _LS_OPTIONS.get(flag)
        if dest is None or value.startswith("-") or (dest in _LS_PATHS and not value):
            return None
        if (dest == "output" and value not in LS_OUTPUTS) or (dest == "resource_type" and value not in RESOURCE_TYPES):
            return None  # typer says what is allowed
        if dest in _LS_MULTIPLE:
            kwargs.setdefault(dest, []).append(value)
        elif dest in kwargs:
            return None
        else:
            kwargs[dest] = Path(value) if dest in _LS_PATHS else value
    return kwargs


def _run_ls(kwargs: dict[str, Any]) -> int:
    """`batchflow ls` as the typer command runs it (same output, errors and exit codes)."""
    try:
        try:
            _list_nodes(**kwargs)
        except BatchflowError as exc:
            return _report(exc, "text")
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `batchflow ls | head`: quiet, exit 1, as click does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


def expand_multi_values(argv: list[str]) -> list[str]:
    """`-s a b --exclude c d` → `-s a -s b --exclude c --exclude d`: dbt takes several selectors after
    one flag; click takes one value per flag. Values run up to the next token starting with `-`."""
    out: list[str] = []
    flag: str | None = None
    for token in argv:
        if token.startswith("-"):
            flag = token if token in MULTI_VALUE_OPTIONS else None
            out.append(token)
            if flag is not None:
                out.append("\0")  # placeholder: the first value follows the flag itself
            continue
        if flag is not None and out[-1] == "\0":
            out[-1] = token
        elif flag is not None:
            out += [flag, token]
        else:
            out.append(token)
    return [t for t in out if t != "\0"]


def main() -> None:
    """Console-script entry point."""
    argv = expand_multi_values(sys.argv[1:])
    sys.argv[1:] = argv
    ls_kwargs = None if "_BATCHFLOW_COMPLETE" in os.environ else _ls_arguments(argv)
    if ls_kwargs is not None:
        sys.exit(_run_ls(ls_kwargs))
    _build_app()(prog_name="batchflow")


if __name__ == "__main__":
    sys.exit(main())
