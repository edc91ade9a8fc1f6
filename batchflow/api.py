"""batchflow as a library: one function per command, returning plain results.

The CLI (`batchflow.cli`) is a shell over these functions: it declares options, prints and maps
results to exit codes. Orchestrators (Airflow, Dagster, a notebook) call them directly:

    from batchflow import api
    report = api.build("path/to/project", target="prod", select=["review_requests+"])
    if report.exit_code:
        raise RuntimeError(report.summary)

Nothing here prints. Progress goes to an optional `reporter` (see `Reporter`), configuration warnings
to `on_warnings` and into the result. Errors of the project or its configuration raise
`batchflow.errors.ConfigError` / `CompileError` (exit code 2 / 1 on the CLI); a model that fails is a
result with status "error", not an exception.

Importing this module is cheap (the `batchflow ls` fast path uses it): the loader, compiler, runner
and adapters are imported by the functions that need them.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from batchflow.errors import BatchflowError, ConfigError, ExecutionError

if TYPE_CHECKING:
    from batchflow.compiler import Compiler, Manifest, Node
    from batchflow.interrupt import Interrupt
    from batchflow.lifecycle import BatchProgress, RunFlags
    from batchflow.project import ConfigWarning, Project, Target
    from batchflow.runner import NodeResult

PathLike = "str | Path"
WarningsFn = Callable[[list[Any]], None]


# ---- results ---------------------------------------------------------------------------------------


class Reporter:
    """Receives a run's progress; every method is optional to override (the default does nothing)."""

    def run_started(self, start: "RunStart") -> None:
        """The project is compiled and the selection made; nothing has run yet."""

    def node_started(self, node: "Node", index: int, total: int) -> None:
        """A node began executing."""

    def node_finished(self, node: "Node", result: "NodeResult", index: int, total: int) -> None:
        """A node finished (success, error, skipped, pending or interrupted)."""

    def batch_progress(self, node: "Node", progress: "BatchProgress") -> None:
        """A batch model's jobs moved, or it entered another phase."""

    def test_finished(self, result: "NodeResult") -> None:
        """A data test ran."""


@dataclass
class RunStart:
    """What a run is about to do (the CLI prints it as the run header)."""

    command: str
    project: str
    target: str
    target_type: str
    selected: int
    #: who answers batch requests, e.g. "mock provider" or "Vertex AI batch (us-central1)"
    answers_from: str
    #: True when the answers are the deterministic mock's, not a real model's
    mock: bool
    batch_models: int


@dataclass
class RunReport:
    """The outcome of `run`, `build`, `seed`, `retry` and `test`."""

    command: str
    start: RunStart
    results: list["NodeResult"]
    elapsed: float
    run_id: str
    dry_run: bool = False
    full_refresh: bool = False
    resubmit_batches: bool = False
    interrupted: Optional[str] = None  # the signal's name (SIGINT, SIGTERM) when one stopped the run
    warnings: list[Any] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        """Nodes per status, e.g. {"success": 7, "error": 1}."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 130/143 interrupted, 1 when a node or test failed, else 0."""
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if any(r.status == "error" for r in self.results) else 0


