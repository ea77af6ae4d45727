"""A minimal in-process job queue: fair between users, work off the event loop.

This is the bot's adapter until the durable job service (``bot.services.jobs``) is wired
in: it schedules plain callables round-robin across users, runs each on a worker thread
with ``asyncio.to_thread`` (so sampling never blocks the event loop), forwards the
runner's events to a listener on the loop, and supports cancellation. It keeps nothing
on disk: durability (restart recovery) is the job service's.

The interface the bot uses is :class:`JobQueue`; any queue with these methods fits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner import events as ev
from runner.context import CancelToken
from runner.errors import JobCancelled

log = logging.getLogger(__name__)

RunFn = Callable[[CancelToken, ev.EventHandler], Any]
Listener = Callable[[ev.Event], Awaitable[None]]


class QueueFull(Exception):
    """The user already has as many jobs waiting as allowed."""


@dataclass
class QueuedJob:
    """One unit of work: ``run(cancel, emit)`` is called on a worker thread."""

    job_id: int
    user_id: int
    run: RunFn
    label: str = ""
    listener: Listener | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    future: asyncio.Future | None = None
    status: str = "queued"
    last_position: int = 0


@dataclass(frozen=True)
class QueueEntry:
    """A line of ``/queue``: who waits for what, and where."""

    job_id: int
    user_id: int
    label: str
    status: str
    position: int


class JobQueue(Protocol):
    """What the bot needs from a job queue."""

    def submit(self, job: QueuedJob) -> int: ...

    def cancel(
        self, user_id: int, job_id: int | None = None, *, admin: bool = False
    ) -> list[int]: ...

    def snapshot(self) -> list[QueueEntry]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LocalJobQueue:
    """Round-robin across users (A1 A2 B1 runs A1 B1 A2), ``workers`` jobs at a time."""

    def __init__(self, *, workers: int = 1, max_per_user: int = 5):
        self.workers = workers
        self.max_per_user = max_per_user
        self._waiting: dict[int, deque[QueuedJob]] = {}
        self._turns: deque[int] = deque()  # users in round-robin order
        self._running: dict[int, QueuedJob] = {}
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker tasks on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"easel-worker-{i}")
            for i in range(self.workers)
        ]

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything waiting or running, let running jobs stop at their next
        step (up to ``timeout`` seconds), then stop the workers."""
        self._stopping = True
        for user in list(self._waiting):
            self.cancel(user)
        for job in self._running.values():
            job.cancel.cancel()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- queue -----------------------------------------------------------------------
    def pending_for(self, user_id: int) -> int:
        """How many of the user's jobs wait or run."""
        running = sum(1 for j in self._running.values() if j.user_id == user_id)
        return running + len(self._waiting.get(user_id, ()))

    def submit(self, job: QueuedJob) -> int:
        """Queue ``job``; returns its position (1 = next to run). Raises :class:`QueueFull`."""
        if self.pending_for(job.user_id) >= self.max_per_user:
            raise QueueFull(
                f"you already have {self.max_per_user} requests waiting; try again when one is done"
            )
        loop = self._loop or asyncio.get_running_loop()
        job.future = loop.create_future()
        queue = self._waiting.setdefault(job.user_id, deque())
        queue.append(job)
        if job.user_id not in self._turns:
            self._turns.append(job.user_id)
        position = self.position(job.job_id)
        job.last_position = position
        if self._wakeup is not None:
            self._wakeup.set()
        return position

    def order(self) -> list[QueuedJob]:
        """Waiting jobs in the order they will run."""
        queues = {u: list(self._waiting.get(u, ())) for u in self._turns}
        out: list[QueuedJob] = []
        turns = list(self._turns)
        while any(queues.values()):
            for user in turns:
                if queues.get(user):
                    out.append(queues[user].pop(0))
        return out

    def position(self, job_id: int) -> int:
        """1-based place among the waiting jobs, or 0 if running or unknown."""
        for i, job in enumerate(self.order(), start=1):
            if job.job_id == job_id:
                return i
        return 0

    def snapshot(self) -> list[QueueEntry]:
        """Running jobs (position 0), then waiting ones in order."""
        running = [
            QueueEntry(j.job_id, j.user_id, j.label, "running", 0) for j in self._running.values()
        ]
        waiting = [
            QueueEntry(j.job_id, j.user_id, j.label, "queued", i)
            for i, j in enumerate(self.order(), 1)
        ]
        return running + waiting

    def cancel(self, user_id: int, job_id: int | None = None, *, admin: bool = False) -> list[int]:
        """Cancel the user's jobs (one by id, or all); admins may cancel anyone's.
        A running job stops at its next sampling step. Returns the ids cancelled."""
        cancelled: list[int] = []
        for user, queue in list(self._waiting.items()):
            for job in list(queue):
                if _matches(job, user_id, job_id, admin):
                    queue.remove(job)
                    job.cancel.cancel()
                    job.status = "cancelled"
                    self._emit(job, ev.Cancelled(str(job.job_id)))
                    if job.future and not job.future.done():
                        job.future.set_exception(
                            JobCancelled(f"job {job.job_id} was cancelled while queued")
                        )
                    cancelled.append(job.job_id)
            if not queue:
                self._drop_user(user)
        for job in self._running.values():
            if _matches(job, user_id, job_id, admin):
                job.cancel.cancel()
                cancelled.append(job.job_id)
        self._announce_positions()
        return cancelled

    # -- internals -------------------------------------------------------------------
    def _drop_user(self, user: int) -> None:
        self._waiting.pop(user, None)
        if user in self._turns:
            self._turns.remove(user)

    def _next(self) -> QueuedJob | None:
        while self._turns:
            user = self._turns.popleft()
            queue = self._waiting.get(user)
            if not queue:
                self._drop_user(user)
                continue
            job = queue.popleft()
            if queue:
                self._turns.append(user)  # back of the line: round robin
            else:
                self._waiting.pop(user, None)
            return job
        return None

    def _emit(self, job: QueuedJob, event: ev.Event) -> None:
        if job.listener is None or self._loop is None:
            return
        task = self._loop.create_task(job.listener(event))
        task.add_done_callback(_log_listener_error)

    def _announce_positions(self) -> None:
        for position, job in enumerate(self.order(), start=1):
            if position != job.last_position:
                job.last_position = position
                self._emit(job, ev.Queued(str(job.job_id), position=position))

    async def _worker(self, index: int) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            job = self._next()
            if job is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._running[job.job_id] = job
            job.status = "running"
            self._announce_positions()

            def emit(event: ev.Event, job: QueuedJob = job) -> None:
                # Called on the worker thread: hop onto the loop.
                loop.call_soon_threadsafe(self._emit, job, event)

            try:
                result = await asyncio.to_thread(job.run, job.cancel, emit)
            except BaseException as exc:  # the job's own error; the worker goes on
                if isinstance(exc, asyncio.CancelledError) and not job.cancel.cancelled:
                    raise
                job.status = "failed"
                if not isinstance(exc, Exception):
                    exc = JobCancelled(f"job {job.job_id} was stopped")
                if job.future and not job.future.done():
                    job.future.set_exception(exc)
            else:
                job.status = "done"
                if job.future and not job.future.done():
                    job.future.set_result(result)
            finally:
                self._running.pop(job.job_id, None)


def _matches(job: QueuedJob, user_id: int, job_id: int | None, admin: bool) -> bool:
    if job_id is None:
        return job.user_id == user_id
    return job.job_id == job_id and (admin or job.user_id == user_id)


def _log_listener_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a job listener failed", exc_info=task.exception())
