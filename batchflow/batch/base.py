"""The protocol every batch backend implements, and the job vocabulary shared with the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from batchflow.errors import ExecutionError
from batchflow.batch.states import JobState  # noqa: F401  (re-exported: backends use it)
from batchflow.relation import Relation


class JobNotFoundError(ExecutionError):
    """The backend does not know the job (deleted, another project, or an in-process job of a
    process that ended). Only this error lets a rerun give a recorded job up as lost."""


@dataclass(frozen=True)
class JobSpec:
    """One batch job to create: `input` holds `request_hash` and `request` columns;
    `output` is a fresh relation that must not exist yet."""

    model: str
    input: Relation
    output: Relation
    display_name: str
    labels: dict[str, str] = field(default_factory=dict)
    #: the model `input.request_hash` was computed with (``request_hash(request, hash_model)``), when
    #: known: a local provider whose answers derive from that digest reuses it for this model's rows
    hash_model: str | None = None
    #: an embedding job's parameters (`outputDimensionality`, `autoTruncate`), sent once per job as
    #: Vertex's `modelParameters`; None for a Gemini job. Its `input` then holds `request_hash` and the
    #: instance fields (`content`, optionally `task_type`, `title`) instead of `request`.
    model_parameters: dict | None = None


@dataclass
class JobStatus:
    """What a backend knows about a job right now."""

    name: str
    state: JobState
    model: str = ""
    output: Relation | None = None
    successful: int = 0
    failed: int = 0
    incomplete: int | None = None
    error: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    create_time: str | None = None
    update_time: str | None = None


class BatchBackend(Protocol):
    """Submit, poll, cancel and list batch jobs. Backends never retry `submit` on their own."""

    name: str
    #: Capabilities, declared by each backend class (never probed). True when a job keeps running
    #: after the process that submitted it ends (Vertex: jobs run remotely); False when it dies with
    #: the process (local), so a later process gets JobNotFoundError for it, and its output table
    #: holds what it committed before it died.
    jobs_outlive_process: bool
    #: True when a job may read its input from a view (it reads the rows in this warehouse while it
    #: runs: local); False when the input must be a table (Vertex copies from a BigQuery table). The
    #: lifecycle then defines each shard's input as a view over the todo table instead of copying it.
    reads_views: bool
    #: seconds between polls of a running job, by default
    poll_interval: float

    def submit(self, spec: JobSpec) -> JobStatus:
        """Create the job and return its first status (with its full name)."""

    def get(self, name: str) -> JobStatus:
        """Current status of a job."""

    def cancel(self, name: str) -> None:
        """Ask the job to stop; finished rows are kept."""

    def list(self, labels: dict[str, str] | None = None) -> list[JobStatus]:
        """Jobs carrying all of `labels` (all jobs when None)."""

    def describe(self) -> str:
        """One line on what the backend talks to (`batchflow debug`)."""

    def check(self) -> str:
        """One real call to what answers the jobs (Vertex: list jobs; local: the provider's `check`);
        says what answered, raises a BatchflowError when nothing does (`batchflow debug`)."""
