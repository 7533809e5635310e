"""Jobs waiting for a shared single-worker engine, served round robin between calls.

One model on one worker thread runs one job at a time. A plain FIFO lets one call
that queues several jobs (a speculative draft, then the real reply, then the next
turn's) push every other call's job behind its whole backlog; here each call has
its own queue and the worker takes one job from each call in turn. A job withdrawn
before the worker took it never runs: the caller that cancelled it does not pay
for it, and neither does anyone queued behind it.

Thread-safe: the event loop puts and withdraws, the worker thread takes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FairJobQueue", "Job"]


@dataclass(eq=False, slots=True)
class Job:
    """One unit of work for the worker; ``key`` says whose it is (a call's id)."""

    key: str
    run: Callable[[], None] = field(repr=False)


class FairJobQueue:
    """Per-key FIFO queues, taken from round robin; bounded per key."""

    def __init__(self, max_per_key: int = 8) -> None:
        if max_per_key < 1:
            raise ValueError(f"max_per_key must be at least 1, got {max_per_key}")
        self.max_per_key = max_per_key
        self._lock = threading.Lock()
        # Keys with waiting jobs, in the order they are served next.
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()

    def put(self, job: Job) -> bool:
        """Queue ``job`` behind its key's earlier jobs; False when that key is full."""
        with self._lock:
            queue = self._queues.get(job.key)
            if queue is None:
                queue = self._queues[job.key] = deque()
            elif len(queue) >= self.max_per_key:
                return False
            queue.append(job)
            return True

    def withdraw(self, job: Job) -> bool:
        """Remove ``job`` if it has not been taken; True when it will never run."""
        with self._lock:
            queue = self._queues.get(job.key)
            if queue is None or job not in queue:
                return False
            queue.remove(job)
            if not queue:
                del self._queues[job.key]
            return True

    def take(self) -> Job | None:
        """The next job: the oldest of the key served longest ago; None when empty."""
        with self._lock:
            if not self._queues:
                return None
            key, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(key)
            else:
                del self._queues[key]
            return job

    def __len__(self) -> int:
        with self._lock:
            return sum(len(queue) for queue in self._queues.values())
