"""The `batchflow` command line: option declarations, printing and exit codes only.

Every command is a call into `batchflow.api`, which returns plain results; this module prints them.
Exit codes: 0 success, 1 a model or test failed, 2 usage or configuration, 130/143 interrupted.

Options are declared once, as plain data (`Opt`, `COMMANDS`): the typer app is generated from them,
and so is the option table of the fast `batchflow ls` path, so the two cannot drift.

Start-up matters (`batchflow ls` on a 2,000-model project should take well under half a second), so
importing this module costs next to nothing: typer (which brings pydantic), rich, the project loader,
the compiler, the runner, the adapters and the artifacts writers are imported by the commands that
use them. The typer app (`app`) is built on first use; `main()` runs `batchflow ls` with plain options
without it (see `_ls_arguments`), so listing imports only the loader, the compiler and the graph.
"""

import inspect
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

from batchflow import __version__
from batchflow.errors import BatchflowError

if TYPE_CHECKING:
    import typer
    from rich.console import Console
    from rich.progress import Progress

    from batchflow.api import RunReport, RunStart
    from batchflow.compiler import Node
    from batchflow.lifecycle import BatchProgress
    from batchflow.runner import NodeResult

APP_HELP = "batchflow: dbt-style SQL projects for Gemini batch prediction (BigQuery in, BigQuery out)."
LOG_FORMATS = ("text", "json")
LS_OUTPUTS = ("selector", "name", "path", "json")  # dbt ls: `selector` (the fqn) by default
JOBS_OUTPUTS = ("table", "json")
SHOW_OUTPUTS = ("table", "json")
RESOURCE_TYPES = ("model", "seed", "snapshot", "source", "test", "unit_test", "all")
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


# ---- option declarations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """One command-line option (or positional argument), as plain data."""

    dest: str  # the keyword the command's function takes
    flags: tuple[str, ...]  # empty for a positional argument
    help: str
    kind: str = "str"  # "str" | "path" | "int" | "float" | "bool" | "choice"
    default: Any = None
    multiple: bool = False  # repeatable; `-s a b` works too (expand_multi_values)
    choices: tuple[str, ...] = ()
    metavar: Optional[str] = None
    min: Optional[int] = None
    required: bool = False  # positional arguments only


@dataclass(frozen=True)
class Command:
    """One command: its name, help, options and the function of this module it calls."""

    name: str
    help: str
    options: tuple[Opt, ...]
    handler: str  # a function of this module, looked up when called (tests patch it)
    group: Optional[str] = None  # a sub-app, e.g. "jobs"


PROJECT_DIR = Opt("project_dir", ("--project-dir",), "Folder holding batchflow_project.yml.", "path", Path("."),
                  metavar="DIR")
PROFILES_DIR = Opt("profiles_dir", ("--profiles-dir",),
                   "Folder holding profiles.yml (default: the project folder, then $BATCHFLOW_PROFILES_DIR).",
                   "path", metavar="DIR")
TARGET = Opt("target", ("--target", "-t"), "Target in profiles.yml (default: the profile's `target:`).",
             metavar="NAME")
SELECT = Opt("select", ("--select", "-s"),
             "Nodes to include, in dbt selection syntax: name, +name, name+, tag:x, path:x, config.materialized:x. "
             "Several after one flag.", multiple=True, metavar="SELECTOR")
EXCLUDE = Opt("exclude", ("--exclude",), "Nodes to leave out, in dbt selection syntax. Several after one flag.",
              multiple=True, metavar="SELECTOR")
VARS = Opt("vars", ("--vars",), "Project vars as a YAML or JSON mapping, e.g. '{start_date: 2024-01-01}'.",
           metavar="YAML")
THREADS = Opt("threads", ("--threads",), "Models built at once (default: the target's `threads`).", "int",
              min=1, metavar="N")
FULL_REFRESH = Opt("full_refresh", ("--full-refresh",),
                   "Rebuild incremental models from scratch; batch answers already paid for are kept.", "bool", False)
LOG_FORMAT = Opt("log_format", ("--log-format",), "Output as text, or as one JSON event per line.", "choice",
                 "text", choices=LOG_FORMATS)
DRY_RUN = Opt("dry_run", ("--dry-run",), "Build and validate requests, count them and estimate the cost; "
              "submit nothing.", "bool", False)
