"""The API layer (`batchflow.api`) called without the CLI, and seeds as nodes: `run` loads the seeds its
models read when they are missing or their file changed, and a missing relation names what creates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchflow import api
from batchflow.api import Reporter, RunReport
from batchflow.errors import ConfigError
from batchflow.seeds import missing_relation_hint
from tests.conftest import CLI

STAGED_REVIEWS = 59


class Recorder(Reporter):
    """Keeps what the API reports."""

    def __init__(self) -> None:
        self.starts: list = []
        self.finished: list[str] = []
        self.progress: list = []
        self.tests: list[str] = []

    def run_started(self, start) -> None:  # noqa: ANN001
        self.starts.append(start)

    def node_finished(self, node, result, index, total) -> None:  # noqa: ANN001
        self.finished.append(node.name)

    def batch_progress(self, node, progress) -> None:  # noqa: ANN001
        self.progress.append(progress)

    def test_finished(self, result) -> None:  # noqa: ANN001
        self.tests.append(result.name)


def _statuses(report: RunReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_missing_relation_hint_names_the_seed_model_or_nothing(example_project: Path) -> None:
    manifest = api.load(example_project).manifest
    duck = 'Catalog Error: Table with name products does not exist!\nDid you mean "pg_catalog.pg_proc"?'
    assert "seed seeds/products.csv" in missing_relation_hint(manifest, duck)
    assert "batchflow seed -s products" in missing_relation_hint(manifest, duck)
    bigquery = "404 Not found: Table my-proj:reviews.review_requests was not found in location us-central1"
    assert "model models/requests/review_requests.sql" in missing_relation_hint(manifest, bigquery)
    assert "no seed, source or model" in missing_relation_hint(manifest, "Table with name nope does not exist!")
    assert missing_relation_hint(manifest, "division by zero") == ""


def test_answering_says_when_the_mock_answers(example_project: Path) -> None:
    local = api.load(example_project).target
    assert api.answering(local) == ("the mock provider", True)
    ollama = api.load(example_project, target="local_ollama").target
    who, mock = api.answering(ollama)
    assert not mock and "openai provider at http://127.0.0.1:11434/v1" in who
    prod = api.load(example_project, target="prod").target
    assert api.answering(prod) == ("Vertex AI batch prediction (us-central1)", False)


def test_run_flags_refuse_combinations_that_make_no_sense() -> None:
    with pytest.raises(ConfigError, match="--full-refresh"):
        api.run_flags(resubmit_batches=True)
    with pytest.raises(ConfigError, match="--dry-run"):
        api.run_flags(dry_run=True, no_wait=True)


@pytest.mark.e2e
def test_run_on_a_fresh_project_loads_the_seeds_it_reads(example_project: Path) -> None:
    recorder = Recorder()
    report = api.run(example_project, reporter=recorder)
    assert report.exit_code == 0, [(r.name, r.message) for r in report.results if r.status != "success"]
    assert _statuses(report)["products"] == "success"  # `run` selects models; the missing seed came along
    assert recorder.starts[0].mock and recorder.starts[0].selected == len(report.results)
    assert recorder.tests == []  # run runs no tests

    again = api.run(example_project, select=["stg_reviews"])
    assert [r.name for r in again.results] == ["stg_reviews"]  # unchanged seed: not loaded again

    seed = example_project / "seeds" / "products.csv"
    seed.write_bytes(seed.read_bytes().replace(b"Cast iron skillet", b"Cast-iron skillet"))
    changed = api.run(example_project, select=["stg_reviews"])
    assert [r.name for r in changed.results] == ["products", "stg_reviews"]


@pytest.mark.e2e
def test_a_seed_runs_before_what_reads_it_through_unselected_models(example_project: Path) -> None:
    assert api.build(example_project).exit_code == 0
    seed = example_project / "seeds" / "products.csv"
    seed.write_bytes(seed.read_bytes().replace(b"Cast iron skillet", b"Cast iron pan"))
    recorder = Recorder()
    report = api.run(example_project, select=["review_labels"], threads=4, reporter=recorder)
    assert report.exit_code == 0
    assert recorder.finished == ["products", "review_labels"]


@pytest.mark.e2e
def test_build_runs_tests_and_returns_a_report(example_project: Path) -> None:
    recorder = Recorder()
    report = api.build(example_project, reporter=recorder)
    built = [r for r in report.results if r.resource_type != "test"]
    tests = [r for r in report.results if r.resource_type == "test"]
    assert report.exit_code == 0 and tests and report.summary == {"success": len(built), "pass": len(tests)}
    assert any(t.startswith("not_null") for t in recorder.tests)
    phases = [p.phase for p in recorder.progress]
    assert "waiting" in phases and "landing" in phases and phases[-1] == "building results"
    assert (example_project / "target" / "run_results.json").exists()

    compiled = api.compile_project(example_project, select=["tag:llm"])
    assert [n.name for n in compiled.nodes] == ["review_requests"] and compiled.ok
    assert [n.name for n in api.ls(example_project, resource_type="seed")] == ["products"]
    jobs = api.jobs_list(example_project, all_jobs=True)
    assert [j["state"] for j in jobs] == ["LANDED"]
    assert api.jobs_show(jobs[0]["job_key"], example_project)["job_name"] == jobs[0]["job_name"]
    with pytest.raises(ConfigError, match="LANDED"):
        api.jobs_cancel(jobs[0]["job_key"], example_project)
    checks = api.debug(example_project)
    assert any(c.startswith("batch backend local") for c in checks)
    tested = api.test(example_project)
    assert tested.exit_code == 0 and tested.results


@pytest.mark.e2e
def test_seed_command_loads_only_the_selected_seeds(cli: CLI) -> None:
    result = cli("seed", "-s", "products", "--full-refresh")
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in cli.run_results()["results"]] == ["products"]
    assert cli.query("select count(*) from reviews.products")[0][0] == 6
    assert cli.query("select name from reviews._batchflow_seeds") == [("products",)]


@pytest.mark.e2e
def test_a_missing_relation_error_carries_the_hint(cli: CLI) -> None:
    assert cli("run", "-s", "review_labels").exit_code == 1
    failed = next(r for r in cli.run_results()["results"] if r["name"] == "review_labels")
    assert "`batchflow run -s +review_requests`" in failed["message"]


def test_the_repository_root_project_takes_no_tests_from_the_pytest_folder() -> None:
    """README command 1 builds the example at the repository root, whose `tests/` is this pytest suite:
    its SQL fixtures must not become singular tests (the example sets `test-paths: [data_tests]`)."""
    from tests.conftest import REPO

    tests = api.ls(REPO, resource_type="test")
    assert tests and {t.path for t in tests} == {"models/schema.yml"}