@dataclass
class CompileReport:
    """What `compile` wrote and, with validate, how each model's dry run went."""

    nodes: list["Node"]
    compiled_dir: Path
    #: (model, "valid" | "invalid" | "skipped", message, bytes) per model, with validate only
    validation: list[tuple[str, str, str, Optional[int]]] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No model failed its dry run."""
        return all(status != "invalid" for _, status, _, _ in self.validation)


@dataclass
class ShowResult:
    """Rows of a model, for `batchflow show`."""

    model: str
    columns: list[str]
    rows: list[dict[str, Any]]
    #: "table": read from the built relation; "compiled": its SELECT run with unbuilt upstreams inlined;
    #: "batch": a batch model's request prompt, answer, outcome and tokens side by side
    origin: str
    sql: str = ""


@dataclass
class InitResult:
    """The starter project `init` wrote."""

    root: Path
    name: str
    files: list[Path]


@dataclass
class Session:
    """A loaded and compiled project for one command."""

    project: "Project"
    target: "Target"
    compiler: "Compiler"
    manifest: "Manifest"


# ---- loading ----------------------------------------------------------------------------------------


def parse_vars(text: Optional[str | dict[str, Any]]) -> dict[str, Any]:
    """`--vars` as YAML or JSON text (a mapping), or a mapping already."""
    if not text:
        return {}
    if isinstance(text, dict):
        return text
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--vars is not valid YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--vars must be a mapping, e.g. --vars '{start_date: 2024-01-01}'")
    return value


def load(project_dir: PathLike = ".", profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
         vars: Optional[str | dict[str, Any]] = None, on_warnings: Optional[WarningsFn] = None) -> Session:
    """Load the project and profile and compile every model."""
    from batchflow.compiler import Compiler
    from batchflow.project import load_profile, load_project

    # Loading and compiling create many objects that all live on and few cycles: with Python's default
    # threshold (700) the collector rescans them a few hundred times, ~15% of a warm `ls`.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        project = load_project(Path(project_dir).resolve(), parse_vars(vars))
        tgt = load_profile(project, Path(profiles_dir) if profiles_dir else None, target)
        compiler = Compiler(project, tgt)
        session = Session(project, tgt, compiler, compiler.compile())
    finally:
        gc.set_threshold(*thresholds)
    if on_warnings is not None:
        on_warnings(session.manifest.warnings)
    return session


def select_nodes(session: Session, select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None,
           resource_types: tuple[str, ...] = ("model", "seed")) -> set[str]:
    """Names chosen by dbt selection syntax, of the given resource types."""
    chosen = session.manifest.graph.select(list(select) if select else None, list(exclude) if exclude else None)
    return {n for n in chosen if session.manifest.nodes[n].resource_type in resource_types}


def answering(target: "Target") -> tuple[str, bool]:
    """Who answers this target's batch requests, and whether it is the mock (not real model output)."""
    batch = target.batch or {}
    backend = batch.get("backend") or ("local" if target.type == "duckdb" else "vertex")
    if backend == "vertex":
        where = batch.get("location") or target.settings.get("location") or ""
        return f"Vertex AI batch prediction{f' ({where})' if where else ''}", False
    provider = batch.get("provider", "mock")
    if provider == "mock":
        return "the mock provider", True
    options = batch.get(provider) or {}
    url = options.get("base_url", "")
    return f"the {provider} provider{f' at {url}' if url else ''}", False


# ---- run, build, seed, retry, test -------------------------------------------------------------------


def run_flags(dry_run: bool = False, no_wait: bool = False, retry_failed: bool = False,
              resubmit_batches: bool = False, full_refresh: bool = False) -> "RunFlags":
    """The batch switches of a run, with the combinations that make no sense refused."""
    from batchflow.lifecycle import RunFlags

    if resubmit_batches and not full_refresh:
        raise ConfigError("--resubmit-batches pays for every request again; it only works with --full-refresh")
    if dry_run and (no_wait or retry_failed):
        raise ConfigError("--dry-run submits nothing; it cannot be combined with --no-wait or --retry-failed")
    return RunFlags(dry_run=dry_run, no_wait=no_wait, retry_failed=retry_failed, resubmit_all=resubmit_batches)


def _execute(command: str, project_dir: PathLike, *, profiles_dir: Optional[PathLike], target: Optional[str],
             select_: Optional[Iterable[str]], exclude: Optional[Iterable[str]], vars: Any, threads: Optional[int],
             full_refresh: bool, flags: "RunFlags", resource_types: tuple[str, ...], with_tests: bool,
             stale_seeds: bool, reporter: Optional[Reporter], interrupt: Optional["Interrupt"],
             on_warnings: Optional[WarningsFn]) -> RunReport:
    from batchflow.adapters import open_backend, open_warehouse
    from batchflow.artifacts import write_compiled, write_manifest, write_run_results
    from batchflow.interrupt import Interrupt
    from batchflow.runner import RunOptions, Runner

    reporter = reporter or Reporter()
    interrupt = interrupt or Interrupt()
    started = time.perf_counter()
    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    write_compiled(session.manifest)
    write_manifest(session.manifest, command)
    selected = select_nodes(session, select_, exclude, resource_types)
    options = RunOptions(threads=threads or session.target.threads, full_refresh=full_refresh,
                         load_source_samples=session.target.type == "duckdb", batch=flags, interrupt=interrupt)
    warehouse = open_warehouse(session.target, session.project)
    try:
        if stale_seeds:  # seeds are nodes: load those the selection reads that are missing or changed
            from batchflow.seeds import stale_seeds as stale, upstream_seeds

            selected |= stale(session.manifest, warehouse, upstream_seeds(session.manifest, selected) - selected)
        who, mock = answering(session.target)
        start = RunStart(command, session.project.name, session.target.name, session.target.type, len(selected), who,
                         mock, sum(session.manifest.nodes[n].materialized == "batch" for n in selected))
        reporter.run_started(start)
        runner = Runner(session.manifest, session.compiler, warehouse,
                        lambda: open_backend(session.target, warehouse), reporter, options)
        results = runner.run(selected)
        if with_tests and not interrupt.is_set():  # dbt's habit: build = seeds + models + the tests of what was built
            built = {r.name for r in results if r.status == "success"}
            results += _run_tests(session, warehouse, built, reporter)
    finally:
        warehouse.close()
    elapsed = time.perf_counter() - started
    write_run_results(session.manifest, command, results, elapsed, options.run_id)
    return RunReport(command, start, results, elapsed, options.run_id, dry_run=flags.dry_run,
                     full_refresh=full_refresh, resubmit_batches=flags.resubmit_all,
                     interrupted=interrupt.name if interrupt.is_set() else None,
                     warnings=list(session.manifest.warnings))


