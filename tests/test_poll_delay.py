"""How often the batch lifecycle polls jobs that have not changed (`next_poll_delay`)."""

from __future__ import annotations

import pytest

from batchflow.lifecycle import MAX_POLL_DELAY, POLL_LAG, PROGRESS_POLL_DELAY, next_poll_delay


def delays(interval: float, job_seconds: float) -> list[float]:
    """The sleeps between polls of one job that runs `job_seconds` without changing state."""
    slept, delay, out = 0.0, interval, []
    while slept < job_seconds:
        delay = next_poll_delay(delay, interval, slept)
        out.append(delay)
        slept += delay
    return out


@pytest.mark.parametrize("interval, job_seconds", [(0.2, 10.0), (0.05, 3.0), (30.0, 3600.0), (5.0, 24 * 3600.0)])
def test_a_finished_job_is_noticed_within_a_tenth_of_its_run_time(interval: float, job_seconds: float) -> None:
    sleeps = delays(interval, job_seconds)
    noticed = sum(sleeps)
    # The last sleep is what can overshoot the job's end.
    assert noticed - job_seconds <= max(interval, POLL_LAG * job_seconds) + 1e-9
    assert all(interval <= d <= max(interval, MAX_POLL_DELAY) for d in sleeps)


def test_backs_off_from_the_interval_and_resets_on_a_change() -> None:
    sleeps = delays(30.0, 3600.0)
    assert sleeps[0] == 30.0 and sleeps[-1] == MAX_POLL_DELAY
    assert sleeps == sorted(sleeps)  # never faster again while nothing changes
    assert all(b <= a * 1.5 + 1e-9 for a, b in zip(sleeps, sleeps[1:]))
    # A change restarts the unchanged time: the next poll is one interval away again.
    assert next_poll_delay(MAX_POLL_DELAY, 30.0, 0.0) == 30.0


def test_short_intervals_do_not_grow_to_a_minute_on_short_jobs() -> None:
    # A plain x1.5 backoff from 0.2 s sleeps 5.1 s around the tenth second; capped by the lag share it is ~1 s.
    assert max(delays(0.2, 10.0)) <= POLL_LAG * 10.0 + 1e-9


def test_moving_counts_refresh_within_the_progress_delay_but_back_off_from_the_interval() -> None:
    """Rows being answered keep the live counts fresh (a poll at least every PROGRESS_POLL_DELAY) without
    polling an in-process job at its 50 ms interval all along; a slow backend's interval still holds."""
    slept, delay, sleeps = 0.0, 0.05, []
    while slept < 20.0:
        delay = next_poll_delay(delay, 0.05, slept, moving=True)
        sleeps.append(delay)
        slept += delay
    assert all(0.05 <= d <= PROGRESS_POLL_DELAY for d in sleeps)
    assert sleeps == sorted(sleeps) and sleeps[-1] == PROGRESS_POLL_DELAY
    assert len(sleeps) < 20.0 / 0.05 / 4  # 65 polls, not 400 at the interval
    assert next_poll_delay(60.0, 30.0, 600.0, moving=True) == 30.0  # never sooner than the interval
