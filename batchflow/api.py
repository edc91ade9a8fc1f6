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

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from batchflow.errors import BatchflowError, ConfigError, ExecutionError

if TYPE_CHECKING:
    from batchflow.compiler import Compiler, Manifest, Node
    from batchflow.interrupt import Interrupt
    from batchflow.lifecycle import BatchProgress, RunFlags
    from batchflow.project import ConfigWarning, Project, Target
    from batchflow.graph import NodeInfo
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
        return 1 if any(r.status in ("error", "fail") for r in self.results) else 0


@dataclass
class CompileReport:
    """What `compile` wrote and, with validate, how each model's dry run went."""

    nodes: list["Node"]
    compiled_dir: Path
    #: (model, "valid" | "invalid" | "skipped", message, bytes) per model, with validate only
    validation: list[tuple[str, str, str, Optional[int]]] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)
    #: (model, its error) per selected model that failed to render or parse (the others compiled)
    errors: list[tuple[str, BatchflowError]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every selected model compiled and none failed its dry run."""
        return not self.errors and all(status != "invalid" for _, status, _, _ in self.validation)


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
    #: the dbt selection graph (batchflow.selection.Selection), built on first use
    selection: Any = None


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
         vars: Optional[str | dict[str, Any]] = None, on_warnings: Optional[WarningsFn] = None,
         warn_uncompiled: bool = True) -> Session:
    """Load the project and profile and compile every model. A model that fails to render or parse fails
    alone, as in dbt (`Manifest.errors`; building it is an error, what reads it is skipped); with
    `warn_uncompiled` each one is also a warning (file:line). Configuration errors raise."""
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
        session = Session(project, tgt, compiler, compiler.compile(keep_going=True))
    finally:
        gc.set_threshold(*thresholds)
    if warn_uncompiled:
        session.manifest.warnings += uncompiled_warnings(session.manifest)
    if on_warnings is not None:
        on_warnings(session.manifest.warnings)
    return session


def uncompiled_warnings(manifest: "Manifest", skip: Iterable[str] = ()) -> list["ConfigWarning"]:
    """A warning (file:line of the error) for each model that did not compile, but those in `skip`."""
    from batchflow.project import ConfigWarning

    skipped = set(skip)
    return [ConfigWarning(f"model {name!r} did not compile: {error.message}", error.path, error.line)
            for name, error in manifest.errors.items() if name not in skipped]


def selection(session: Session, with_state: bool = False) -> Any:
    """The session's dbt selection graph (`batchflow.selection.Selection`), built once."""
    from batchflow.selection import build

    if session.selection is None or (with_state and not session.selection.with_state):
        session.selection = build(session.manifest, with_state=with_state)
    return session.selection


def select_ids(session: Session, select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None,
               selector: Optional[str] = None, state: Optional[PathLike] = None) -> set[str]:
    """dbt unique ids chosen by `--select`/`--exclude`, or by a selectors.yml `selector`, as dbt chooses
    (tests follow the nodes they test); `state` is a folder with a previous manifest.json (and
    run_results.json) for `state:` and `result:` selectors."""
    from batchflow.selection import load_state

    previous = load_state(state) if state else None
    return selection(session, with_state=previous is not None).select(select, exclude, selector, previous)


def select_nodes(session: Session, select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None,
                 resource_types: tuple[str, ...] = ("model", "seed"), selector: Optional[str] = None,
                 state: Optional[PathLike] = None) -> set[str]:
    """Names (keys of Manifest.nodes) chosen by dbt selection syntax, of the given resource types."""
    chosen = select_ids(session, select, exclude, selector, state)
    keys = selection(session).keys
    return {keys[u] for u in chosen if u in keys and session.manifest.nodes[keys[u]].resource_type in resource_types}


def answering(target: "Target", online: bool = False) -> tuple[str, bool]:
    """Who answers this target's batch requests, and whether it is the mock (not real model output)."""
    batch = target.batch or {}
    backend = "online" if online else batch.get("backend") or ("local" if target.type == "duckdb" else "vertex")
    if backend == "online":
        return "online calls to Gemini (google-genai generate_content, online prices)", False
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
              resubmit_batches: bool = False, full_refresh: bool = False, online: bool = False,
              sample: Optional[int] = None, sample_fraction: Optional[float] = None) -> "RunFlags":
    """The batch switches of a run, with the combinations that make no sense refused."""
    from batchflow.lifecycle import RunFlags

    check_sample(sample, sample_fraction)
    if online and no_wait:
        raise ConfigError("--online answers while the command runs; --no-wait does not apply to it")

    if resubmit_batches and not full_refresh:
        raise ConfigError("--resubmit-batches pays for every request again; it only works with --full-refresh")
    if dry_run and (no_wait or retry_failed):
        raise ConfigError("--dry-run submits nothing; it cannot be combined with --no-wait or --retry-failed")
    return RunFlags(dry_run=dry_run, no_wait=no_wait, retry_failed=retry_failed, resubmit_all=resubmit_batches,
                    online=online, sample=sample, sample_fraction=sample_fraction)