NO_WAIT = Opt("no_wait", ("--no-wait",), "Submit batch jobs and exit; a later run lands their answers.", "bool",
              False)
RETRY_FAILED = Opt("retry_failed", ("--retry-failed",), "Send only the rows whose last answer failed.", "bool",
                   False)
RESUBMIT = Opt("resubmit_batches", ("--resubmit-batches",),
               "With --full-refresh: send every request again, even answered ones (pays again).", "bool", False)
ONLINE = Opt("online", ("--online",), "Answer each batch request at once with google-genai (online prices) instead "
             "of in batch jobs; a later batch run sends them again unless `online_answers: reuse`.", "bool", False)
SAMPLE = Opt("sample", ("--sample",), "Send only N requests per batch model, the same N every time (by request "
             "hash); its table then holds only them, until an unsampled run.", "int", min=1, metavar="N")
SAMPLE_FRACTION = Opt("sample_fraction", ("--sample-fraction",), "Send only this share (over 0, at most 1) of each "
                      "batch model's requests, picked as --sample picks them.", "float", metavar="P")
CONNECTION = (PROJECT_DIR, PROFILES_DIR, TARGET)
SELECTOR = Opt("selector", ("--selector",), "A selector of selectors.yml, instead of --select / --exclude.",
               metavar="NAME")
STATE = Opt("state", ("--state",), "Folder of a previous manifest.json (and run_results.json), for state: and "
            "result: selectors and --defer.", "path", metavar="DIR")
DEFER = Opt("defer", ("--defer",), "Models the selection reads that are neither selected nor built in this target "
            "are read where --state built them.", "bool", False)
SELECTION = (SELECT, EXCLUDE, SELECTOR, STATE, VARS)
RUN_OPTIONS = (*CONNECTION, *SELECTION, THREADS, FULL_REFRESH, LOG_FORMAT, DRY_RUN, NO_WAIT, RETRY_FAILED, RESUBMIT,
               ONLINE, SAMPLE, SAMPLE_FRACTION, DEFER)
JOB = Opt("job", (), "Job key or job name (see `batchflow jobs list`).", required=True, metavar="JOB")


def _deps(project_dir: Path) -> None:
    """`batchflow deps`: batchflow.packages.deps does the work; this prints what it installed."""
    from batchflow.packages import deps

    for item in deps(project_dir):
        print(f"{item.how} {item.name} ({item.spec}) -> {item.folder}")


