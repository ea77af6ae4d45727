"""How long a waiting job waits: its place in the queue times the measured time of one
job, never growing while the place does not.

The estimate is ``jobs ahead x seconds per job / workers``: the jobs ahead are those
waiting before it plus what is left of the running ones (by their sampling progress),
and the seconds per job the median of recent jobs' measured times (a batch's time
shared by its jobs). Timings change as jobs finish (a slow first job loads its model),
so a raw estimate can rise while the job moves up; :class:`MonotoneWaits` keeps what a
job was shown from growing unless its place grew (a higher-priority job came in ahead).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


def median(values: Iterable[float]) -> float | None:
    """The median (upper middle) of ``values``; None when there are none."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def jobs_ahead(position: int | None, running: Iterable[Any]) -> float:
    """Jobs to finish before a job at ``position`` (1-based among the waiting; None for
    "a new job", i.e. after every waiting one, given as the count of waiting jobs + 1)
    starts: the waiting ones before it plus what is left of each running job
    (``step``/``total``, as :class:`runner.jobs.slots.RunningJob` has them)."""
    left = 0.0
    for job in running:
        total = getattr(job, "total", 0) or 0
        step = getattr(job, "step", 0) or 0
        left += 1.0 - min(1.0, step / total) if total else 1.0
    before = max(0, (position or 1) - 1)
    return before + left


class MonotoneWaits:
    """What each waiting job was last told, so that its estimate only grows when its
    place in the queue grows. Thread-safe."""

    def __init__(self) -> None:
        self._shown: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def shown(self, job_id: str, position: int, estimate: float) -> float:
        """The estimate to show for ``job_id`` at ``position``: ``estimate``, capped by
        the last one shown unless the place is now further back."""
        with self._lock:
            last = self._shown.get(job_id)
            if last is not None and position <= last[0]:
                estimate = min(estimate, last[1])
            self._shown[job_id] = (position, estimate)
            return estimate

    def forget(self, job_id: str) -> None:
        """The job started or ended: nothing more to cap."""
        with self._lock:
            self._shown.pop(job_id, None)
