"""Issue 12, case by case: each configuration mistake a new user made stops `batchflow run` with exit 2,
naming file:line, the key and the closest known key, before anything is built or submitted.

The CLI-driven cases run the example project through tests/conftest.py's `cli` fixture (each stops before
the warehouse opens, so they are fast); the rest go through the loader and compiler directly."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchflow.compiler import Compiler
from batchflow.errors import ConfigError
from batchflow.project import load_profile, load_project
from batchflow.warehouse.duckdb import DuckDBWarehouse
from tests.conftest import CLI

REQUESTS = "models/requests/review_requests.sql"
LABELS = "models/marts/review_labels.sql"


def edit(root: Path, rel: str, old: str, new: str) -> None:
    """Replace `old` (which must occur) by `new` in a project file."""
    path = root / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, 1))


def line_of(root: Path, rel: str, text: str) -> int:
    """1-based line of the first occurrence of `text` in a project file."""
    for number, line in enumerate((root / rel).read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {rel}")


def nothing_built(cli: CLI) -> None:
    """No warehouse file, no run results: the command stopped before opening the warehouse."""
    target = cli.project / "target"
    assert not (target / "batchflow.duckdb").exists()
    assert not (target / "run_results.json").exists()


def fails_with(cli: CLI, expected: str, *args: str) -> None:
    """`batchflow <args>` exits 2, printing exactly `error <expected>` (one line, no traceback)."""
    result = cli(*(args or ("run",)))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error {expected}", result.output
    assert "Traceback" not in result.output


# ---- the project's own files -------------------------------------------------------------------------------

CASES = [
    # (id, file, old, new, line marker, expected message after "file:line: ")
    ("config-materialised", REQUESTS, "materialized='batch'", "materialised='batch'", "materialised",
     "unknown key 'materialised' in the model config; did you mean 'materialized'?"),
    ("config-max_row_per_job", REQUESTS, "key='review_id'", "key='review_id', max_row_per_job=10", "max_row_per_job",
     "unknown key 'max_row_per_job' in the model config; did you mean 'max_rows_per_job'?"),
    ("config-max_request", REQUESTS, "key='review_id'", "key='review_id', max_request=10", "max_request",
     "unknown key 'max_request' in the model config; did you mean 'max_requests'?"),
    ("config-max_estimated_costs", REQUESTS, "key='review_id'", "key='review_id', max_estimated_costs=1",
     "max_estimated_costs",
     "unknown key 'max_estimated_costs' in the model config; did you mean 'max_estimated_cost'?"),
    ("folder-materialised", "batchflow_project.yml", "+materialized: table", "+materialised: table", "+materialised",
     "unknown key '+materialised' in the model config; did you mean '+materialized'?"),
    ("project-batch-max_row_per_job", "batchflow_project.yml", "  max_rows_per_job: 100000", "  max_row_per_job: 10",
     "max_row_per_job", "unknown key 'max_row_per_job' in `batch:`; did you mean 'max_rows_per_job'?"),
    ("profile-thread", "profiles.yml", "threads: 4", "thread: 4", "thread:",
     "unknown key 'thread' in a duckdb target; did you mean 'threads'?"),
    ("profile-concurency", "profiles.yml", "concurrency: 4", "concurency: 4", "concurency",
     "unknown key 'concurency' in a local `batch:` block; did you mean 'concurrency'?"),
    ("yml-test", "models/schema.yml", "tests: [not_null, unique]", "test: [not_null, unique]", "test:",
     "unknown key 'test' in a `columns:` entry; did you mean 'tests'?"),
    ("yml-uniq", "models/schema.yml", "tests: [not_null, unique]", "tests: [not_null, uniq]", "uniq",
     "unknown data test `uniq`: neither dbt's (not_null, unique, accepted_values, relationships) nor a "
     "`{% test uniq(...) %}` block of the project; did you mean 'unique'?"),
    ("batch-max_rows_per_job-0", REQUESTS, "key='review_id'", "key='review_id', max_rows_per_job=0",
     "max_rows_per_job", "`max_rows_per_job:` must be ≥ 1, got 0"),
    ("batch-retry_on-RECITE", REQUESTS, "key='review_id'", "key='review_id', retry_on=['RECITE']", "retry_on",
     "`retry_on:` item 1: must be one of 'RECITATION', 'SAFETY', 'BLOCKLIST', 'PROHIBITED_CONTENT', 'SPII', "
     "'MAX_TOKENS', 'OTHER', got 'RECITE'; did you mean 'RECITATION'?"),
    ("batch-invalid_rows-ignore", REQUESTS, "key='review_id'", "key='review_id', invalid_rows='ignore'",
     "invalid_rows", "`invalid_rows:` must be one of 'fail', 'skip', got 'ignore'"),
    ("batch-key-nope", REQUESTS, "key='review_id'", "key='nope'", "key=",
     "`key:` 'nope' is not a column of the model's SELECT; columns: review_id, product_id, created_at, request"),
    ("profile-concurrency-0", "profiles.yml", "concurrency: 4", "concurrency: 0", "concurrency",
     "`concurrency:` must be ≥ 1, got 0"),
    ("profile-chunk_size-lots", "profiles.yml", "concurrency: 4", "chunk_size: lots", "chunk_size",
     "`chunk_size:` must be an integer, got 'lots'"),
    ("profile-provider-mokc", "profiles.yml", "provider: mock", "provider: mokc", "mokc",
     "`provider:` must be one of 'mock', 'openai', got 'mokc'; did you mean 'mock'?"),
    ("profile-mock-rule", "profiles.yml", "outcome: recitation", "outcome: recitaton", "recitaton",
     "`outcome:` must be one of 'recitation', 'safety', 'prompt_blocked', 'max_tokens', 'row_error', "
     "'transient_error', got 'recitaton'; did you mean 'recitation'?"),
    ("profile-mock-rule-key", "profiles.yml", "when_prompt_contains: lyrics", "when_prompt_contain: lyrics",
     "when_prompt_contain", "unknown key 'when_prompt_contain' in a mock failure rule; "
     "did you mean 'when_prompt_contains'?"),
]


@pytest.mark.parametrize(("rel", "old", "new", "marker", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_run_stops_before_anything_is_built(cli: CLI, rel: str, old: str, new: str, marker: str, message: str) -> None:
    edit(cli.project, rel, old, new)
    line = line_of(cli.project, rel, marker)
    path = rel if rel.startswith("models/") and rel.endswith(".sql") else str((cli.project / rel).resolve())
    fails_with(cli, f"{path}:{line}: {message}")
    nothing_built(cli)


def test_key_error_also_stops_a_selection_of_downstream_models(cli: CLI) -> None:
    """`run -s stg_reviews` would build only the upstream view: the bad batch model still stops it first."""
    edit(cli.project, REQUESTS, "key='review_id'", "key='nope'")
    result = cli("run", "-s", "stg_reviews")
    assert result.exit_code == 2 and "`key:` 'nope' is not a column" in result.output
    nothing_built(cli)


# ---- the same checks without the CLI (fast tier) -----------------------------------------------------------


def _compile(root: Path) -> None:
    project = load_project(root, partial_parse=False)
    Compiler(project, load_profile(project, root, None), partial_parse=False).compile()


@pytest.mark.parametrize(("rel", "old", "new", "marker", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_and_compile_raise_config_error_at_the_line(example_project: Path, rel: str, old: str, new: str,
                                                          marker: str, message: str) -> None:
    edit(example_project, rel, old, new)
    with pytest.raises(ConfigError) as exc:
        _compile(example_project)
    assert exc.value.message == message
    assert exc.value.line == line_of(example_project, rel, marker)
    assert exc.value.path is not None and exc.value.path.endswith(rel)
    assert exc.value.exit_code == 2


def test_unused_config_path_is_a_warning_on_project_and_manifest(example_project: Path) -> None:
    edit(example_project, "batchflow_project.yml", "    marts:\n", "    mart:\n")
    project = load_project(example_project, partial_parse=False)
    line = line_of(example_project, "batchflow_project.yml", "mart:")
    assert [str(w) for w in project.warnings] == [
        f"{(example_project / 'batchflow_project.yml').resolve()}:{line}: `models:` config path "
        "'reviews_demo.mart' matches no model; did you mean 'marts'?"
    ]
    manifest = Compiler(project, load_profile(project, example_project, None), partial_parse=False).compile()
    assert manifest.warnings == project.warnings


def test_dbt_keys_batchflow_ignores_are_warnings_naming_the_key(example_project: Path) -> None:
    edit(example_project, "batchflow_project.yml", "+materialized: table", "+materialized: table\n      +contract: {enforced: true}")
    edit(example_project, LABELS, "select\n", "{{ config(max_staleness='INTERVAL 1 HOUR') }}\nselect\n")
    project = load_project(example_project, partial_parse=False)
    manifest = Compiler(project, load_profile(project, example_project, None), partial_parse=False).compile()
    assert [(w.key, Path(w.path).name, w.line) for w in manifest.warnings] == [
        ("contract", "batchflow_project.yml", line_of(example_project, "batchflow_project.yml", "contract")),
        ("max_staleness", "review_labels.sql", 2),
    ]
    assert "a dbt setting batchflow does not act on" in manifest.warnings[1].message


def test_package_and_custom_generic_tests_are_known(example_project: Path) -> None:
    edit(example_project, "models/schema.yml", "tests: [not_null, unique]",
         "tests: [not_null, unique, dbt_utils.not_empty_string, is_positive]")
    with pytest.raises(ConfigError, match="unknown data test `is_positive`"):
        load_project(example_project, partial_parse=False)
    (example_project / "macros" / "tests.sql").write_text("{% test is_positive(model, column_name) %}1{% endtest %}\n")
    # both run (batchflow.testing renders them through their macros): nothing to warn about
    assert load_project(example_project, partial_parse=False).warnings == []


def test_ragged_seed_names_the_file_and_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "products.csv"
    csv.write_text("id,name\n1,a\n2,b,extra\n3,c\n")
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", schema="s")
    try:
        wh.ensure_schema("s")
        with pytest.raises(ConfigError) as exc:
            wh.load_csv(wh.relation("products", "s"), csv)
    finally:
        wh.close()
    assert str(exc.value) == f"{csv}:3: row has 3 field(s), the header has 2"


def test_a_ragged_seed_stops_the_run_before_anything_runs(cli) -> None:  # noqa: ANN001 - the conftest CLI
    seed = cli.project / "seeds" / "products.csv"
    lines = seed.read_text().splitlines()
    lines[2] += ",extra"
    seed.write_text("\n".join(lines) + "\n")
    result = cli("run")
    assert result.exit_code == 2
    assert f"seeds/products.csv:3: seed products: row has" in result.output
    assert not (cli.project / "target" / "batchflow.duckdb").exists() or not cli.query(
        "select * from information_schema.tables where table_name in ('stg_reviews', 'review_requests')")


def test_duckdb_lock_conflict_names_the_process_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(ConfigError) as exc:
            DuckDBWarehouse(path, schema="s")
    finally:
        holder.kill()
        holder.wait()
    assert exc.value.exit_code == 2
    assert re.fullmatch(rf"DuckDB database {re.escape(str(path))} is in use by another process "
                        rf"\(PID {holder.pid}, .+\); wait for it to finish, or stop it", str(exc.value)), exc.value


def test_target_folder_is_a_file(cli: CLI) -> None:
    (cli.project / "target").write_text("not a folder")
    result = cli("run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    profiles = (cli.project / "profiles.yml").resolve()
    line = line_of(cli.project, "profiles.yml", "path: target/batchflow.duckdb")
    assert result.output.strip() == (f"error {profiles}:{line}: `path:` 'target/batchflow.duckdb': "
                                     f"{cli.project.resolve() / 'target'} is a file, not a folder")


@pytest.mark.parametrize(
    ("path", "ok"),
    [("target/batchflow.duckdb", True), ("new_folder/w.duckdb", True), ("a/b/w.duckdb", False),
     ("/no_such_root_folder_bf/w.duckdb", False), ("../outside_missing/w.duckdb", False)],
)
def test_duckdb_path_creates_at_most_one_folder_inside_the_project(example_project: Path, path: str, ok: bool) -> None:
    edit(example_project, "profiles.yml", "path: target/batchflow.duckdb", f"path: {path}")
    project = load_project(example_project, partial_parse=False)
    if ok:
        target = load_profile(project, example_project, None)
        wh = DuckDBWarehouse(target.settings["path"], schema="reviews")
        wh.close()
        assert Path(target.settings["path"]).is_file()
        return
    with pytest.raises(ConfigError, match="does not exist \\(batchflow creates one missing folder, and only inside"):
        load_profile(project, example_project, None)
    assert not Path("/no_such_root_folder_bf").exists()


def test_unwritable_duckdb_folder_is_one_line(tmp_path: Path) -> None:
    # A folder that cannot be created even by root: its parent is a regular file.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ConfigError, match="cannot") as exc:
        DuckDBWarehouse(blocker / "sub" / "w.duckdb", schema="s")
    assert "\n" not in str(exc.value)


def test_run_does_not_wait_long_for_the_checks(example_project: Path) -> None:
    """Load + compile of the example with every check stays well under a second."""
    started = time.perf_counter()
    _compile(example_project)
    assert time.perf_counter() - started < 5