# In dbt's order: init, debug, (deps), seed, compile, ls, show, run, build, test, retry, docs, jobs.
COMMANDS: tuple[Command, ...] = (
    Command("init", "Write a starter project (source sample, staging, batch and flatten models, a yml test, "
            "profiles.yml) that `batchflow build` runs offline.", (
                Opt("directory", (), "Folder to create the project in.", "path", Path("."), metavar="DIR"),
                Opt("name", ("--name",), "Project name (default: from the folder; asked on a terminal).",
                    metavar="NAME"),
                Opt("force", ("--force",), "Overwrite starter files that already exist.", "bool", False),
                Opt("no_input", ("--no-input",), "Never prompt, even on a terminal.", "bool", False),
            ), "_init"),
    Command("debug", "Check the project, the profile, the warehouse connection and the batch backend.",
            CONNECTION, "_debug"),
    Command("deps", "Install the packages of packages.yml / dependencies.yml (`local:` and `git:` entries) into "
            "dbt_packages/.", (PROJECT_DIR,), "_deps"),
    Command("seed", "Load the selected seed CSVs into tables (`run` and `build` also load missing or changed "
            "seeds).", (*CONNECTION, *SELECTION, THREADS, FULL_REFRESH, LOG_FORMAT), "_seed"),
    Command("snapshot", "Build the selected snapshots as dbt does: the first creates each table, each later one "
            "closes the rows that changed (dbt_valid_to) and inserts their new versions.",
            (*CONNECTION, *SELECTION, THREADS, LOG_FORMAT), "_snapshot"),
    Command("compile", "Render and parse every model; write target/compiled/ and target/manifest.json. Runs "
            "nothing.", (*CONNECTION, *SELECTION, LOG_FORMAT,
                         Opt("validate", ("--validate",), "Also dry-run each model in the warehouse.", "bool",
                             False)), "_compile"),
    Command("ls", "List the selected nodes in dependency order.", (
        *CONNECTION, *SELECTION,
        Opt("resource_type", ("--resource-type",), "Only nodes of this type (default: all).", "choice",
            choices=RESOURCE_TYPES),
        Opt("output", ("--output",), "As dbt ls prints: selectors (fqn), names, paths or JSON lines.", "choice",
            "selector", choices=LS_OUTPUTS),
    ), "_list_nodes"),
    Command("show", "Print rows of a model: a built one from its table, a batch model as prompt, answer, "
            "outcome and tokens side by side, an unbuilt one by running its compiled SELECT.", (
                *CONNECTION, Opt("select", ("--select", "-s"), "The model to show.", required=True,
                                 metavar="MODEL"),
                VARS, Opt("limit", ("--limit",), "Rows to show.", "int", 10, min=1, metavar="N"),
                Opt("output", ("--output",), "A table or JSON lines.", "choice", "table", choices=SHOW_OUTPUTS),
                Opt("sample", ("--sample",), "A batch model's sample: the N requests `run --sample N` sends, "
                    "with their answers (all N: --limit does not apply).", "int", min=1, metavar="N"),
                Opt("sample_fraction", ("--sample-fraction",), "A batch model's sample as a share of its requests, "
                    "as `run --sample-fraction` picks them.", "float", metavar="P"),
            ), "_show"),
    Command("run", "Build the selected models in dependency order (seeds they read that are missing or "
            "changed are loaded first). Batch models submit their requests and land the answers. Runs no tests.",
            RUN_OPTIONS, "_run"),
    Command("build", "Load the selected seeds, build the selected models in dependency order, then run the data "
            "tests of what was built.", RUN_OPTIONS, "_build"),
    Command("test", "Run the data tests (not_null, unique, accepted_values, relationships) of the selected nodes.",
            (*CONNECTION, *SELECTION, LOG_FORMAT), "_test"),
    Command("retry", "Resend only the failed rows of the selected batch models (same as `run --retry-failed`).",
            (*CONNECTION, *SELECTION, THREADS, LOG_FORMAT, NO_WAIT), "_retry"),
    Command("generate", "Write the docs site, target/index.html: every model, source, seed and test, the lineage "
            "graph, column-level lineage and each batch model's history and cost. Opens from disk, no server.", (
                *CONNECTION, VARS,
                Opt("empty_catalog", ("--empty-catalog",), "Do not read the warehouse: no column types, built "
                    "state or batch history.", "bool", False),
            ), "_docs_generate", group="docs"),
    Command("serve", "Serve target/ (the site `docs generate` wrote) over HTTP on 127.0.0.1.", (
        PROJECT_DIR, Opt("port", ("--port",), "Port to listen on (0: any free one).", "int", 8080, min=0, metavar="PORT"),
    ), "_docs_serve", group="docs"),
    Command("list", "Jobs of the ledger with their live state and completion counts.", (
        *CONNECTION,
        Opt("all_jobs", ("--all",), "Include landed, lost and failed jobs.", "bool", False),
        Opt("model", ("--model",), "Only this batch model's jobs.", metavar="MODEL"),
        Opt("output", ("--output",), "A table or JSON lines.", "choice", "table", choices=JOBS_OUTPUTS),
    ), "_jobs_list", group="jobs"),
    Command("show", "Everything the ledger and the backend know about one job, as JSON.", (JOB, *CONNECTION),
            "_jobs_show", group="jobs"),
    Command("cancel", "Cancel a running job; the rows it finished are landed by the next run.", (JOB, *CONNECTION),
            "_jobs_cancel", group="jobs"),
)
GROUPS = {"jobs": "Batch jobs recorded in the ledger (_batchflow_jobs): list, show, cancel.",
          "docs": "The docs site: generate it into target/, serve it locally."}


def command(name: str, group: Optional[str] = None) -> Command:
    """The declaration of one command."""
    return next(c for c in COMMANDS if c.name == name and c.group == group)


# ---- shared printing -------------------------------------------------------------------------------------


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


def _warnings_to(log_format: str) -> Callable[[list[Any]], None]:
    return lambda warnings: _print_warnings(warnings, log_format)


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


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f}s"