def _run_tests(session: Session, warehouse: Any, nodes: set[str], reporter: Reporter) -> list["NodeResult"]:
    from batchflow import testing

    results = testing.run(testing.collect(session.manifest, nodes), session.manifest, warehouse)
    for result in results:
        reporter.test_finished(result)
    return results


def run(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
        select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
        threads: Optional[int] = None, full_refresh: bool = False, dry_run: bool = False, no_wait: bool = False,
        retry_failed: bool = False, resubmit_batches: bool = False, reporter: Optional[Reporter] = None,
        interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None) -> RunReport:
    """`batchflow run`: build the selected models; seeds they read that are missing or whose file
    changed are loaded first. Batch models submit their requests and land the answers."""
    flags = run_flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh)
    return _execute("run", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=flags, resource_types=("model",),
                    with_tests=False, stale_seeds=True, reporter=reporter, interrupt=interrupt,
                    on_warnings=on_warnings)


def build(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
          select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
          threads: Optional[int] = None, full_refresh: bool = False, dry_run: bool = False, no_wait: bool = False,
          retry_failed: bool = False, resubmit_batches: bool = False, reporter: Optional[Reporter] = None,
          interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None) -> RunReport:
    """`batchflow build`: load the selected seeds, build the selected models in dependency order, then
    run the data tests of what was built (not in a dry run)."""
    flags = run_flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh)
    return _execute("build", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=flags,
                    resource_types=("model", "seed"), with_tests=not dry_run, stale_seeds=True, reporter=reporter,
                    interrupt=interrupt, on_warnings=on_warnings)


def retry(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
          select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
          threads: Optional[int] = None, no_wait: bool = False, reporter: Optional[Reporter] = None,
          interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None) -> RunReport:
    """`batchflow retry`: resend only the failed rows of the selected batch models."""
    flags = run_flags(no_wait=no_wait, retry_failed=True)
    return _execute("retry", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=False, flags=flags, resource_types=("model",),
                    with_tests=False, stale_seeds=True, reporter=reporter, interrupt=interrupt,
                    on_warnings=on_warnings)


def seed(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
         select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
         threads: Optional[int] = None, full_refresh: bool = False, reporter: Optional[Reporter] = None,
         interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None) -> RunReport:
    """`batchflow seed`: load the selected seed CSVs into tables, whether they changed or not (each load
    replaces the table, so `full_refresh` changes nothing; it is accepted for dbt habits)."""
    from batchflow.lifecycle import RunFlags

    return _execute("seed", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=RunFlags(),
                    resource_types=("seed",), with_tests=False, stale_seeds=False, reporter=reporter,
                    interrupt=interrupt, on_warnings=on_warnings)


def test(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
         select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
         reporter: Optional[Reporter] = None, on_warnings: Optional[WarningsFn] = None) -> RunReport:
    """`batchflow test`: the data tests (not_null, unique, accepted_values, relationships) of the
    selected nodes, against what is built."""
    from batchflow.adapters import open_warehouse
    from batchflow.artifacts import write_run_results

    reporter = reporter or Reporter()
    started = time.perf_counter()
    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    selected = select_nodes(session, select, exclude, ("model", "seed", "source"))
    who, mock = answering(session.target)
    start = RunStart("test", session.project.name, session.target.name, session.target.type, len(selected),
                     who, mock, 0)
    warehouse = open_warehouse(session.target, session.project)
    try:
        results = _run_tests(session, warehouse, selected, reporter)
    finally:
        warehouse.close()
    elapsed = time.perf_counter() - started
    write_run_results(session.manifest, "test", results, elapsed, "test")
    return RunReport("test", start, results, elapsed, "test", warnings=list(session.manifest.warnings))