def check_sample(sample: Optional[int], sample_fraction: Optional[float]) -> None:
    """--sample N (N ≥ 1) or --sample-fraction p (0 < p ≤ 1), not both."""
    if sample is not None and sample_fraction is not None:
        raise ConfigError("--sample and --sample-fraction pick the same rows two ways; give one")
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be 1 or more, got {sample}")
    if sample_fraction is not None and not 0 < sample_fraction <= 1:
        raise ConfigError(f"--sample-fraction must be over 0 and at most 1, got {sample_fraction}")


def _execute(command: str, project_dir: PathLike, *, profiles_dir: Optional[PathLike], target: Optional[str],
             select_: Optional[Iterable[str]], exclude: Optional[Iterable[str]], vars: Any, threads: Optional[int],
             full_refresh: bool, flags: "RunFlags", resource_types: tuple[str, ...], with_tests: bool,
             stale_seeds: bool, reporter: Optional[Reporter], interrupt: Optional["Interrupt"],
             on_warnings: Optional[WarningsFn], selector: Optional[str] = None,
             state: Optional[PathLike] = None, defer: bool = False,
             snapshot_time: Optional[datetime] = None) -> RunReport:
    from batchflow.adapters import backend_name, open_backend, open_warehouse
    from batchflow.artifacts import write_compiled, write_manifest, write_run_results
    from batchflow.interrupt import Interrupt
    from batchflow.runner import RunOptions, Runner

    reporter = reporter or Reporter()
    interrupt = interrupt or Interrupt()
    started = time.perf_counter()
    session = load(project_dir, profiles_dir, target, vars, warn_uncompiled=False)
    write_compiled(session.manifest)
    session.manifest.warnings += _write_analyses(session)
    if defer and not state:
        raise ConfigError("--defer needs --state DIR: the folder of the manifest.json whose relations unbuilt "
                          "parents resolve to")
    chosen = select_ids(session, select_, exclude, selector, state)
    write_manifest(session.manifest, command, selection(session, with_state=True))
    keys = selection(session).keys
    selected = {keys[u] for u in chosen if u in keys and session.manifest.nodes[keys[u]].resource_type in resource_types}
    session.manifest.warnings += uncompiled_warnings(session.manifest, skip=selected)  # selected: an ERROR result
    if on_warnings is not None:
        on_warnings(session.manifest.warnings)
    if backend_name(session.target) == "online" and not flags.online:  # `backend: online`: every run is online
        flags = dataclasses.replace(flags, online=True)
    options = RunOptions(threads=threads or session.target.threads, full_refresh=full_refresh,
                         load_source_samples=session.target.type == "duckdb", batch=flags, interrupt=interrupt,
                         snapshot_time=snapshot_time)
    warehouse = open_warehouse(session.target, session.project)
    try:
        if defer:  # parents left out of the selection and not built here are read where the state built them
            from batchflow.selection import apply_defer, load_state

            apply_defer(session.manifest, selected, load_state(state),  # type: ignore[arg-type]
                        lambda node: warehouse.kind(node.relation) is not None)
        if stale_seeds:  # seeds are nodes: load those the selection reads that are missing or changed
            from batchflow.seeds import stale_seeds as stale, upstream_seeds

            selected |= stale(session.manifest, warehouse, upstream_seeds(session.manifest, selected) - selected)
        who, mock = answering(session.target, flags.online)
        start = RunStart(command, session.project.name, session.target.name, session.target.type, len(selected), who,
                         mock, sum(session.manifest.nodes[n].materialized == "batch" for n in selected))
        reporter.run_started(start)
        runner = Runner(session.manifest, session.compiler, warehouse,
                        lambda: open_backend(session.target, warehouse, online=flags.online), reporter, options)
        results = _with_project_hooks(session, warehouse, flags.dry_run, lambda: runner.run(
            selected, *_checks(session, warehouse, chosen, selected)) if with_tests else runner.run(selected), reporter)
    finally:
        warehouse.close()
    elapsed = time.perf_counter() - started
    write_run_results(session.manifest, command, results, elapsed, options.run_id, selection(session))
    return RunReport(command, start, results, elapsed, options.run_id, dry_run=flags.dry_run,
                     full_refresh=full_refresh, resubmit_batches=flags.resubmit_all,
                     interrupted=interrupt.name if interrupt.is_set() else None,
                     warnings=list(session.manifest.warnings))