class ConsoleReporter:
    """The run header, per-model lines, a live bar per batch model and test results.

    On a terminal the bar moves with every poll (rows done/failed over every job of the round, jobs
    running and queued, elapsed, remaining) and names the phase after the wait (landing, building
    results). Without a terminal, there is no live bar: a line is printed when a batch model's phase
    or jobs change, never a blank one. With JSON, each update is a `batch_progress` event."""

    def __init__(self, log_format: str, console: Optional["Console"] = None):
        self.json = log_format == "json"
        self._out = console
        self._lock = threading.Lock()
        self._progress: "Progress | None" = None
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._last_line: dict[str, tuple] = {}

    def _emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event, default=str), flush=True)

    def _console(self) -> "Console":
        if self._progress is not None:
            return self._progress.console
        return self._out or _console()

    def run_started(self, start: "RunStart") -> None:
        """The header: version, project, target, selection, and who answers batch requests."""
        if self.json:
            self._emit({"event": "run_start", "command": start.command, "project": start.project,
                        "target": start.target, "nodes": start.selected, "answers_from": start.answers_from,
                        "mock": start.mock})
            return
        out = self._console()
        out.print(f"batchflow {__version__} · project [bold]{start.project}[/] · target [bold]{start.target}[/] "
                  f"({start.target_type}) · {start.selected} node(s)")
        if start.batch_models:
            if start.mock:
                out.print("[yellow]answers from the mock provider: not real model output[/]")
            else:
                out.print(f"answers from {start.answers_from}")

    def node_started(self, node: "Node", index: int, total: int) -> None:
        """Print the START line."""
        if self.json:
            self._emit({"event": "node_start", "node": node.name, "index": index, "total": total})
            return
        with self._lock:
            self._started[node.name] = time.monotonic()
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
                for line in batch_lines(result.batch):
                    out.print(f"      {line}")
            if result.status in ("skipped", "pending", "interrupted") and result.message:
                out.print(f"      [dim]{result.message}[/]")
            if result.status == "error":
                where = f"{result.path}:{result.line}" if result.line else result.path
                out.print(f"      [red]{where}: {result.message}[/]")

    def batch_progress(self, node: "Node", p: "BatchProgress") -> None:
        """Update the live bar (terminal), print a line on a change (no terminal), or emit an event (JSON)."""
        elapsed = time.monotonic() - self._started.get(node.name, time.monotonic())
        if self.json:
            self._emit({"event": "batch_progress", "node": node.name, "phase": p.phase, "state": p.state,
                        "done": p.done, "failed": p.failed, "total": p.total, "jobs_running": p.running,
                        "jobs_queued": p.queued, "seconds": round(elapsed, 3)})
            return
        jobs = f"{p.running} job(s) running, {p.queued} queued" if p.phase == "waiting" else ""
        status = " · ".join(x for x in (p.phase, p.state, jobs) if x)
        with self._lock:
            if not self._console().is_terminal:
                key = (p.phase, p.state, p.running, p.queued)
                idle = p.phase == "waiting" and not p.running and not p.queued  # the poll after the last land
                if self._last_line.get(node.name) != key and not idle:
                    self._last_line[node.name] = key
                    self._console().print(f"      [dim]{node.name}: {status}: {p.done:,}/{p.total:,} rows, "
                                          f"{p.failed:,} failed, {_elapsed(elapsed)}[/]")
                return
            if self._progress is None:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)

                self._progress = Progress(
                    TextColumn("      {task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                    TextColumn("[red]{task.fields[failed]} failed[/]"), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=self._console(), transient=True,
                )
                self._progress.start()
            # short enough for an 80-column terminal: the state while waiting, else the phase
            status = f"{p.state} · {p.running} running, {p.queued} queued" if p.phase == "waiting" else p.phase
            if node.name not in self._tasks:
                self._tasks[node.name] = self._progress.add_task(node.name, total=p.total or None, failed=0,
                                                                 status=status)
            self._progress.update(self._tasks[node.name], completed=p.done, total=p.total or None,
                                  failed=f"{p.failed:,}", status=status)

    def test_finished(self, result: "NodeResult") -> None:
        """Print PASS / FAIL (or a `test` event)."""
        if self.json:
            self._emit({"event": "test", "test": result.name, "status": result.status,
                        "failures": result.rows, "message": result.message})
            return
        if result.resource_type == "operation":  # on-run-start / on-run-end hooks
            ok = result.status == "success"
            self._console().print(f"{'[green]OK[/]' if ok else '[red]ERROR[/]'} hook {result.name}"
                                  + ("" if ok else f"  [red]{result.message}[/]"))
            return
        label = {"pass": "[green]PASS[/]", "success": "[green]PASS[/]", "warn": "[yellow]WARN[/]",
                 "skipped": "[yellow]SKIP[/]", "error": "[red]ERROR[/]"}.get(result.status, "[red]FAIL[/]")
        where = f" ({result.path}{f':{result.line}' if result.line else ''})" if result.status in ("error", "fail") \
            and result.path else ""
        color = "yellow" if result.status in ("warn", "skipped") else "red"
        self._console().print(f"{label} {result.name}" + (f"  [{color}]{result.message}[/]{where}"
                                                          if result.message else ""))

    def _stop_bar(self, name: str) -> None:
        with self._lock:
            if self._progress is not None and name in self._tasks:
                self._progress.remove_task(self._tasks.pop(name))
                if not self._tasks:
                    self._progress.stop()
                    self._progress = None


def _money(value: Optional[float]) -> str:
    return "no price configured" if value is None else f"${value:,.4f}"


def batch_lines(b: dict[str, Any]) -> list[str]:
    """The batch summary under a batch model's result line. The first line is arithmetic over the
    model's rows: every row is to send (new or changed), reused (answered before), a duplicate of
    another row's request (answered once), invalid, or in a job still running."""
    pending = b.get("rows_pending") or 0
    to_send = (b["would_send"] if b.get("dry_run") else
               max(b["rows_total"] - b["rows_invalid"] - b["rows_duplicate"] - b["rows_reused"] - pending, 0))
    verb = "would send" if b.get("dry_run") else "to send"
    parts = [f"{to_send:,} {verb}", f"{b['rows_reused']:,} reused", f"{b['rows_duplicate']:,} duplicate",
             f"{b['rows_invalid']:,} invalid"] + ([f"{pending:,} in running jobs"] if pending else [])
    lines = [f"rows {b['rows_total']:,} = " + " + ".join(parts)]
    sample = b.get("sample") or {}
    if sample:
        lines.append(f"sample: {sample['requests']:,} of {sample['of']:,} distinct request(s); the table holds only "
                     "these rows until a run without --sample")
    if b.get("mode") == "online":
        lines.append("online: answered at once (google-genai), at online prices")
    if not b.get("dry_run") and (b.get("rows_sent") or b.get("jobs")):
        retried = b.get("rows_retried") or 0
        lines.append(f"sent {b['rows_sent']:,} request(s) in {len(b.get('jobs') or [])} job(s)"
                     + (f", {retried:,} of them resent after a failed or missing answer" if retried else ""))
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
                     f"{_money(b.get('actual_cost'))}")
    if b.get("rows_missing"):
        lines.append(f"[red]missing {b['rows_missing']:,}[/] row(s) without an answer")
    lines += [f"[yellow]warning[/] {w}" for w in b.get("warnings", [])]
    return lines


