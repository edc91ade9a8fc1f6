"""Command-line values are checked by the CLI library (exit 2, the allowed values named) and several
selectors after one flag work as in dbt (`-s a b`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchflow.cli import expand_multi_values
from tests.conftest import CLI


def test_several_values_after_one_selector_flag_are_expanded() -> None:
    assert expand_multi_values(["run", "-s", "a", "b", "--exclude", "c", "d", "--threads", "2"]) == [
        "run", "-s", "a", "-s", "b", "--exclude", "c", "--exclude", "d", "--threads", "2"]
    assert expand_multi_values(["ls", "--select", "tag:x", "--output", "json"]) == [
        "ls", "--select", "tag:x", "--output", "json"]
    assert expand_multi_values(["jobs", "show", "KEY", "--project-dir", "p"]) == ["jobs", "show", "KEY", "--project-dir", "p"]


@pytest.mark.e2e
def test_two_selectors_after_one_flag_select_both(example_project: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "batchflow.cli", "ls", "--project-dir", str(example_project),
                           "-s", "stg_reviews", "review_requests"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stg_reviews", "review_requests"]


@pytest.mark.parametrize("args, option, allowed", [
    (["run", "--log-format", "xml"], "--log-format", "'text', 'json'"),
    (["ls", "--output", "bogus"], "--output", "'name', 'path', 'json'"),
    (["ls", "--resource-type", "bogus"], "--resource-type", "'model', 'seed', 'source'"),
    (["jobs", "list", "--output", "csv"], "--output", "'table', 'json'"),
])
def test_a_value_outside_its_choices_is_refused_naming_the_choices(cli: CLI, args: list[str], option: str,
                                                                    allowed: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # rich's error box wraps lines
    assert option in text and allowed in text


@pytest.mark.parametrize("threads", ["0", "-3"])
def test_threads_must_be_positive(cli: CLI, threads: str) -> None:
    result = cli("run", "--threads", threads)
    assert result.exit_code == 2 and "--threads" in result.output
    assert not (cli.project / "target" / "run_results.json").exists()