def _write_analyses(session: Session) -> list[Any]:
    """Compile the project's analyses to target/compiled (never run); warnings for those that fail."""
    from batchflow.analyses import compile_analyses

    return compile_analyses(session.compiler)[1]


def _with_project_hooks(session: Session, warehouse: Any, dry_run: bool,
                        body: Callable[[], list["NodeResult"]], reporter: Optional[Reporter] = None
                        ) -> list["NodeResult"]:
    """`body()` between the project's on-run-start and on-run-end hooks (not in a dry run). A failing
    on-run-start hook stops the command before anything runs, as in dbt."""
    if dry_run:
        return body()
    from batchflow.hooks import run_project_hooks

    def report(done: list["NodeResult"]) -> list["NodeResult"]:
        for result in done:
            if reporter is not None:
                reporter.test_finished(result)
        return done

    start = report(run_project_hooks("on-run-start", session.compiler, session.manifest, warehouse))
    if any(r.status == "error" for r in start):
        return start
    results = body()
    return start + results + report(run_project_hooks("on-run-end", session.compiler, session.manifest,
                                                      warehouse, results))


def _checks(session: Session, warehouse: Any, chosen: set[str], selected: set[str]
            ) -> tuple[list[Any], Callable[[Any], "NodeResult"], dict[str, set[str]]]:
    """The data tests and unit tests among `chosen` unique ids, the function that runs one, and which
    selected nodes wait for each (dbt's build order: a model waits for the tests of the nodes it reads,
    unless a test also reads the model or what it feeds, and for its own unit tests)."""
    from batchflow import testing, unit_tests

    manifest = session.manifest
    sel = selection(session)
    data = testing.collect(manifest, sel, chosen)
    units = unit_tests.collect(manifest, sel, chosen)
    blocks: dict[str, set[str]] = {}
    below: dict[str, set[str]] = {}

    def downstream(name: str) -> set[str]:
        if name not in below:
            below[name] = manifest.graph.downstream(name) | {name}
        return below[name]

    for test in data:
        if test.node is None:
            continue
        blocks[test.key] = {n for n in selected if test.node in manifest.nodes[n].depends_on
                            and not any(d in downstream(n) for d in test.depends_on)}
    for unit in units:
        blocks[unit.key] = {unit.model}

    def run_check(check: Any) -> "NodeResult":
        if isinstance(check, unit_tests.UnitTest):
            return unit_tests.run_one(check, session.compiler, manifest, warehouse)
        return testing.run_one(check, session.compiler, manifest, warehouse)

    return [*data, *units], run_check, blocks


