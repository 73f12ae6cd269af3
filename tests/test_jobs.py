"""The one background-job runner: one job per kind, progress for every page, Stop keeps the result."""

from __future__ import annotations

import threading
import time

import pytest

from components.jobs import JobRunner, banner_text, describe, runner
from studio.core.sampling import Progress
from studio.errors import UserError


def counting_job(total: int, gate: threading.Event | None = None):
    """A job that 'trains' a counter: Progress per step, then the count reached (stopped or not)."""
    def job(stop):
        count = 0
        for step in range(1, total + 1):
            if stop():
                break
            if gate is not None:
                gate.wait(5)
                time.sleep(0.01)  # a step takes a while
            count += 1
            yield Progress(step, total, info={"loss": 1.0 / step})
        yield {"count": count}
    return job


def wait_for(r: JobRunner, status: str, seconds: float = 10.0):
    t0 = time.time()
    while r.snapshot().status != status:
        assert time.time() - t0 < seconds, f"still {r.snapshot().status!r}, waiting for {status!r}"
        time.sleep(0.01)
    return r.snapshot()


def test_a_job_runs_to_its_result_with_progress_and_a_loss_history():
    r = JobRunner("demo", "Demo")
    notes = []
    r.start("me", counting_job(5), total=5, on_result=lambda res: notes.append(res) or "registered")
    s = wait_for(r, "done")
    assert s.result == {"count": 5} and s.step == 5 and notes == [{"count": 5}] and s.note == "registered"
    assert [h["step"] for h in s.history] == [1, 2, 3, 4, 5] and s.history[-1]["loss"] == pytest.approx(0.2)
    assert "finished after 5 steps" in describe(s, "me") and "your run" in describe(s, "me")


def test_one_job_per_kind_only_the_owner_stops_it_and_stop_keeps_what_was_trained():
    r, gate = JobRunner("demo", "Demo"), threading.Event()
    r.start("owner-session", counting_job(1000, gate), total=1000)
    with pytest.raises(UserError, match="busy: Demo is already running"):
        r.start("other", counting_job(3), total=3)
    with pytest.raises(UserError, match="another session"):
        r.stop("other")
    assert "session owne's run" in describe(r.snapshot(), "other")  # the owner named to the others
    gate.set()
    while r.snapshot().step < 3:
        time.sleep(0.01)
    assert "stopping" in r.stop("owner-session")
    s = wait_for(r, "stopped")
    assert 3 <= s.result["count"] < 1000  # what was trained so far
    r.start("other", counting_job(2), total=2)  # the kind is free again
    assert wait_for(r, "done").result == {"count": 2}


def test_a_failing_job_reports_its_message_and_the_runner_stays_usable():
    def broken(stop):
        yield Progress(1, 2)
        raise UserError("the series is too short")

    r = JobRunner("demo", "Demo")
    r.start("me", broken, total=2)
    s = wait_for(r, "failed")
    assert s.message == "the series is too short" and "failed" in describe(s, "me")
    r.start("me", counting_job(1), total=1)
    wait_for(r, "done")


def test_every_page_sees_the_running_jobs_of_its_manager():
    manager, other = object.__new__(type("M", (), {})), object.__new__(type("M", (), {}))
    gate = threading.Event()
    r = runner(manager, "tune", "Tune (PSO)")
    assert runner(manager, "tune") is r and runner(other, "tune") is not r
    r.start("abcd1234", counting_job(3, gate), total=3)
    assert "Tune (PSO)" in banner_text(manager, "someone") and "session abcd's run" in banner_text(manager, "x")
    assert banner_text(other, "x") == ""
    gate.set()
    wait_for(r, "done")
    assert banner_text(manager, "x") == ""
