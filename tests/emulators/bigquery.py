"""A local BigQuery emulator (local-bigquery on DuckDB) for integration tests, on 127.0.0.1 only.

Setup follows shared/contract/bigquery-emulator.md: the server needs Python 3.13, so it runs from
its own venv (`<repo>/.emulators/bq-venv`, gitignored) built once from pinned wheels, with DuckDB's
icu/ducklake/spatial extensions installed from PyPI wheels into a private HOME, because DuckDB would
otherwise download them at run time from a host we cannot reach.

Use in a test module::

    from tests.emulators.bigquery import bigquery_emulator, bq_dataset  # noqa: F401

The fixtures fail (never skip) when the emulator cannot be built or started: CI must exercise them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = "test-project"
PACKAGES = (
    "local-bigquery==0.3.2",
    "duckdb==1.5.5",
    "duckdb-extension-icu==1.5.5",
    "duckdb-extension-ducklake==1.5.5",
    "duckdb-extension-spatial==1.5.5",
)
# Bump when PACKAGES or the install steps change: a venv with another marker is rebuilt.
MARKER_TEXT = "bq-venv v1 " + " ".join(PACKAGES) + "\n"
INSTALL_EXTENSIONS = """
import duckdb, importlib, pathlib
for n in ("icu", "ducklake", "spatial"):
    m = importlib.import_module(f"duckdb_extension_{n}")
    f = next(pathlib.Path(m.__file__).parent.glob("extensions/v*/*.duckdb_extension"))
    duckdb.execute(f"INSTALL {str(f)!r}")
"""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

#: Seconds the last `ensure_emulator_venv` spent building (0.0 when the venv was already there).
last_build_seconds = 0.0


class EmulatorSetupError(RuntimeError):
    """The emulator's venv could not be built or the server did not start."""


def python313() -> Path:
    """pyenv's Python 3.13.0 (local-bigquery needs >= 3.13; batchflow itself stays on 3.11)."""
    candidates: list[Path] = []
    if os.environ.get("BATCHFLOW_BQ_EMULATOR_PYTHON"):
        candidates.append(Path(os.environ["BATCHFLOW_BQ_EMULATOR_PYTHON"]))
    roots: list[Path] = []
    home_pyenv = Path.home() / ".pyenv/bin/pyenv"
    pyenv = shutil.which("pyenv") or (str(home_pyenv) if home_pyenv.exists() else None)
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30, check=True)
            roots.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    candidates += [root / "versions/3.13.0/bin/python3.13" for root in roots]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmulatorSetupError(
        "the BigQuery emulator needs Python 3.13 (local-bigquery requires it) and none was found; looked at "
        + ", ".join(str(p) for p in candidates)
        + ". Install it with `pyenv install 3.13.0` or set BATCHFLOW_BQ_EMULATOR_PYTHON."
    )


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise EmulatorSetupError(
            f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def ensure_emulator_venv(root: Path = REPO) -> Path:
    """Build `<root>/.emulators/bq-venv` once and return it; later calls only check the marker.

    A lock file serialises parallel sessions; the marker is written last, so a half-built venv
    (interrupted install) is removed and rebuilt on the next call.
    """
    global last_build_seconds
    base = root / ".emulators"
    venv = base / "bq-venv"
    marker = venv / ".batchflow-ready"
    home = base / "bq-home"
    if marker.is_file() and marker.read_text() == MARKER_TEXT:
        last_build_seconds = 0.0
        return venv
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "bq-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
        if marker.is_file() and marker.read_text() == MARKER_TEXT:  # another session built it meanwhile
            last_build_seconds = 0.0
            return venv
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        _run([str(python313()), "-m", "venv", str(venv)])
        _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", *PACKAGES])
        home.mkdir(parents=True)
        env = {**os.environ, "HOME": str(home)}
        _run([str(venv / "bin/python"), "-c", INSTALL_EXTENSIONS], env=env)
        marker.write_text(MARKER_TEXT)
        last_build_seconds = time.monotonic() - started
    return venv


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BigQueryEmulator:
    """A running local-bigquery server."""

    endpoint: str
    project: str
    port: int
    grpc_port: int
    pid: int
    data_dir: Path
    build_seconds: float = 0.0
    start_seconds: float = 0.0
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def client(self):
        """A google-cloud-bigquery client talking to this emulator only (anonymous credentials)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )


def _wait_until_up(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorSetupError(f"local-bigquery exited with code {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        # The port is open; make sure the REST API answers, not just uvicorn's socket.
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/bigquery/v2/projects/{PROJECT}/datasets", timeout=5).read()
            return
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.1)
    raise EmulatorSetupError(
        f"local-bigquery did not answer on 127.0.0.1:{port} within {timeout:.0f}s:\n{log.read_text()[-4000:]}"
    )


def start_emulator(root: Path = REPO) -> BigQueryEmulator:
    """Build the venv if needed and start `local-bigquery serve` on free loopback ports."""
    venv = ensure_emulator_venv(root)
    build_seconds = last_build_seconds
    home = root / ".emulators" / "bq-home"
    data_dir = Path(tempfile.mkdtemp(prefix="bq-emu-data-"))
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    log = data_dir.with_suffix(".log")
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin/local-bigquery"), "serve", "--host", "127.0.0.1", "--port", str(port),
                "--grpc-port", str(grpc_port), "--project", PROJECT, "--data-dir", str(data_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(home)},
            start_new_session=True,
        )
    try:
        _wait_until_up(proc, port, log, START_TIMEOUT)
    except BaseException:
        stop_emulator_process(proc)
        raise
    return BigQueryEmulator(
        endpoint=f"http://127.0.0.1:{port}",
        project=PROJECT,
        port=port,
        grpc_port=grpc_port,
        pid=proc.pid,
        data_dir=data_dir,
        build_seconds=build_seconds,
        start_seconds=time.monotonic() - started,
        _process=proc,
    )


def stop_emulator_process(proc: subprocess.Popen) -> None:
    """SIGTERM the server by its PID; SIGKILL if it has not exited after STOP_TIMEOUT seconds."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[BigQueryEmulator]:
    """A local-bigquery server for the whole test session (fails, never skips, when unavailable)."""
    try:
        emu = start_emulator(REPO)
    except (EmulatorSetupError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"BigQuery emulator unavailable: {exc}", pytrace=False)
    print(
        f"\n[bigquery emulator] venv build {emu.build_seconds:.1f}s, server start {emu.start_seconds:.1f}s, "
        f"{emu.endpoint} (grpc {emu.grpc_port})",
        file=sys.stderr,
    )
    try:
        yield emu
    finally:
        assert emu._process is not None
        stop_emulator_process(emu._process)
        shutil.rmtree(emu.data_dir, ignore_errors=True)
        emu.data_dir.with_suffix(".log").unlink(missing_ok=True)


@pytest.fixture
def bq_dataset(bigquery_emulator: BigQueryEmulator) -> Iterator[str]:
    """A fresh, empty dataset name per test (the dataset is created by the test or the adapter)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    client = bigquery_emulator.client()
    try:
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)
    except Exception:  # noqa: BLE001 - cleanup only; the data dir is removed at session end anyway
        pass
    finally:
        client.close()
