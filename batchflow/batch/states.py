"""The job state machine: every state a batch job (and its ledger row) can be in, and what each means.

This is the only place that lists states. The ledger, the lifecycle and the `jobs` commands ask it:
is a row still open (its rows are in flight), has the backend finished with it, may its output table
hold rows to land, can it be cancelled, and what does a rerun do with it.

A ledger row moves  SUBMITTING → <backend states> → (terminal backend state) → LANDED | CLOSED.
`SUBMITTING` is written before `create` is called; a terminal backend state means "ended, output not
landed yet"; `LANDED`/`CLOSED` mean a run has landed whatever the job left (LANDED: rows were merged;
CLOSED: there was nothing to merge). A job the backend no longer knows (deleted, or a local job of a
process that died) is treated as ended with whatever output table it left (`LOST`, contract §7.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class JobState(str, Enum):
    """Vertex batch job states (without the `JOB_STATE_` prefix), contract §4.2."""

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
    def parse(cls, value: object) -> "JobState":
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
        """True when the backend will not change the job's state again."""
        return rule(self.value).terminal


#: ledger-only states
SUBMITTING = "SUBMITTING"  # intent recorded; create() not known to have succeeded
LANDED = "LANDED"  # a run merged the job's output; closed
CLOSED = "CLOSED"  # the job ended and left nothing to merge; closed
LOST = "LOST"  # the backend does not know the job: treated as ended, output (if any) is landed


class Rerun(str, Enum):
    """What a run does with a ledger row it finds."""

    ADOPT = "adopt"  # may still be running: find it (by name, or by label while SUBMITTING) and wait for it
    LAND = "land"  # ended: land whatever output it left, record its missing rows, close the row
    ATTENTION = "attention"  # PAUSED: its rows stay in flight; a person must resume or cancel it
    NOTHING = "nothing"  # closed


@dataclass(frozen=True)
class StateRule:
    """The meaning of one state."""

    open: bool  # the row's requests are in flight: a run must not resend them
    terminal: bool  # the backend will not change it again
    landable: bool  # its output table may hold rows to land
    cancellable: bool  # `cancel` makes sense
    rerun: Rerun
    doc: str


def _running(doc: str, cancellable: bool = True) -> StateRule:
    return StateRule(open=True, terminal=False, landable=False, cancellable=cancellable, rerun=Rerun.ADOPT, doc=doc)


def _ended(doc: str) -> StateRule:
    # Land whatever table an ended job left, whatever its state: a FAILED, CANCELLED or EXPIRED job
    # keeps (and bills) the rows it finished (contract §1, §4.1).
    return StateRule(open=True, terminal=True, landable=True, cancellable=False, rerun=Rerun.LAND, doc=doc)


def _closed(doc: str) -> StateRule:
    return StateRule(open=False, terminal=True, landable=False, cancellable=False, rerun=Rerun.NOTHING, doc=doc)


RULES: dict[str, StateRule] = {
    SUBMITTING: StateRule(open=True, terminal=False, landable=False, cancellable=False, rerun=Rerun.ADOPT,
                          doc="recorded before create(); a rerun looks the job up by its label"),
    JobState.UNSPECIFIED.value: _running("state not reported; polled again"),
    JobState.QUEUED.value: _running("waiting for capacity (up to 72 h, then EXPIRED)"),
    JobState.PENDING.value: _running("accepted, not started"),
    JobState.RUNNING.value: _running("answering"),
    JobState.UPDATING.value: _running("being updated"),
    JobState.CANCELLING.value: _running("cancel requested; ends CANCELLED", cancellable=False),
    JobState.PAUSED.value: StateRule(open=True, terminal=False, landable=False, cancellable=True, rerun=Rerun.ATTENTION,
                                     doc="needs attention: resume it in the console or `batchflow jobs cancel` it"),
    JobState.SUCCEEDED.value: _ended("ended; every row answered (some may be row errors)"),
    JobState.PARTIALLY_SUCCEEDED.value: _ended("ended; some rows may be missing from the output"),
    JobState.FAILED.value: _ended("ended with a job error; may have left partial output"),
    JobState.CANCELLED.value: _ended("cancelled; the rows it finished are kept"),
    JobState.EXPIRED.value: _ended("queued or ran too long; the rows it finished are kept"),
    LOST: _ended("the backend does not know the job; whatever output it left is landed"),
    LANDED: _closed("its output was merged into the model's answers"),
    CLOSED: _closed("ended with nothing to merge"),
}

OPEN_STATES = frozenset(s for s, r in RULES.items() if r.open)
CLOSED_STATES = frozenset(s for s, r in RULES.items() if not r.open)


def rule(state: str) -> StateRule:
    """The rule of a ledger or backend state; an unknown text (a newer backend's state) is polled again."""
    return RULES.get(state, RULES[JobState.UNSPECIFIED.value])


def is_open(state: str) -> bool:
    """True while a ledger row's requests are in flight."""
    return rule(state).open


def describe() -> list[tuple[str, StateRule]]:
    """Every state with its rule, in lifecycle order (docs, `jobs` help)."""
    return list(RULES.items())


def reference_markdown() -> str:
    """The README's table of job states (generated, so the docs never drift from the rules)."""
    lines = ["| state | open | landed by a rerun | cancellable | a rerun … | meaning |", "|---|---|---|---|---|---|"]
    does = {Rerun.ADOPT: "polls it and waits", Rerun.LAND: "lands its output, resends what it left out",
            Rerun.ATTENTION: "stops with a message", Rerun.NOTHING: "nothing"}
    for state, r in describe():
        lines.append(f"| `{state}` | {'yes' if r.open else 'no'} | {'yes' if r.landable else 'no'} | "
                     f"{'yes' if r.cancellable else 'no'} | {does[r.rerun]} | {r.doc} |")
    return "\n".join(lines) + "\n"