# ---- commands ----------------------------------------------------------------------------------------------


def _interrupt_note(signum: int, log_format: str) -> None:
    import signal

    name = signal.Signals(signum).name
    if log_format == "json":
        print(json.dumps({"event": "interrupt", "signal": name}), flush=True)
    else:
        _err_console().print(f"[magenta]{name}[/]: stopping — nothing new is submitted, finished jobs are landed, "
                             "running jobs stay in the ledger for the next run (again to exit at once)")


def _run_command(fn_name: str, log_format: str, **kwargs: Any) -> None:
    """Run an api function that executes nodes, under SIGINT/SIGTERM handling, then print the summary
    and exit with the report's code."""
    from batchflow import api
    from batchflow.interrupt import Interrupt, handle_signals

    interrupt = Interrupt()
    reporter = ConsoleReporter(log_format)
    with handle_signals(interrupt, on_first=lambda signum: _interrupt_note(signum, log_format)):
        report = getattr(api, fn_name)(reporter=reporter, interrupt=interrupt,
                                       on_warnings=_warnings_to(log_format), **kwargs)
    _print_summary(report, log_format)
    if report.exit_code:
        _exit(report.exit_code)


def _print_summary(report: "RunReport", log_format: str) -> None:
    counts = report.summary
    if log_format == "json":
        print(json.dumps({"event": "run_finish", "summary": counts, "seconds": round(report.elapsed, 3)}))
        return
    console = _console()
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing selected"
    if report.interrupted:
        console.print(f"[magenta]Interrupted[/] ({report.interrupted}) after {report.elapsed:.2f}s: {parts}; "
                      "rerun to finish — jobs still running are adopted, nothing is paid twice")
    else:
        console.print(f"Finished in {report.elapsed:.2f}s: {parts}"
                      + (" (dry run: nothing was submitted)" if report.dry_run else ""))
    if report.full_refresh and not report.resubmit_batches and any(r.materialized == "batch" for r in report.results):
        console.print("[dim]--full-refresh kept every batch answer already paid for; add --resubmit-batches "
                      "to send them again[/]")


