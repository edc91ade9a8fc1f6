"""Help and ordering: every command and option has help text, flags print as flags, commands are
listed in dbt's order, and the typer app is generated from the same declarations as the fast `ls`."""

from __future__ import annotations

import re

import typer.main
from typer.testing import CliRunner

from batchflow import cli

DBT_ORDER = ["init", "debug", "deps", "seed", "snapshot", "compile", "ls", "show", "run", "build", "test", "retry", "docs", "jobs"]


def _group():  # noqa: ANN202
    return typer.main.get_command(cli.app)


def test_commands_are_listed_in_dbts_order() -> None:
    assert list(_group().commands) == DBT_ORDER
    out = CliRunner().invoke(cli.app, ["--help"]).output
    positions = [out.index(f" {name} ") for name in DBT_ORDER]
    assert positions == sorted(positions)


def _all_commands():  # noqa: ANN202
    group = _group()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            for sub, subcommand in command.commands.items():
                yield f"{name} {sub}", subcommand
        else:
            yield name, command


def test_every_command_and_option_has_help() -> None:
    for name, command in _all_commands():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


def test_boolean_flags_print_as_flags() -> None:
    for name, _ in _all_commands():
        out = CliRunner().invoke(cli.app, [*name.split(), "--help"], terminal_width=200).output
        assert "<bool>" not in out, name
    run = CliRunner().invoke(cli.app, ["run", "--help"], terminal_width=200).output
    assert re.search(r"--dry-run\s+Build and validate", run)
    assert "[x>=1]" in run  # --threads keeps its minimum


def test_build_says_it_runs_tests() -> None:
    assert "tests" in cli.command("build").help and "no tests" in cli.command("run").help.lower()


def test_the_typer_commands_take_the_declared_options() -> None:
    for spec in cli.COMMANDS:
        group = _group()
        command = group.commands[spec.group].commands[spec.name] if spec.group else group.commands[spec.name]
        declared = {o.dest: o for o in spec.options}
        params = {p.name: p for p in command.params}
        assert set(params) == set(declared), spec.name
        for dest, opt in declared.items():
            assert tuple(params[dest].opts) == (opt.flags or (dest,)), (spec.name, dest)
            assert params[dest].multiple == opt.multiple