# ---- compile, ls, debug ------------------------------------------------------------------------------


def compile_project(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
                    target: Optional[str] = None, select: Optional[Iterable[str]] = None,
                    exclude: Optional[Iterable[str]] = None, vars: Any = None, validate: bool = False,
                    on_warnings: Optional[WarningsFn] = None) -> CompileReport:
    """`batchflow compile`: render and parse every model, write target/compiled/ and
    target/manifest.json; with `validate`, dry-run each selected model in the warehouse."""
    from batchflow.artifacts import write_compiled, write_manifest

    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    write_compiled(session.manifest)
    write_manifest(session.manifest, "compile")
    chosen = select_nodes(session, select, exclude, ("model",))
    order = [n for n in session.manifest.graph.topological_order() if n in chosen]
    report = CompileReport([session.manifest.nodes[n] for n in order], session.project.target_path / "compiled",
                           warnings=list(session.manifest.warnings))
    if validate:
        report.validation = _validate(session, order)
    return report


def _validate(session: Session, order: list[str]) -> list[tuple[str, str, str, Optional[int]]]:
    """Dry-run each model in the warehouse (models not built yet are inlined)."""
    from batchflow.adapters import open_warehouse
    from batchflow.compiler import NeedsBatchResults, inline_unbuilt
    from batchflow.runner import load_source_samples

    manifest, out = session.manifest, []
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
                out.append((name, "valid", "", size))
            except NeedsBatchResults as exc:
                out.append((name, "skipped", exc.message, None))
            except BatchflowError as exc:
                out.append((name, "invalid", f"{node.path}: {exc.message}", None))
    finally:
        warehouse.close()
    return out


def ls(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
       select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
       resource_type: Optional[str] = None, on_warnings: Optional[WarningsFn] = None) -> list["Node"]:
    """`batchflow ls`: the selected nodes in dependency order (imports no warehouse code)."""
    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    types = (resource_type,) if resource_type else ("model", "seed", "source")
    chosen = select_nodes(session, select, exclude, types)
    return [session.manifest.nodes[n] for n in session.manifest.graph.topological_order() if n in chosen]


def debug(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
          on_check: Optional[Callable[[str], None]] = None,
          on_warnings: Optional[WarningsFn] = None) -> list[str]:
    """`batchflow debug`: load the project and profile, then construct the warehouse, the batch backend
    and its provider and make one real call to each. Returns what passed (each also goes to `on_check`
    as it passes); raises on the first failure."""
    from batchflow.adapters import open_backend, open_warehouse
    from batchflow.project import load_profile, load_project

    checks: list[str] = []

    def passed(text: str) -> None:
        checks.append(text)
        if on_check is not None:
            on_check(text)

    project = load_project(Path(project_dir).resolve())
    passed(f"project {project.name!r} at {project.root} "
           f"({len(project.models)} models, {len(project.seeds)} seeds, {len(project.sources)} sources)")
    tgt = load_profile(project, Path(profiles_dir) if profiles_dir else None, target)
    if on_warnings is not None:
        on_warnings([*project.warnings, *tgt.warnings])
    passed(f"profile {tgt.profile!r}, target {tgt.name!r} ({tgt.type}, schema {tgt.schema})")
    warehouse = open_warehouse(tgt, project)
    try:
        warehouse.query_arrow("SELECT 1 AS ok")
        passed(f"connection to {warehouse.name}")
        backend = open_backend(tgt, warehouse)
        try:
            answered = backend.check()  # one real call: credentials, endpoint, permissions, provider
        except BatchflowError as exc:
            raise ExecutionError(f"batch backend {backend.name} ({backend.describe()}) did not answer: "
                                 f"{exc.message}") from None
        passed(f"batch backend {backend.name}: {backend.describe()}; {answered}")
    finally:
        warehouse.close()
    return checks


# ---- jobs --------------------------------------------------------------------------------------------