def _run(log_format: str = "text", **kwargs: Any) -> None:
    _run_command("run", log_format, **kwargs)


def _build(log_format: str = "text", **kwargs: Any) -> None:
    _run_command("build", log_format, **kwargs)


def _retry(log_format: str = "text", **kwargs: Any) -> None:
    _run_command("retry", log_format, **kwargs)


def _seed(log_format: str = "text", **kwargs: Any) -> None:
    _run_command("seed", log_format, **kwargs)


def _snapshot(log_format: str = "text", **kwargs: Any) -> None:
    _run_command("snapshot", log_format, **kwargs)


def _test(log_format: str = "text", **kwargs: Any) -> None:
    from batchflow import api

    report = api.test(reporter=ConsoleReporter(log_format), on_warnings=_warnings_to(log_format), **kwargs)
    counts = {s: sum(r.status == s for r in report.results) for s in ("pass", "warn", "fail", "error", "skipped")}
    if log_format == "json":
        print(json.dumps({"event": "test_finish", "summary": counts, "seconds": round(report.elapsed, 3)}))
    else:
        _console().print(f"Finished in {report.elapsed:.2f}s: " + ", ".join(
            f"{counts[s]} {'passed' if s == 'pass' else 'warned' if s == 'warn' else s if s != 'fail' else 'failed'}"
            for s in counts if counts[s] or s in ("pass", "fail")))
    if report.exit_code:
        _exit(report.exit_code)


def _compile(log_format: str = "text", validate: bool = False, **kwargs: Any) -> None:
    from batchflow import api

    report = api.compile_project(validate=validate, on_warnings=_warnings_to(log_format), **kwargs)
    console = _console()
    for name, status, message, size in report.validation:
        color = {"valid": "green", "invalid": "red", "skipped": "yellow"}[status]
        detail = f"  [dim]{size:,} bytes[/]" if size is not None else (f": {message}" if status == "skipped"
                                                                       else f"  {message}")
        console.print(f"[{color}]{status}[/] {name}{detail}")
    if any(status == "invalid" for _, status, _, _ in report.validation):
        pass  # the invalid models are the news: no list of what compiled
    elif log_format == "json":
        print(json.dumps({"event": "compiled", "nodes": [n.name for n in report.nodes]}))
    else:
        for node in report.nodes:
            console.print(f"compiled {node.materialized:<11} {node.name}  [dim]{node.path}[/]")
        console.print(f"{len(report.nodes)} model(s) compiled into {report.compiled_dir}")
    for _, error in report.errors:  # each model that did not compile (the others did), as file:line: message
        _report(error, log_format)
    if not report.ok:
        _exit(1)


def _list_nodes(project_dir: Path = Path("."), profiles_dir: Optional[Path] = None, target: Optional[str] = None,
                select: Optional[list[str]] = None, exclude: Optional[list[str]] = None,
                vars: Optional[str] = None, resource_type: Optional[str] = None, output: str = "selector",
                selector: Optional[str] = None, state: Optional[Path] = None) -> None:
    """`batchflow ls`: plain print (no rich), so listing needs neither rich nor typer. Formats as dbt's:
    selector (the fqn; `source:pkg.src.table`), name, path (the file), json (one object per line)."""
    from batchflow import api

    nodes = api.ls(project_dir, profiles_dir=profiles_dir, target=target, select=select, exclude=exclude, vars=vars,
                   resource_type=resource_type, on_warnings=_print_warnings, selector=selector, state=state)
    for node in nodes:
        if output == "json":
            print(json.dumps(api.ls_record(node), default=str))
        else:
            print({"path": node.path, "name": node.search_name}.get(output, node.selector))


