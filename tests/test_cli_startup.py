"""Start-up of the `batchflow` command: `ls` runs without typer, rich or anything that talks to a warehouse,
and gives exactly what the typer command gives.

`batchflow ls` on a 2,000-model project should take well under half a second, most of which would otherwise
go to imports: typer (with pydantic) and rich alone cost ~0.2 s, the runner and adapters more. These tests
check what is imported, not how long it takes (timings: benchmarks/bench_compile.py)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from batchflow import cli

# Third-party packages `ls` must not import once the partial-parse caches are warm (the first, cold
# run may render with jinja2 and parse with sqlglot), and batchflow modules only running models needs.
HEAVY = ("duckdb", "pyarrow", "pandas", "numpy", "google", "httpx", "typer", "pydantic", "rich", "click")
COMPILING = ("jinja2", "sqlglot", "sqlglotc", "batchflow.sql")
RUNNING = ("batchflow.runner", "batchflow.lifecycle", "batchflow.adapters", "batchflow.artifacts",
           "batchflow.testing", "batchflow.ledger", "batchflow.warehouse", "batchflow.batch")

# Runs the console-script entry point the way the `batchflow` executable does, then reports what it imported.
SCRIPT = """
import json, sys
report = sys.argv.pop()
from batchflow.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
with open(report, "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""


def _ls_subprocess(project: Path, tmp_path: Path, *args: str) -> tuple[str, int, set[str]]:
    report = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "ls", "--project-dir", str(project), *args, str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.stderr == "", proc.stderr
    data = json.loads(report.read_text())
    return proc.stdout, data["code"], set(data["modules"])


def _imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_ls_imports_no_heavy_module(example_project: Path, tmp_path: Path) -> None:
    expected = CliRunner().invoke(cli.app, ["ls", "--project-dir", str(example_project)])
    assert expected.exit_code == 0 and "review_requests" in expected.stdout
    # That run (through typer) filled target/'s caches; clear them: the first run below is cold.
    for cache in (example_project / "target").glob("partial_parse*.pickle"):
        cache.unlink()

    out, code, modules = _ls_subprocess(example_project, tmp_path)
    assert (out, code) == (expected.stdout, 0)
    assert _imported(modules, HEAVY + RUNNING) == []
    assert _imported(modules, COMPILING)  # it did compile: the check above would see them

    out, code, modules = _ls_subprocess(example_project, tmp_path)
    assert (out, code) == (expected.stdout, 0)
    assert _imported(modules, HEAVY + RUNNING + COMPILING) == []

    out, code, modules = _ls_subprocess(example_project, tmp_path, "-s", "tag:llm", "--output", "json")
    assert code == 0 and [json.loads(line)["name"] for line in out.splitlines()] == ["review_requests"]
    assert _imported(modules, HEAVY + RUNNING + COMPILING) == []


def _ls_command() -> typer.main.click.Command:  # type: ignore[name-defined]
    return typer.main.get_command(cli.app).commands["ls"]  # type: ignore[attr-defined]


def test_ls_option_table_matches_the_typer_command() -> None:
    params = [p for p in _ls_command().params if p.name != "help"]
    assert {opt: p.name for p in params for opt in p.opts} == cli._LS_OPTIONS
    assert {p.name for p in params if p.multiple} == cli._LS_MULTIPLE
    assert set(inspect.signature(cli._list_nodes).parameters) == {p.name for p in params}


FAST = [
    ["ls"],
    ["ls", "--project-dir", "some/dir", "--profiles-dir", "/etc/profiles", "-t", "prod"],
    ["ls", "--project-dir=some/dir", "--target=prod", "--vars", "{a: 1, b: [x]}"],
    ["ls", "-s", "tag:llm", "--select", "a+", "--exclude", "b", "--exclude=c d", "-s", "path:models/x.sql"],
    ["ls", "--resource-type", "seed", "--output", "json"],
    ["ls", "--output=path", "--select="],
    ["ls", "--vars", "a=b"],
]
TO_TYPER = [
    [],
    ["run"],
    ["--version"],
    ["ls", "--help"],
    ["ls", "-stag:llm"],
    ["ls", "--bogus", "x"],
    ["ls", "-s"],
    ["ls", "extra"],
    ["ls", "--", "-s"],
    ["ls", "--output", "json", "--output", "name"],
    ["ls", "--select", "-x"],
    ["ls", "--project-dir="],
    ["ls", "--project-dir"],
]


@pytest.mark.parametrize("argv", FAST, ids=" ".join)
def test_fast_ls_arguments_are_what_typer_passes(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    signature = inspect.signature(cli._list_nodes)
    calls: list[dict] = []

    def record(*args: object, **kwargs: object) -> None:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))

    monkeypatch.setattr(cli, "_list_nodes", record)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0 and len(calls) == 1, result.output
    kwargs = cli._ls_arguments(argv)
    assert kwargs is not None
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    assert dict(bound.arguments) == calls[0]


@pytest.mark.parametrize("argv", TO_TYPER, ids=lambda a: " ".join(a) or "(none)")
def test_anything_else_goes_through_typer(argv: list[str]) -> None:
    assert cli._ls_arguments(argv) is None


@pytest.mark.parametrize(
    "args",
    [[], ["-s", "tag:llm+", "--output", "path"], ["--output", "json"], ["--resource-type", "source"],
     ["-s", "no_such_model"], ["--vars", "[1]"], ["-t", "nope"]],
    ids=lambda a: " ".join(a) or "(none)",
)
def test_fast_ls_prints_what_the_typer_command_prints(
    example_project: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ls", *args, "--project-dir", str(example_project)]
    expected = CliRunner().invoke(cli.app, argv)
    kwargs = cli._ls_arguments(argv)
    assert kwargs is not None
    capsys.readouterr()
    code = cli._run_ls(kwargs)
    out, err = capsys.readouterr()
    assert (out, code) == (expected.stdout, expected.exit_code)
    if code:
        assert code == 2 and err.startswith("error ") and err == expected.stderr


def test_importing_the_cli_imports_next_to_nothing() -> None:
    code = "import json, sys; import batchflow.cli; print(json.dumps(sorted(sys.modules)))"
    modules = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True, timeout=60).stdout))
    assert _imported(modules, HEAVY + RUNNING + COMPILING + ("yaml", "batchflow.project", "batchflow.compiler")) == []
