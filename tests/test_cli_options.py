"""Command-line values are checked by the CLI library (exit 2, the allowed values named) and several
selectors after one flag work as in dbt (`-s a b`)."""

from __future__ import annotations

import json
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
                           "-s", "stg_reviews", "review_requests", "--resource-type", "model", "--output", "name"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["review_requests", "stg_reviews"]  # dbt's order: by unique id


@pytest.mark.parametrize("args, option, allowed", [
    (["run", "--log-format", "xml"], "--log-format", "'text', 'json'"),
    (["ls", "--output", "bogus"], "--output", "'name', 'path', 'json'"),
    (["ls", "--resource-type", "bogus"], "--resource-type", "'model', 'seed', 'snapshot', 'source'"),
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


def _add_dbt_key(project: Path) -> int:
    """Add a dbt key batchflow does not act on; returns its line."""
    path = project / "batchflow_project.yml"
    lines = path.read_text().splitlines()
    lines.insert(2, "asset-paths: [tests]")
    path.write_text("\n".join(lines) + "\n")
    return 3


def test_configuration_warnings_are_printed_by_every_command(example_project: Path) -> None:
    line = _add_dbt_key(example_project)
    where = f"batchflow_project.yml:{line}: `asset-paths`"
    for args in (["ls"], ["compile"], ["jobs", "list"], ["debug"]):
        done = subprocess.run([sys.executable, "-m", "batchflow.cli", *args, "--project-dir", str(example_project)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stderr)
        assert where in done.stderr and done.stderr.count("`asset-paths`") == 1, (args, done.stderr)
        assert "asset-paths" not in done.stdout  # stdout stays the command's own output (ls | xargs ...)


def test_configuration_warnings_are_json_events_with_log_format_json(cli: CLI) -> None:
    _add_dbt_key(cli.project)
    result = cli("compile", "--log-format", "json")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    warning = next(e for e in events if e["event"] == "warning")
    assert warning["line"] == 3 and warning["path"].endswith("batchflow_project.yml") and "asset-paths" in warning["message"]


class _ModelsServer:
    """A loopback OpenAI-compatible endpoint that only lists its models (what `debug` calls)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.paths.append(self.path)
                data = json.dumps({"object": "list", "data": [{"id": "llama3.2", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_debug_asks_the_provider_itself(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _ModelsServer()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = cli("debug", "--target", "local_ollama")
        assert result.exit_code == 0, result.output
        assert server.paths == ["/v1/models"]
        assert f"{server.base_url} answers (models: llama3.2)" in result.output
    finally:
        server.close()
    # Nothing listens there any more: debug says so and fails, instead of printing OK.
    result = cli("debug", "--target", "local_ollama")
    assert result.exit_code == 1
    assert "did not answer" in result.output and "OK batch backend" not in result.output