def _ledger_session(project_dir: PathLike, profiles_dir: Optional[PathLike], target: Optional[str],
                    on_warnings: Optional[WarningsFn]) -> tuple["Target", Any, Any]:
    from batchflow.adapters import open_warehouse
    from batchflow.ledger import Ledger
    from batchflow.project import load_profile, load_project

    project = load_project(Path(project_dir).resolve())
    tgt = load_profile(project, Path(profiles_dir) if profiles_dir else None, target)
    if on_warnings is not None:
        on_warnings([*project.warnings, *tgt.warnings])
    warehouse = open_warehouse(tgt, project)
    return tgt, warehouse, Ledger(warehouse)


def _live(backend: Any, entry: Any) -> dict[str, Any]:
    """The ledger row, refreshed from the backend for jobs that may still change."""
    from batchflow.batch.states import rule

    row = dict(entry.__dict__)
    if backend is not None and entry.job_name and not rule(entry.state).terminal:
        try:
            status = backend.get(entry.job_name)
            row.update(state=status.state.value, successful_count=status.successful,
                       failed_count=status.failed, error=status.error)
        except BatchflowError as exc:
            row["error"] = f"backend: {exc.message}"
    return row


def _find_entry(ledger: Any, job: str) -> Any:
    matches = [e for e in ledger.entries() if job in (e.job_key, e.job_name) or (e.job_name or "").endswith("/" + job)]
    if not matches:
        raise ConfigError(f"no job {job!r} in the ledger; see `batchflow jobs list --all`")
    return matches[-1]


def jobs_list(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
              target: Optional[str] = None, all_jobs: bool = False, model: Optional[str] = None,
              on_warnings: Optional[WarningsFn] = None) -> list[dict[str, Any]]:
    """`batchflow jobs list`: ledger rows (open ones unless `all_jobs`) with their live state."""
    from batchflow.adapters import open_backend

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target, on_warnings)
    try:
        entries = ledger.entries(node=model, open_only=not all_jobs)
        backend = open_backend(tgt, warehouse) if any(e.job_name for e in entries) else None
        return [_live(backend, e) for e in entries]
    finally:
        warehouse.close()


def jobs_show(job: str, project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
              target: Optional[str] = None, on_warnings: Optional[WarningsFn] = None) -> dict[str, Any]:
    """`batchflow jobs show`: everything the ledger and the backend know about one job."""
    from batchflow.adapters import open_backend

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target, on_warnings)
    try:
        entry = _find_entry(ledger, job)
        return _live(open_backend(tgt, warehouse) if entry.job_name else None, entry)
    finally:
        warehouse.close()


def jobs_cancel(job: str, project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
                target: Optional[str] = None, on_warnings: Optional[WarningsFn] = None) -> dict[str, Any]:
    """`batchflow jobs cancel`: cancel a running job. Returns {"job_name", "state", "cancelled"}; raises
    ConfigError when there is nothing to cancel."""
    from batchflow.adapters import open_backend
    from batchflow.batch.base import JobNotFoundError
    from batchflow.batch.states import JobState, rule

    tgt, warehouse, ledger = _ledger_session(project_dir, profiles_dir, target, on_warnings)
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
    return {"job_name": entry.job_name, "state": after.state.value, "cancelled": after.state is JobState.CANCELLED}


# ---- show, init ----------------------------------------------------------------------------------------


def show(model: str, project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
         target: Optional[str] = None, vars: Any = None, limit: int = 10,
         on_warnings: Optional[WarningsFn] = None) -> ShowResult:
    """`batchflow show`: up to `limit` rows of a model. A built model is read from its relation; a batch
    model shows each row's prompt, answer text, outcome and tokens; a model not built yet runs its
    compiled SELECT with the models it reads that are not built either inlined."""
    from batchflow.show import show_rows

    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    return show_rows(session, model, limit)


def init(directory: PathLike = ".", *, name: Optional[str] = None, force: bool = False) -> InitResult:
    """`batchflow init`: write a starter project (a source sample, a staging model, a batch model, a
    flatten model, a yml test and profiles.yml) that `batchflow build` runs offline."""
    from batchflow.init_project import write_starter

    root = Path(directory).resolve()
    project_name = name or _project_name(root.name)
    return InitResult(root, project_name, write_starter(root, project_name, force=force))


def _project_name(folder: str) -> str:
    import re

    cleaned = re.sub(r"\W+", "_", folder.lower()).strip("_")
    return cleaned if cleaned and not cleaned[0].isdigit() else f"project_{cleaned}".rstrip("_")
