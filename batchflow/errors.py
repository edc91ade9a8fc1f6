"""Error types shared by every layer. Each carries the file and line a user should look at."""

from __future__ import annotations

from pathlib import Path


class BatchflowError(Exception):
    """Base error. `exit_code` is what the CLI exits with when this escapes a command."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.__str__())

    def location(self) -> str:
        """`path:line` (or just `path`), empty when the error has no file."""
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def __str__(self) -> str:
        loc = self.location()
        return f"{loc}: {self.message}" if loc else self.message


class ConfigError(BatchflowError):
    """Bad project, profile or yml configuration, or bad command-line usage (exit 2)."""

    exit_code = 2


class CompileError(BatchflowError):
    """A model failed to render or parse (exit 1: the project is readable, a model is wrong)."""


class ExecutionError(BatchflowError):
    """A model failed while running in the warehouse or the batch backend."""


class RequestValidationError(ExecutionError):
    """Rows of a batch model's request relation are invalid; nothing was submitted."""
