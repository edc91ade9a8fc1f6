"""The protocol every batch backend implements, and the job vocabulary shared with the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from batchflow.errors import ExecutionError
from batchflow.relation import Relation


class JobNotFoundError(ExecutionError):
    """The backend does not know the job (deleted, another project, or an in-process job of a
    process that ended). Only this error lets a rerun give a recorded job up as lost."""


class JobState(str, Enum):
    """Vertex batch job states (without the `JOB_STATE_` prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"
    EXPIRED = "EXPIRED"
    UPDATING = "UPDATING"

    @classmethod
    def parse(cls, value: str | None) -> "JobState":
        """Accept `JOB_STATE_RUNNING`, `RUNNING` or an SDK enum; unknown values map to UNSPECIFIED."""
        if value is None:
            return cls.UNSPECIFIED
        text = getattr(value, "value", value)
        text = str(text).upper().removeprefix("JOB_STATE_")
        try:
            return cls(text)
        except ValueError:
            return cls.UNSPECIFIED

    @property
    def terminal(self) -> bool:
        """True when the job will not change state again (PARTIALLY_SUCCEEDED included)."""
        return self in TERMINAL_STATES

    @property
    def has_output(self) -> bool:
        """True when the job's output table may hold rows to land."""
        return self in (JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.CANCELLED, JobState.EXPIRED)


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)


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

    def submit(self, spec: JobSpec) -> JobStatus:
        """Create the job and return its first status (with its full name)."""

    def get(self, name: str) -> JobStatus:
        """Current status of a job."""

    def cancel(self, name: str) -> None:
        """Ask the job to stop; finished rows are kept."""

    def list(self, labels: dict[str, str] | None = None) -> list[JobStatus]:
        """Jobs carrying all of `labels` (all jobs when None)."""
