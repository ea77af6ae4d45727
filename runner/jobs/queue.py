"""A fair queue: round robin between users, strict tiers of priority, batches of
compatible jobs.

Fairness works by rounds. A user's first waiting job joins the current round, their
next one the round after, and so on; jobs run by (priority, round, arrival). So jobs
submitted as A1 A2 A3 B1 C1 run as A1 B1 C1 A2 A3, and someone who comes back after
a quiet spell starts in the current round rather than with credit saved up. Higher
priority (from roles, say) always goes first; round robin holds within a priority.

The queue is plain data guarded by one lock; it never blocks. :class:`JobRunner`
(``runner.jobs.scheduler``) waits on it.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runner.jobs.errors import DuplicateJob, UnknownJob
from runner.jobs.spec import JobSpec


@dataclass(order=True)
class _Entry:
    sort_key: tuple[int, int, int]
    job: JobSpec = field(compare=False)
    round: int = field(compare=False, default=0)
    floor: int = field(compare=False, default=0)  # the current round when it arrived


class FairQueue:
    """Waiting jobs in fair order. Thread-safe; every method returns at once."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: list[_Entry] = []  # sorted by (-priority, round, seq)
        self._by_id: dict[str, _Entry] = {}
        self._seq = itertools.count()
        self._current_round = 0
        self._last_round: dict[object, int] = {}  # user -> round of their last queued job
        self._served_round: dict[object, int] = {}  # user -> round of their last taken job

    # Adding and removing ------------------------------------------------------------
    def put(self, job: JobSpec, *, front: bool = False) -> int:
        """Add a job; returns its 1-based position. ``front`` puts it in the current round
        ahead of its priority's other jobs (a job given back by a lost worker)."""
        with self._lock:
            if job.job_id in self._by_id:
                raise DuplicateJob(job.job_id)
            user = self._user(job)
            if front:
                rnd, seq = self._current_round, -next(self._seq) - 1
            else:
                last = self._last_round.get(user)
                rnd = self._current_round if last is None else max(self._current_round, last + 1)
                self._last_round[user] = rnd
                seq = next(self._seq)
            entry = _Entry((-job.priority, rnd, seq), job, rnd, self._current_round)
            bisect.insort(self._entries, entry)
            self._by_id[job.job_id] = entry
            return self._entries.index(entry) + 1

    def remove(self, job_id: str) -> JobSpec:
        """Take a waiting job out (cancelled); raises :class:`UnknownJob`."""
        with self._lock:
            entry = self._by_id.pop(job_id, None)
            if entry is None:
                raise UnknownJob(job_id)
            self._entries.remove(entry)
            self._renumber(self._user(entry.job))
            return entry.job

    def clear(self) -> list[JobSpec]:
        """Remove every waiting job; returns them in the order they would have run."""
        with self._lock:
            jobs = [e.job for e in self._entries]
            self._entries.clear()
            self._by_id.clear()
            self._last_round = dict(self._served_round)
            return jobs

    # Taking -------------------------------------------------------------------------
    def peek(self) -> JobSpec | None:
        """The job that runs next, without taking it."""
        with self._lock:
            return self._entries[0].job if self._entries else None

    def take(self, job_id: str | None = None) -> JobSpec | None:
        """Take the next job (or the waiting job ``job_id``); None when empty."""
        batch = self.take_batch(1, job_id=job_id)
        return batch[0] if batch else None

    def take_batch(
        self,
        limit: int,
        *,
        job_id: str | None = None,
        accept: Callable[[JobSpec], bool] | None = None,
    ) -> list[JobSpec]:
        """Take the next job (or ``job_id``) and, if it has a batch key, up to ``limit - 1``
        more waiting jobs with the same key, in fair order. ``accept`` may refuse mates."""
        with self._lock:
            if not self._entries:
                return []
            head = self._by_id[job_id] if job_id is not None else self._entries[0]
            taken = [head]
            if head.job.batch_key is not None and limit > 1:
                for entry in self._entries:
                    if len(taken) >= limit:
                        break
                    if entry is head or entry.job.batch_key != head.job.batch_key:
                        continue
                    if accept is not None and not accept(entry.job):
                        continue
                    taken.append(entry)
            self._current_round = max(self._current_round, head.round)
            for entry in taken:
                self._entries.remove(entry)
                del self._by_id[entry.job.job_id]
                user = self._user(entry.job)
                self._served_round[user] = max(
                    self._served_round.get(user, entry.round), entry.round
                )
            return [e.job for e in taken]

    # Looking ------------------------------------------------------------------------
    def position(self, job_id: str) -> int | None:
        """1-based place of a waiting job in the running order, None if not waiting."""
        with self._lock:
            entry = self._by_id.get(job_id)
            return None if entry is None else self._entries.index(entry) + 1

    def jobs(self) -> list[JobSpec]:
        """Waiting jobs in the order they will run (as things stand)."""
        with self._lock:
            return [e.job for e in self._entries]

    def count_for(self, user_id: int | None) -> int:
        """How many jobs of this user wait."""
        with self._lock:
            return sum(1 for e in self._entries if e.job.user_id == user_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_id

    def __len__(self) -> int:
        return len(self._entries)

    # Internals ----------------------------------------------------------------------
    @staticmethod
    def _user(job: JobSpec) -> object:
        return job.user_id if job.user_id is not None else ("anonymous", job.job_id)

    def _renumber(self, user: object) -> None:
        """Close the gap a removed job left in a user's rounds, so their later jobs do not
        wait a round longer than they should."""
        served = self._served_round.get(user)
        mine = sorted(
            (e for e in self._entries if self._user(e.job) == user and e.sort_key[2] >= 0),
            key=lambda e: e.sort_key[2],
        )
        if not mine:
            if served is None:
                self._last_round.pop(user, None)
            else:
                self._last_round[user] = served
            return
        rnd = self._current_round if served is None else max(self._current_round, served + 1)
        changed = False
        for e in mine:
            rnd = max(rnd, e.floor)
            if e.round != rnd:
                e.round = rnd
                e.sort_key = (e.sort_key[0], rnd, e.sort_key[2])
                changed = True
            rnd += 1
        self._last_round[user] = rnd - 1
        if changed:
            self._entries.sort()


def fair_order(jobs: Iterable[JobSpec]) -> list[JobSpec]:
    """The order in which ``jobs`` (in submission order) would run from an empty queue."""
    queue = FairQueue()
    for job in jobs:
        queue.put(job)
    return queue.jobs()