def _show(select: str, limit: int = 10, output: str = "table", **kwargs: Any) -> None:
    from batchflow import api

    result = api.show(select, limit=limit, on_warnings=_print_warnings, **kwargs)
    if output == "json":
        for row in result.rows:
            print(json.dumps(row, default=str))
        return
    from rich.table import Table

    origin = {"table": "built table", "batch": "batch model: prompt, answer, outcome and tokens",
              "compiled": "not built: its compiled SELECT, unbuilt upstream models inlined"}[result.origin]
    table = Table(title=f"{result.model} [dim]({origin})[/]", title_justify="left", show_lines=result.origin == "batch")
    wide = {"prompt", "answer", "request", "response", "body"}
    for name in result.columns:
        table.add_column(name, overflow="fold", ratio=3 if name in wide else 1, no_wrap=name not in wide)
    for row in result.rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in result.columns))
    _console().print(table)
    _console().print(f"[dim]{len(result.rows)} row(s)[/]")


def _init(directory: Path = Path("."), name: Optional[str] = None, force: bool = False, no_input: bool = False) -> None:
    from batchflow import api

    if name is None and not no_input and sys.stdin.isatty() and sys.stdout.isatty():
        import typer

        name = typer.prompt("Project name", default=api._project_name(Path(directory).resolve().name))
    result = api.init(directory, name=name, force=force)
    console = _console()
    console.print(f"[green]created[/] project [bold]{result.name}[/] in {result.root} ({len(result.files)} files)")
    where = "" if result.root == Path.cwd() else f"cd {directory} && "
    console.print(f"next: {where}batchflow build      [dim]# offline: DuckDB and the mock provider[/]")
    console.print(f"      {where}batchflow show -s ticket_requests")


def _debug(**kwargs: Any) -> None:
    from batchflow import api

    api.debug(on_check=lambda text: _console().print(f"[green]OK[/] {text}"), on_warnings=_print_warnings, **kwargs)


def _docs_generate(**kwargs: Any) -> None:
    from batchflow import api

    result = api.docs_generate(on_warnings=_print_warnings, **kwargs)
    console = _console()
    console.print(f"[green]wrote[/] {result.path}  [dim]({result.nodes} nodes, {result.tests} tests, "
                  f"{result.batch_models} batch model(s); column lineage traced for {result.columns_traced} "
                  f"of {result.columns_traced + result.columns_untraced} model columns)[/]")
    if not result.warehouse:
        console.print("[dim]--empty-catalog: no column types, built state or batch history[/]")
    console.print("open it from disk, or: batchflow docs serve")


