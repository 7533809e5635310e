"""The engine job queue: round robin between calls, withdrawn jobs never run."""

from __future__ import annotations

import pytest

from pipeline.engines.fair_queue import FairJobQueue, Job


def _job(key: str, log: list[str], name: str) -> Job:
    return Job(key, lambda: log.append(name))


def _drain(queue: FairJobQueue) -> None:
    while (job := queue.take()) is not None:
        job.run()


def test_one_calls_backlog_does_not_go_ahead_of_another_call() -> None:
    queue = FairJobQueue()
    ran: list[str] = []
    for name in ("a1", "a2", "a3"):
        assert queue.put(_job("a", ran, name))
    assert queue.put(_job("b", ran, "b1"))
    assert queue.put(_job("c", ran, "c1"))
    assert queue.put(_job("b", ran, "b2"))
    _drain(queue)
    assert ran == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert len(queue) == 0


def test_a_withdrawn_job_never_runs() -> None:
    queue = FairJobQueue()
    ran: list[str] = []
    first, second = _job("a", ran, "a1"), _job("a", ran, "a2")
    queue.put(first)
    queue.put(second)
    assert queue.withdraw(second)
    assert not queue.withdraw(second)
    taken = queue.take()
    assert taken is first
    assert not queue.withdraw(first), "taken: the worker runs it"
    first.run()
    assert queue.take() is None
    assert ran == ["a1"]


def test_each_call_queues_a_bounded_number_of_jobs() -> None:
    queue = FairJobQueue(max_per_key=2)
    ran: list[str] = []
    assert queue.put(_job("a", ran, "a1"))
    assert queue.put(_job("a", ran, "a2"))
    assert not queue.put(_job("a", ran, "a3"))
    assert queue.put(_job("b", ran, "b1"))
    with pytest.raises(ValueError):
        FairJobQueue(max_per_key=0)