def run(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
        select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
        threads: Optional[int] = None, full_refresh: bool = False, dry_run: bool = False, no_wait: bool = False,
        retry_failed: bool = False, resubmit_batches: bool = False, reporter: Optional[Reporter] = None,
        interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None,
        selector: Optional[str] = None, state: Optional[PathLike] = None, defer: bool = False, online: bool = False,
        sample: Optional[int] = None, sample_fraction: Optional[float] = None) -> RunReport:
    """`batchflow run`: build the selected models; seeds they read that are missing or whose file
    changed are loaded first. Batch models submit their requests and land the answers. `online`: each
    request is answered at once (google-genai, online prices) instead of in a batch job; `sample` /
    `sample_fraction`: each batch model sends only that many of its requests (the same ones every
    time: those with the smallest request hashes) and its table holds only them."""
    flags = run_flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh, online, sample, sample_fraction)
    return _execute("run", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=flags, resource_types=("model",),
                    with_tests=False, stale_seeds=True, reporter=reporter, interrupt=interrupt,
                    on_warnings=on_warnings, selector=selector, state=state, defer=defer)


def build(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
          select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
          threads: Optional[int] = None, full_refresh: bool = False, dry_run: bool = False, no_wait: bool = False,
          retry_failed: bool = False, resubmit_batches: bool = False, reporter: Optional[Reporter] = None,
          interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None,
          selector: Optional[str] = None, state: Optional[PathLike] = None, defer: bool = False, online: bool = False,
          sample: Optional[int] = None, sample_fraction: Optional[float] = None) -> RunReport:
    """`batchflow build`: load the selected seeds, build the selected models in dependency order, then
    run the data tests of what was built (not in a dry run). `online`, `sample`, `sample_fraction`: as
    for `run`."""
    flags = run_flags(dry_run, no_wait, retry_failed, resubmit_batches, full_refresh, online, sample, sample_fraction)
    return _execute("build", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=flags,
                    resource_types=("model", "seed", "snapshot"), with_tests=not dry_run, stale_seeds=True,
                    reporter=reporter,
                    interrupt=interrupt, on_warnings=on_warnings, selector=selector, state=state, defer=defer)


def retry(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
          select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
          threads: Optional[int] = None, no_wait: bool = False, reporter: Optional[Reporter] = None,
          interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None,
          selector: Optional[str] = None, state: Optional[PathLike] = None) -> RunReport:
    """`batchflow retry`: resend only the failed rows of the selected batch models."""
    flags = run_flags(no_wait=no_wait, retry_failed=True)
    return _execute("retry", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=False, flags=flags, resource_types=("model",),
                    with_tests=False, stale_seeds=True, reporter=reporter, interrupt=interrupt,
                    on_warnings=on_warnings, selector=selector, state=state)


def seed(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
         select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
         threads: Optional[int] = None, full_refresh: bool = False, reporter: Optional[Reporter] = None,
         interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None,
         selector: Optional[str] = None, state: Optional[PathLike] = None) -> RunReport:
    """`batchflow seed`: load the selected seed CSVs into tables, whether they changed or not (each load
    replaces the table, so `full_refresh` changes nothing; it is accepted for dbt habits)."""
    from batchflow.lifecycle import RunFlags

    return _execute("seed", project_dir, profiles_dir=profiles_dir, target=target, select_=select, exclude=exclude,
                    vars=vars, threads=threads, full_refresh=full_refresh, flags=RunFlags(),
                    resource_types=("seed",), with_tests=False, stale_seeds=False, reporter=reporter,
                    interrupt=interrupt, on_warnings=on_warnings, selector=selector, state=state)


def snapshot(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
             select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
             threads: Optional[int] = None, reporter: Optional[Reporter] = None,
             interrupt: Optional["Interrupt"] = None, on_warnings: Optional[WarningsFn] = None,
             selector: Optional[str] = None, state: Optional[PathLike] = None,
             snapshot_time: Optional[datetime] = None) -> RunReport:
    """`batchflow snapshot`: build the selected snapshots as dbt does (batchflow.snapshots): the first run
    creates each table, later runs close the versions that changed and insert the new ones. `snapshot_time`:
    the check strategy's snapshot time (default: the warehouse clock)."""
    from batchflow.lifecycle import RunFlags

    return _execute("snapshot", project_dir, profiles_dir=profiles_dir, target=target, select_=select,
                    exclude=exclude, vars=vars, threads=threads, full_refresh=False, flags=RunFlags(),
                    resource_types=("snapshot",), with_tests=False, stale_seeds=True, reporter=reporter,
                    interrupt=interrupt, on_warnings=on_warnings, selector=selector, state=state,
                    snapshot_time=snapshot_time)