def _docs_serve(project_dir: Path = Path("."), port: int = 8080) -> None:
    from batchflow import api

    server = api.docs_server(project_dir, port=port)
    host, bound = server.server_address[:2]
    _console().print(f"serving {server.site_dir} at http://{host}:{bound}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _jobs_list(all_jobs: bool = False, model: Optional[str] = None, output: str = "table", **kwargs: Any) -> None:
    from batchflow import api

    rows = api.jobs_list(all_jobs=all_jobs, model=model, on_warnings=_print_warnings, **kwargs)
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


def _jobs_show(job: str, **kwargs: Any) -> None:
    from batchflow import api

    print(json.dumps(api.jobs_show(job, on_warnings=_print_warnings, **kwargs), indent=2, default=str))


def _jobs_cancel(job: str, **kwargs: Any) -> None:
    from batchflow import api

    done = api.jobs_cancel(job, on_warnings=_print_warnings, **kwargs)
    _console().print(f"{'cancelled' if done['cancelled'] else 'cancel requested for'} {done['job_name']} "
                     f"({done['state']}); the next run lands the rows it finished and resends the rest")


# ---- the typer app, generated from COMMANDS ---------------------------------------------------------------


def _parameter(opt: Opt, enums: dict[tuple[str, ...], Any]) -> inspect.Parameter:
    """The typer parameter (annotation + default) of one declaration."""
    from enum import Enum
    from typing import Annotated

    import typer

    kind = {"str": str, "path": Path, "int": int, "float": float, "bool": bool}.get(opt.kind)
    default = opt.default
    if opt.kind == "choice":
        # Choices as str enums: typer checks them (exit 2 with the allowed values), and a member compares
        # equal to its text, so the functions take plain strings.
        if opt.choices not in enums:
            enums[opt.choices] = Enum(f"Choice{len(enums)}", {v: v for v in opt.choices}, type=str)
        kind = enums[opt.choices]
        default = None if default is None else kind(default)
    annotation: Any = list[kind] if opt.multiple else kind
    if default is None and not opt.required:
        annotation = Optional[annotation]
    if not opt.flags:
        info = typer.Argument(help=opt.help, metavar=opt.metavar, show_default=default is not None)
    else:
        # a flag prints as a flag, not `--dry-run <bool>`
        info = typer.Option(*opt.flags, help=opt.help, metavar="" if opt.kind == "bool" else opt.metavar,
                            min=opt.min, show_default=opt.kind != "bool" and default is not None)
    return inspect.Parameter(opt.dest, inspect.Parameter.KEYWORD_ONLY,
                             default=inspect.Parameter.empty if opt.required else default,
                             annotation=Annotated[annotation, info])


def _typer_command(spec: Command, enums: dict[tuple[str, ...], Any]) -> Callable[..., None]:
    """A function typer can read (signature from the declarations) that calls the command's handler."""
    log_format = next((o for o in spec.options if o.dest == "log_format"), None)

    def invoke(**kwargs: Any) -> None:
        fmt = "json" if log_format and kwargs.get("log_format") == "json" else "text"
        try:
            globals()[spec.handler](**kwargs)
        except BatchflowError as exc:
            _fail(exc, fmt)

    params = [_parameter(o, enums) for o in spec.options]
    invoke.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    invoke.__annotations__ = {p.name: p.annotation for p in params}
    invoke.__doc__ = spec.help
    invoke.__name__ = spec.name
    return invoke


def _build_app() -> "typer.Typer":
    """The typer app with every command (built once, on first use: importing typer costs ~0.2 s)."""
    if "app" in globals():
        return globals()["app"]
    from typing import Annotated

    import typer

    from typer.core import TyperCommand, TyperGroup

    def quiet_help(cls: type) -> type:
        """--help prints as a flag too, not `--help <bool>`."""
        class Quiet(cls):  # type: ignore[misc, valid-type]
            def get_help_option(self, ctx: Any) -> Any:
                option = super().get_help_option(ctx)
                if option is not None:
                    option.metavar = ""
                return option
        return Quiet

    command_cls, group_cls = quiet_help(TyperCommand), quiet_help(TyperGroup)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=APP_HELP,
                      cls=group_cls)
    groups: dict[str, typer.Typer] = {}
    enums: dict[tuple[str, ...], Any] = {}
    for spec in COMMANDS:
        if spec.group and spec.group not in groups:
            groups[spec.group] = typer.Typer(no_args_is_help=True, help=GROUPS[spec.group], cls=group_cls)
            app.add_typer(groups[spec.group], name=spec.group)
        parent = groups[spec.group] if spec.group else app
        parent.command(spec.name, help=spec.help, cls=command_cls)(_typer_command(spec, enums))

    @app.callback(invoke_without_command=True)
    def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", metavar="")]
              = False) -> None:
        if version:
            _console().print(f"batchflow {__version__}")
            raise typer.Exit(0)

    globals().update(app=app, jobs_app=groups["jobs"])
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

# The options of `batchflow ls` and the keyword of `_list_nodes` each sets, from the same declarations
# as the typer command (tests/test_cli_startup.py checks them against it).
_LS = command("ls")
_LS_OPTIONS = {flag: o.dest for o in _LS.options for flag in o.flags}
_LS_MULTIPLE = frozenset(o.dest for o in _LS.options if o.multiple)
_LS_PATHS = frozenset(o.dest for o in _LS.options if o.kind == "path")
_LS_CHOICES = {o.dest: o.choices for o in _LS.options if o.kind == "choice"}


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
        if dest in _LS_CHOICES and value not in _LS_CHOICES[dest]:
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
