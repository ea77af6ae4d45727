"""The job runner's bookkeeping of workers and running jobs.

A :class:`WorkerSlot` is one worker as the runner sees it (its thread, whether it was
removed, whether it is busy); a :class:`RunningJob` is a job a worker is running (its
cancel token and progress); :func:`choose_slot` says which idle worker takes the job at
the head of the queue. Used by :class:`runner.jobs.scheduler.JobRunner`, under its lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.context import CancelToken
from runner.jobs.spec import JobSpec
from runner.jobs.worker import Worker


@dataclass
class RunningJob:
    """A job a worker is running."""

    job: JobSpec
    worker: str
    token: CancelToken
    batch_size: int = 1
    started_at: float = field(default_factory=time.time)
    step: int = 0
    total: int = 0


class WorkerSlot:
    """One worker of the runner: ``index`` orders workers added earlier first."""

    def __init__(self, worker: Worker, index: int):
        self.worker = worker
        self.index = index
        self.removed = False
        self.busy = False
        self.thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.worker.name


def choose_slot(idle: Sequence[WorkerSlot], head: JobSpec) -> WorkerSlot:
    """The idle slot that should take ``head``: the highest affinity (a worker that
    raises counts 0), the earliest added among equals."""

    def score(slot: WorkerSlot) -> tuple[int, int]:
        try:
            affinity = slot.worker.affinity(head)
        except Exception:
            affinity = 0
        return (affinity, -slot.index)

    return max(idle, key=score)