def test(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None, target: Optional[str] = None,
         select: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None, vars: Any = None,
         reporter: Optional[Reporter] = None, on_warnings: Optional[WarningsFn] = None,
         selector: Optional[str] = None, state: Optional[PathLike] = None,
         interrupt: Optional["Interrupt"] = None) -> RunReport:
    """`batchflow test`: the selected data tests (generic: dbt's, the project's and packages'; singular
    `.sql` files) and unit tests, against what is built. Each result is pass, warn, fail, error or
    skipped; the exit code is 1 when one failed or errored."""
    from batchflow.adapters import open_warehouse
    from batchflow.artifacts import write_run_results

    from batchflow.interrupt import Interrupt
    from batchflow.runner import RunOptions, Runner

    reporter = reporter or Reporter()
    started = time.perf_counter()
    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    chosen = select_ids(session, select, exclude, selector, state)
    warehouse = open_warehouse(session.target, session.project)
    try:
        checks, run_check, _ = _checks(session, warehouse, chosen, set())
        who, mock = answering(session.target)
        start = RunStart("test", session.project.name, session.target.name, session.target.type, len(checks),
                         who, mock, 0)
        reporter.run_started(start)
        options = RunOptions(threads=session.target.threads, interrupt=interrupt or Interrupt())
        runner = Runner(session.manifest, session.compiler, warehouse, lambda: None, reporter,  # type: ignore[arg-type,return-value]
                        options)
        results = _with_project_hooks(session, warehouse, False, lambda: runner.run(set(), checks, run_check),
                                      reporter)
    finally:
        warehouse.close()
    elapsed = time.perf_counter() - started
    write_run_results(session.manifest, "test", results, elapsed, "test", selection(session))
    return RunReport("test", start, results, elapsed, "test", warnings=list(session.manifest.warnings))


# ---- compile, ls, debug ------------------------------------------------------------------------------


def compile_project(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
                    target: Optional[str] = None, select: Optional[Iterable[str]] = None,
                    exclude: Optional[Iterable[str]] = None, vars: Any = None, validate: bool = False,
                    on_warnings: Optional[WarningsFn] = None,
                    selector: Optional[str] = None, state: Optional[PathLike] = None) -> CompileReport:
    """`batchflow compile`: render and parse every model, write target/compiled/ and
    target/manifest.json; with `validate`, dry-run each selected model in the warehouse."""
    from batchflow.artifacts import write_compiled, write_manifest

    session = load(project_dir, profiles_dir, target, vars, warn_uncompiled=False)
    write_compiled(session.manifest)
    session.manifest.warnings += _write_analyses(session)
    chosen = select_nodes(session, select, exclude, ("model",), selector, state)
    write_manifest(session.manifest, "compile", selection(session, with_state=True))
    session.manifest.warnings += uncompiled_warnings(session.manifest, skip=chosen)  # chosen: in report.errors
    if on_warnings is not None:
        on_warnings(session.manifest.warnings)
    order = [n for n in session.manifest.graph.topological_order() if n in chosen]
    errors = [(n, session.manifest.errors[n]) for n in order if n in session.manifest.errors]
    report = CompileReport([session.manifest.nodes[n] for n in order if n not in session.manifest.errors],
                           session.project.target_path / "compiled", warnings=list(session.manifest.warnings),
                           errors=errors)
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
            if node.materialized == "ephemeral" or node.error is not None:  # errors: CompileReport.errors
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
       resource_type: Optional[str] = None, on_warnings: Optional[WarningsFn] = None,
       selector: Optional[str] = None, state: Optional[PathLike] = None) -> list["NodeInfo"]:
    """`batchflow ls`: the selected models, seeds, sources, data tests and unit tests as dbt lists them
    (ordered by unique id; a `batchflow.graph.NodeInfo` each; imports no warehouse code)."""
    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    chosen = select_ids(session, select, exclude, selector, state)
    nodes = selection(session).ordered(chosen)
    return [n for n in nodes if resource_type in (None, "all", n.resource_type)]


