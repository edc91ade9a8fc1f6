"""`batchflow docs serve`: a local HTTP server over target/ (the site also opens from disk without it)."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

from batchflow.docs.site import INDEX
from batchflow.errors import ConfigError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without http.server's log line per request on stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


class DocsServer(http.server.ThreadingHTTPServer):
    """The HTTP server over a docs site; `site_dir` is the folder it serves."""

    daemon_threads = True  # a browser's open keep-alive connection does not hold Ctrl-C up
    site_dir: Path


def make_server(directory: Path, port: int = 8080, host: str = "127.0.0.1") -> DocsServer:
    """An HTTP server over `directory` (not started: call serve_forever). Port 0 picks a free one. Raises
    ConfigError when there is no site yet or the port is taken."""
    if not (directory / INDEX).is_file():
        raise ConfigError(f"no docs site in {directory}: run `batchflow docs generate` first")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = DocsServer((host, port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; pick another --port") from None
    server.site_dir = directory
    return server
