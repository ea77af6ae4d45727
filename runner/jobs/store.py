"""Where the job runner reports what happens to jobs: the :class:`JobStore` protocol and
:class:`MemoryStore`, the one that keeps outcomes in memory.

The bot's job service is the durable store (``bot.services.jobs.store``); the command
line and tests use :class:`MemoryStore`. Both are importable from
:mod:`runner.jobs.scheduler` and :mod:`runner.jobs` as before.
"""

from __future__ import annotations

import threading
from typing import Protocol

from runner.jobs.spec import JobOutcome, JobSpec


class JobStore(Protocol):
    """Where the runner reports what happens to jobs (a database, a file, memory).

    Called on worker threads (never on an asyncio loop), so implementations may block
    briefly on I/O.
    """

    def job_started(self, job: JobSpec, worker: str) -> bool:
        """A worker is about to run ``job``; return False to skip it (e.g. it was
        cancelled elsewhere meanwhile)."""
        ...

    def job_finished(self, job: JobSpec, outcome: JobOutcome) -> None:
        """``job`` ended (done, failed, or cancelled, waiting or running)."""
        ...

    def job_requeued(self, job: JobSpec, reason: str) -> str | None:
        """``job``'s worker was lost: record that it waits again and return None, or
        return one sentence saying why it must not run again (it was tried too often);
        the runner then ends it as failed with that sentence."""
        ...


class MemoryStore:
    """A :class:`JobStore` that keeps outcomes in memory (the command line, tests)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, JobOutcome] = {}
        self.starts: dict[str, list[str]] = {}
        self.requeues: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def job_started(self, job: JobSpec, worker: str) -> bool:
        with self._lock:
            self.starts.setdefault(job.job_id, []).append(worker)
        return True

    def job_finished(self, job: JobSpec, outcome: JobOutcome) -> None:
        with self._lock:
            if job.job_id in self.outcomes:
                raise RuntimeError(f"job {job.job_id!r} finished twice")
            self.outcomes[job.job_id] = outcome

    def job_requeued(self, job: JobSpec, reason: str) -> str | None:
        with self._lock:
            self.requeues.setdefault(job.job_id, []).append(reason)
        return None