def ls_record(info: "NodeInfo") -> dict[str, Any]:
    """One `ls --output json` line: dbt's keys (name, resource_type, package_name, original_file_path,
    unique_id, alias, config, tags, depends_on; source_name for sources) plus batchflow's `path` and
    `materialized`."""
    import json

    record: dict[str, Any] = {
        "name": info.name, "resource_type": info.resource_type, "package_name": info.package_name,
        "original_file_path": info.path, "unique_id": info.unique_id,
        "alias": info.relation.rsplit(".", 1)[-1].strip("`") if info.relation else info.name,
        "config": json.loads(json.dumps(info.config, default=str)), "tags": list(info.tags),
        "depends_on": {"macros": [], "nodes": list(info.depends_on)}, "path": info.path,
        "materialized": info.materialized,
    }
    if info.resource_type == "source":
        record["source_name"] = info.source_name
        del record["depends_on"]
    elif info.resource_type == "seed":
        record["depends_on"] = {"macros": []}
    return record


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
         on_warnings: Optional[WarningsFn] = None, sample: Optional[int] = None,
         sample_fraction: Optional[float] = None) -> ShowResult:
    """`batchflow show`: up to `limit` rows of a model. A built model is read from its relation; a batch
    model shows each row's prompt, answer text, outcome and tokens; a model not built yet runs its
    compiled SELECT with the models it reads that are not built either inlined. `sample` /
    `sample_fraction` (batch models): the rows `run --sample` sends, all of them."""
    from batchflow.show import show_rows

    check_sample(sample, sample_fraction)

    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    error = session.manifest.errors.get(model)
    if error is not None:
        raise error
    return show_rows(session, model, limit, sample=sample, sample_fraction=sample_fraction)


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


# ---- docs ----------------------------------------------------------------------------------------------


@dataclass
class DocsResult:
    """What `docs generate` wrote."""

    path: Path  # target/index.html
    nodes: int
    tests: int
    batch_models: int
    #: model columns whose upstream columns sqlglot traced, and those it could not
    columns_traced: int
    columns_untraced: int
    #: False with `empty_catalog`: no column types, built state or batch history
    warehouse: bool
    warnings: list[Any] = field(default_factory=list)


def docs_generate(project_dir: PathLike = ".", *, profiles_dir: Optional[PathLike] = None,
                  target: Optional[str] = None, vars: Any = None, empty_catalog: bool = False,
                  on_warnings: Optional[WarningsFn] = None) -> DocsResult:
    """`batchflow docs generate`: write target/index.html, a static site (it opens from disk, no server,
    no network) with every model, source, seed and test, column lineage from sqlglot and each batch
    model's history from the ledger and its responses store. The warehouse is only read; with
    `empty_catalog` it is not opened at all."""
    from batchflow.adapters import open_warehouse
    from batchflow.docs.catalog import build_catalog
    from batchflow.docs.site import write_site

    session = load(project_dir, profiles_dir, target, vars, on_warnings)
    warehouse = None if empty_catalog else open_warehouse(session.target, session.project)
    try:
        catalog = build_catalog(session, warehouse)
    finally:
        if warehouse is not None:
            warehouse.close()
    path = write_site(catalog, session.project.target_path)
    nodes = catalog["nodes"].values()
    columns = [c for n in nodes if n["resource_type"] == "model" for c in n["columns"] if not c.get("added_by")]
    return DocsResult(path, len(catalog["nodes"]), len(catalog["tests"]),
                      sum(n["materialized"] == "batch" for n in nodes),
                      sum(c["upstream"] is not None for c in columns), sum(c["upstream"] is None for c in columns),
                      warehouse is not None, list(session.manifest.warnings))


def docs_server(project_dir: PathLike = ".", *, port: int = 8080, host: str = "127.0.0.1") -> Any:
    """`batchflow docs serve`: an `http.server` over the project's target/ (call `serve_forever()`;
    port 0 picks a free one, see `server_address`). Raises ConfigError when no site was generated."""
    from batchflow.docs.serve import make_server
    from batchflow.project import load_project

    return make_server(load_project(Path(project_dir).resolve()).target_path, port, host)
