"""`batchflow init`: a starter project that builds offline, prompts only on a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchflow import api
from batchflow.errors import ConfigError
from batchflow.init_project import starter_files
from tests.conftest import CLI


def test_starter_has_a_source_sample_staging_batch_flatten_yml_test_and_profiles() -> None:
    files = starter_files("acme")
    assert "sample: ../data/tickets.csv" in files["models/sources.yml"]
    assert "materialized='batch'" in files["models/requests/ticket_requests.sql"]
    assert "ref('ticket_requests')" in files["models/marts/ticket_labels.sql"]
    assert "tests: [not_null, unique]" in files["models/schema.yml"]
    profiles = files["profiles.yml"]
    assert "    local:\n      type: duckdb" in profiles and "    # prod:\n    #   type: bigquery" in profiles


def test_init_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    api.init(tmp_path / "a", name="acme")
    (tmp_path / "a" / "models" / "schema.yml").write_text("version: 2\n")
    with pytest.raises(ConfigError, match="--force"):
        api.init(tmp_path / "a", name="acme")
    assert api.init(tmp_path / "a", name="acme", force=True).files
    with pytest.raises(ConfigError, match="identifier"):
        api.init(tmp_path / "b", name="not a name")
    assert api.init(tmp_path / "My-Project").name == "my_project"


@pytest.mark.e2e
def test_init_then_build_passes_offline(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("batchflow")
    folder = tmp_path / "new"
    # no terminal: no prompt, the name comes from the folder
    done = subprocess.run([str(exe), "init", str(folder)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "created project new" in done.stdout and "batchflow build" in done.stdout
    cli = CLI(folder)
    result = cli("build")
    assert result.exit_code == 0, result.output
    assert "PASS not_null" in result.output and "FAIL" not in result.output
    assert cli.query("select count(*) from new.ticket_labels")[0][0] == 5  # the blank ticket is dropped
    assert cli.query("select count(*) from new.ticket_labels where outcome = 'ok' and urgency in "
                     "('low', 'medium', 'high')")[0][0] == 5
    shown = cli("show", "-s", "ticket_requests", "--output", "json")
    assert shown.exit_code == 0 and "urgency" in shown.output
