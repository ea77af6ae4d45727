"""The job runner: a fair queue, one thread per worker, batching, cancellation, events.

It knows nothing of databases. Whoever keeps jobs durable (the bot's job service)
passes a :class:`JobStore`; the runner tells it when a job starts, ends or goes back to
the queue, and asks it before starting a job whether it still should. The stores live in
:mod:`runner.jobs.store`, the bookkeeping of workers and running jobs in
:mod:`runner.jobs.slots`; both are importable from here as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from runner import events as ev
from runner.context import CancelToken
from runner.jobs.errors import RunnerStopped, UnknownJob, WorkerLost
from runner.jobs.events import EventBus, JobEnded, JobRequeued
from runner.jobs.queue import FairQueue
from runner.jobs.slots import RunningJob, WorkerSlot, choose_slot
from runner.jobs.spec import CANCELLED, FAILED, JobOutcome, JobSpec
from runner.jobs.store import JobStore, MemoryStore
from runner.jobs.worker import Worker

__all__ = ["JobRunner", "JobStore", "MemoryStore", "RunningJob"]

log = logging.getLogger(__name__)


class JobRunner:
    """Schedules jobs fairly onto workers, each worker on its own thread.

    ``max_batch`` jobs with the same batch key may run as one batch. ``submit`` returns
    at once with the job's position; events go to ``bus``; outcomes to ``store``.
    """

    def __init__(
        self,
        workers: Iterable[Worker] = (),
        *,
        store: JobStore | None = None,
        bus: EventBus | None = None,
        max_batch: int = 1,
        paused: bool = False,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.store: JobStore = store or MemoryStore()
        self.bus = bus or EventBus()
        self.max_batch = max_batch
        self.queue = FairQueue()
        self._cond = threading.Condition(threading.RLock())
        self._slots: list[WorkerSlot] = []
        self._idle: list[WorkerSlot] = []
        self._running: dict[str, RunningJob] = {}
        self._paused = paused
        self._started = False
        self._stopping = False
        self._slot_counter = 0
        self.on_worker_lost: Callable[[Worker, WorkerLost], None] | None = None
        """Called (on the worker's thread) after a worker was lost and its jobs requeued."""
        for worker in workers:
            self.add_worker(worker)

    # Lifecycle ------------------------------------------------------------------------
    def start(self) -> JobRunner:
        """Start one thread per worker. Returns self."""
        with self._cond:
            if self._stopping:
                raise RunnerStopped()
            self._started = True
            for slot in self._slots:
                self._start_slot(slot)
        return self

    def stop(self, *, cancel_running: bool = False, timeout: float | None = 30.0) -> None:
        """Stop taking jobs and wait for the worker threads (running jobs finish first
        unless ``cancel_running``). Waiting jobs stay queued in memory (and durable in the
        store, whose owner recovers them at the next start)."""
        with self._cond:
            self._stopping = True
            if cancel_running:
                for running in self._running.values():
                    running.token.cancel()
            self._cond.notify_all()
            threads = [s.thread for s in self._slots if s.thread is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for slot in list(self._slots):
            try:
                slot.worker.close()
            except Exception:  # pragma: no cover - best effort
                log.exception("worker %s did not close cleanly", slot.name)

    def __enter__(self) -> JobRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Workers ----------------------------------------------------------------------------
    def add_worker(self, worker: Worker) -> None:
        """Add a worker (a Ray actor that joined, say); it starts taking jobs at once."""
        with self._cond:
            self._slot_counter += 1
            slot = WorkerSlot(worker, self._slot_counter)
            self._slots.append(slot)
            if self._started and not self._stopping:
                self._start_slot(slot)
            self._cond.notify_all()

    def remove_worker(self, name: str) -> None:
        """Stop giving jobs to a worker; its running batch, if any, finishes."""
        with self._cond:
            for slot in self._slots:
                if slot.name == name:
                    slot.removed = True
            self._slots = [s for s in self._slots if not s.removed]
            self._cond.notify_all()

    @property
    def workers(self) -> list[Worker]:
        """The workers taking jobs now."""
        with self._cond:
            return [s.worker for s in self._slots]

    def _start_slot(self, slot: WorkerSlot) -> None:
        if slot.thread is None:
            slot.thread = threading.Thread(
                target=self._slot_loop, args=(slot,), name=f"easel-worker-{slot.name}", daemon=True
            )
            slot.thread.start()

    # Submitting and controlling ----------------------------------------------------------
    def submit(self, job: JobSpec) -> int:
        """Queue a job; returns its 1-based position in the running order."""
        with self._cond:
            if self._stopping:
                raise RunnerStopped()
            position = self.queue.put(job)
            # Published before any worker can take the job, so "queued" comes first.
            self.bus.publish(ev.Queued(job.job_id, position=position))
            self._cond.notify_all()
        return position

    def requeue(self, job: JobSpec, reason: str) -> int | None:
        """Put a job back at the front of the queue (its worker was lost) and return its
        position; or, when the store says it must not run again (it was tried too
        often), end it as failed with the store's sentence and return None."""
        # The store first: once the job is in the queue a worker may take it, and the
        # store must already know it waits.
        try:
            refusal = self.store.job_requeued(job, reason)
        except Exception:
            log.exception("the job store failed to record that job %s was requeued", job.job_id)
            refusal = None
        if refusal:
            log.warning("job %s is not run again: %s", job.job_id, refusal)
            self._finish(job, JobOutcome(job.job_id, FAILED, error=refusal))
            return None
        with self._cond:
            self._running.pop(job.job_id, None)
            position = self.queue.put(job, front=True)
            self._cond.notify_all()
        self.bus.publish(JobRequeued(job.job_id, reason=reason, position=position))
        return position

    def cancel(self, job_id: str) -> str:
        """Cancel a waiting job (removed at once) or a running one (stops at the next
        sampling step or node). Returns ``"queued"`` or ``"running"``; raises
        :class:`UnknownJob` for a job neither waiting nor running."""
        with self._cond:
            if job_id in self.queue:
                job = self.queue.remove(job_id)
                self._cond.notify_all()
                state = "queued"
            else:
                running = self._running.get(job_id)
                if running is None:
                    raise UnknownJob(job_id)
                running.token.cancel()
                worker = next((s.worker for s in self._slots if s.name == running.worker), None)
                state = "running"
        if state == "queued":
            self._finish(job, JobOutcome(job_id, CANCELLED, error="cancelled while waiting"))
            return state
        if worker is not None:
            try:
                worker.cancel(job_id)
            except Exception:
                log.exception(
                    "could not pass the cancellation of job %s to worker %s", job_id, running.worker
                )
        return state

    def pause(self) -> None:
        """Start no new job until :meth:`resume` (running jobs finish)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Start jobs again after :meth:`pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def clear(self, reason: str = "the queue was cleared") -> list[JobSpec]:
        """Cancel every waiting job (running ones go on); returns them."""
        with self._cond:
            jobs = self.queue.clear()
        for job in jobs:
            self._finish(job, JobOutcome(job.job_id, CANCELLED, error=reason))
        return jobs

    # Looking --------------------------------------------------------------------------
    def position(self, job_id: str) -> int | None:
        """1-based position of a waiting job (0 when running, None when unknown)."""
        with self._cond:
            if job_id in self._running:
                return 0
            return self.queue.position(job_id)

    def waiting(self) -> list[JobSpec]:
        """Waiting jobs in running order."""
        return self.queue.jobs()

    def running(self) -> list[RunningJob]:
        """Jobs being run now."""
        with self._cond:
            return list(self._running.values())

    def steps_ahead(self, job_id: str | None = None) -> int:
        """Sampling steps still to run before ``job_id`` starts (before a new job, if None):
        what is left of the running jobs plus the waiting jobs ahead of it."""
        with self._cond:
            left = sum(max(0, (r.total or r.job.steps) - r.step) for r in self._running.values())
            for job in self.queue.jobs():
                if job.job_id == job_id:
                    break
                left += job.steps
            return left

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits or runs (or the runner is paused with nothing
        running); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running or (len(self.queue) and not self._paused and self._slots):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
            return True

    # Worker threads ---------------------------------------------------------------------
    def _next_batch(self, slot: WorkerSlot) -> list[JobSpec] | None:
        with self._cond:
            self._idle.append(slot)
            try:
                while True:
                    if self._stopping or slot.removed:
                        return None
                    head = None if self._paused else self.queue.peek()
                    if head is not None:
                        if choose_slot(self._idle, head) is slot:
                            batch = self.queue.take_batch(self.max_batch, job_id=head.job_id)
                            for job in batch:
                                self._running[job.job_id] = RunningJob(
                                    job, slot.name, CancelToken(), len(batch)
                                )
                            return batch
                        self._cond.notify_all()  # the better suited worker takes it
                    self._cond.wait(1.0)
            finally:
                self._idle.remove(slot)

    def _slot_loop(self, slot: WorkerSlot) -> None:
        while True:
            batch = self._next_batch(slot)
            if batch is None:
                return
            slot.busy = True
            try:
                lost = self._execute(slot, batch)
            finally:
                slot.busy = False
                with self._cond:
                    self._cond.notify_all()
            if lost:
                return

    def _execute(self, slot: WorkerSlot, batch: list[JobSpec]) -> bool:
        """Run one batch on ``slot``; True when the worker was lost."""
        started: list[JobSpec] = []
        for job in batch:
            try:
                go = self.store.job_started(job, slot.name)
            except Exception:
                log.exception("the job store failed to start job %s; it is skipped", job.job_id)
                go = False
            if go:
                started.append(job)
            else:
                with self._cond:
                    self._running.pop(job.job_id, None)
        if not started:
            return False
        with self._cond:
            tokens = {
                job.job_id: self._running[job.job_id].token
                for job in started
                if job.job_id in self._running
            }
        try:
            outcomes = slot.worker.run(started, self._emit, tokens)
        except WorkerLost as exc:
            log.warning("%s; requeueing %d job(s)", exc, len(started))
            self.remove_worker(slot.name)
            for job in started:
                self.requeue(job, str(exc))
            if self.on_worker_lost is not None:
                try:
                    self.on_worker_lost(slot.worker, exc)
                except Exception:
                    log.exception("on_worker_lost failed")
            return True
        except Exception as exc:
            log.exception("worker %s failed a batch of %d job(s)", slot.name, len(started))
            outcomes = [
                JobOutcome(j.job_id, FAILED, error=f"worker error: {exc}", worker=slot.name)
                for j in started
            ]
        by_id = {o.job_id: o for o in outcomes}
        for job in started:
            outcome = by_id.get(job.job_id) or JobOutcome(
                job.job_id, FAILED, error="the worker returned no outcome", worker=slot.name
            )
            outcome.worker = outcome.worker or slot.name
            self._finish(job, outcome)
        return False

    def _finish(self, job: JobSpec, outcome: JobOutcome) -> None:
        try:
            self.store.job_finished(job, outcome)
        except Exception:
            log.exception("the job store failed to record the end of job %s", job.job_id)
        with self._cond:
            self._running.pop(job.job_id, None)
            self._cond.notify_all()
        self.bus.publish(
            JobEnded(
                job.job_id,
                status=outcome.status,
                error=outcome.error,
                worker=outcome.worker,
                images=len(outcome.images),
            )
        )

    def _emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Progress):
            with self._cond:
                running = self._running.get(event.job_id)
                if running is not None:
                    running.step, running.total = event.step, event.total
        self.bus.publish(event)
