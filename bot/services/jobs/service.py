"""The job service itself: creating it for the settings (local or Ray workers),
starting (with recovery) and stopping, submitting, cancelling, the owners' queue
controls, and looking at the queue. Its durable side is :mod:`.store`, its posting
side :mod:`.posting`."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from bot.services.history import History
from bot.services.jobs.errors import JobAlreadyFinished, JobNotFound, NotAllowed, QueueFull
from bot.services.jobs.estimates import MonotoneWaits, jobs_ahead, median
from bot.services.jobs.posting import ResultPosting
from bot.services.jobs.store import DurableJobs
from bot.services.jobs.values import (
    JobInfo,
    Poster,
    RecoveryReport,
    StatusNotifier,
    Submission,
    job_info,
)
from db import audit as db_audit
from db import jobs as db_jobs
from db import queue as db_queue
from db.engine import Database
from db.errors import NotFound
from db.models import Job, JobStatus
from runner.jobs import (
    CANCELLED,
    EventBus,
    JobOutcome,
    JobRunner,
    JobSpec,
    Subscription,
    UnknownJob,
    make_job,
)
from runner.templates import GenerationRequest

log = logging.getLogger("bot.services.jobs")


class JobService(DurableJobs, ResultPosting):
    """Jobs stored in the database and run by a :class:`runner.jobs.JobRunner`.

    Every method that touches the database blocks: the event loop calls them with
    ``await asyncio.to_thread(service.method, ...)``.
    """

    def __init__(
        self,
        db: Database,
        settings: Any,
        runner: JobRunner,
        *,
        history: History,
        poster: Poster | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        backend: Any = None,
        status_notifier: StatusNotifier | None = None,
    ):
        self.db = db
        self.settings = settings
        self.runner = runner
        self.runner.store = self
        self.history = history
        self.poster = poster
        self.status_notifier = status_notifier
        self.loop = loop
        self.backend = backend
        self._timings: collections.deque[float] = collections.deque(maxlen=20)
        self._job_seconds: collections.deque[float] = collections.deque(maxlen=20)
        self._waits = MonotoneWaits()
        self._post_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-post")
        self._pending_posts: set[int] = set()
        self._lock = threading.Lock()
        self._started = False

    @classmethod
    def create(
        cls,
        db: Database,
        settings: Any,
        env: Any,
        *,
        poster: Poster | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        bus: EventBus | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> JobService:
        """A service for ``settings`` (:class:`bot.settings.Settings`): local workers on
        ``env`` (one per GPU), or Ray workers when ``settings.backend == "ray"``."""
        runner = JobRunner(bus=bus, max_batch=settings.max_batch_jobs)
        backend = None
        if settings.backend == "ray":
            # The Ray driver runs in a subprocess started again after the cluster's
            # loss, so that the head's death neither ends nor wedges the bot.
            from runner.jobs.backend_driver import DriverBackend

            backend = DriverBackend(
                settings,
                address=settings.ray_address,
                namespace=settings.ray_namespace,
                workers=settings.ray_workers,
                lora_resolver=env.models.lora_path,
                init_kwargs=ray_init_kwargs,
            )
        else:
            from runner.jobs import local_workers

            for worker in local_workers(settings, env):
                runner.add_worker(worker)
        return cls(
            db,
            settings,
            runner,
            history=History.for_environment(db, env),
            poster=poster,
            loop=loop,
            backend=backend,
        )

    # Starting and stopping ----------------------------------------------------------------
    def start(self, *, loop: asyncio.AbstractEventLoop | None = None) -> RecoveryReport:
        """Recover from the last run and start the workers: jobs that were running are
        queued again (they run from the start), every waiting job is queued in its
        order, finished results that were never posted are posted, and a pause an owner
        set stays in force. Blocking: from the event loop, call
        ``await asyncio.to_thread(service.start, loop=asyncio.get_running_loop())``;
        ``loop`` (if given and none was set) is where an async poster runs."""
        if loop is not None and self.loop is None:
            self.loop = loop
        requeued, jobs, unposted = self.db.run_sync(self._recover_tx)
        paused = self.db.read_sync(db_queue.queue_paused)
        if paused:
            self.runner.pause()
        self._load_timings()
        for spec in jobs:
            self.runner.submit(spec)
        if self.backend is not None:
            self.backend.start(self.runner)
        self.runner.start()
        self._started = True
        for job_id in unposted:
            self._schedule_post(job_id)
        self._schedule_status_notes([int(s.job_id) for s in jobs])
        if requeued or jobs:
            log.info(
                "recovered %d waiting job(s), %d of them interrupted", len(jobs), len(requeued)
            )
        return RecoveryReport(requeued, [int(s.job_id) for s in jobs], unposted, paused)

    def stop(self, *, timeout: float | None = 30.0) -> None:
        """Stop the workers (a running job finishes first, within ``timeout``) and the
        posting thread. Jobs still waiting stay queued in the database."""
        self.runner.stop(timeout=timeout)
        if self.backend is not None:
            self.backend.stop()
        self._post_pool.shutdown(wait=True)

    # Submitting ---------------------------------------------------------------------------
    def priority_for(self, roles: Iterable[int | str] = ()) -> int:
        """The queue priority of someone with these Discord roles (ids or names): the
        highest configured in ``role_priorities``, else 0."""
        table = {
            str(k): v for k, v in (getattr(self.settings, "role_priorities", None) or {}).items()
        }
        return max((table[str(r)] for r in roles if str(r) in table), default=0)

    def _submit_tx(
        self,
        session: Session,
        user_id: int,
        request: GenerationRequest,
        priority: int,
        previews: bool,
        prepare: dict[str, Any],
    ) -> tuple[Job, Any]:
        # The count is the unit of work's first statement: on SQLite it takes the write
        # lock, so two submissions of one user cannot both slip under the cap.
        waiting = db_jobs.count_active_jobs(session, user_id)
        limit = self.settings.max_queued_per_user
        if waiting >= limit:
            raise QueueFull(user_id, waiting, limit)
        family = prepare.pop("family", None)
        prepared = self.history.prepare_in_session(
            session, user_id, request, family=family, **prepare
        )
        stored_request = (
            prepared.request.model_dump(mode="json") if prepared.request is not None else {}
        )
        job = db_jobs.create_job(
            session,
            user_id,
            request={"request": stored_request, "previews": previews},
            generation_id=prepared.generation_id,
            priority=priority,
        )
        return job, prepared

    def submit(
        self,
        user_id: int,
        request: GenerationRequest,
        *,
        roles: Iterable[int | str] = (),
        guild_id: int | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        reuse_seed_of: int | None = None,
        parent_id: int | None = None,
        previews: bool = False,
        add_trigger_words: bool = True,
    ) -> Submission:
        """Store a job for ``request`` (and its generation, with the seed from the user's
        seed policy), then queue it. Returns its id, position and estimated wait.

        Raises :class:`QueueFull` beyond the per-user cap (``max_queued_per_user``), and
        the history's errors for bad requests (unknown LoRA, wrong family...): nothing is
        stored then."""
        family = self.history.family_of(request.model) if request.loras else None
        prepare = {
            "family": family,
            "reuse_seed_of": reuse_seed_of,
            "parent_id": parent_id,
            "guild_id": guild_id,
            "channel_id": channel_id,
            "message_id": message_id,
            "add_trigger_words": add_trigger_words,
        }
        priority = self.priority_for(roles)
        job, prepared = self.db.run_sync(
            self._submit_tx, user_id, request, priority, previews, prepare
        )
        return self._enqueue(job, prepared, previews)

    def _enqueue(self, job: Job, prepared: Any, previews: bool) -> Submission:
        spec = make_job(
            str(job.id),
            prepared.workflow,
            user_id=job.user_id,
            priority=job.priority,
            previews=previews,
            meta={"generation_id": prepared.generation_id},
        )
        position = self.runner.submit(spec)
        return Submission(
            job.id, prepared.generation_id, position, prepared.seed, self.estimate_wait(str(job.id))
        )

    def remember_status(
        self,
        job_id: int,
        *,
        token: str | None = None,
        expires_at: datetime | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
    ) -> None:
        """Store where the job's private status shows (an interaction token valid until
        ``expires_at``, or a reply message), so that after a restart the status can say
        where the job went (:attr:`status_notifier`, and the poster)."""
        self.db.run_sync(
            db_jobs.remember_status,
            job_id,
            token=token,
            expires_at=expires_at,
            channel_id=channel_id,
            message_id=message_id,
        )

    # Cancelling and admin -----------------------------------------------------------------
    def cancel(self, job_id: int, user_id: int, *, admin: bool = False) -> str:
        """Cancel one of the user's jobs (any job for ``admin``): a waiting one at once,
        a running one at its next sampling step. Returns ``"queued"`` or ``"running"``.
        Raises :class:`JobNotFound` or :class:`JobAlreadyFinished`."""
        job = self._own_job(job_id, user_id, admin)
        if job.status.finished:
            raise JobAlreadyFinished(job_id, job.status.value)
        try:
            return self.runner.cancel(str(job_id))
        except UnknownJob:  # stored but not in this runner (not started yet)
            self.job_finished(
                JobSpec(
                    str(job_id), {}, user_id=job.user_id, meta={"generation_id": job.generation_id}
                ),
                JobOutcome(str(job_id), CANCELLED, error="cancelled while waiting"),
            )
            return "queued"

    def _own_job(self, job_id: int, user_id: int | None, admin: bool) -> Job:
        try:
            job = self.db.read_sync(db_jobs.get_job, job_id)
        except NotFound:
            raise JobNotFound(job_id) from None
        if not admin and job.user_id != user_id:
            raise JobNotFound(job_id)
        return job

    def is_admin(self, actor_id: int | None) -> bool:
        """Whether ``actor_id`` is one of the bot's owners."""
        return actor_id is not None and actor_id in (
            getattr(self.settings, "owner_ids", None) or []
        )

    def _check_admin(self, actor_id: int | None, action: str, force: bool) -> None:
        if not force and not self.is_admin(actor_id):
            raise NotAllowed(actor_id or 0, action)

    def pause(self, actor_id: int | None, *, force: bool = False) -> None:
        """Start no new job until :meth:`resume` (running ones finish); kept across a
        restart. Owners only (``force`` for the command line)."""
        self._check_admin(actor_id, "pause", force)
        self.runner.pause()
        self.db.run_sync(self._paused_tx, actor_id or 0, True)

    def resume(self, actor_id: int | None, *, force: bool = False) -> None:
        """Start jobs again after :meth:`pause`. Owners only."""
        self._check_admin(actor_id, "resume", force)
        self.runner.resume()
        self.db.run_sync(self._paused_tx, actor_id or 0, False)

    @staticmethod
    def _paused_tx(session: Session, actor_id: int, paused: bool) -> None:
        db_queue.set_queue_paused(session, paused, actor_id=actor_id)
        db_audit.log_action(session, actor_id, "queue.pause" if paused else "queue.resume")

    def clear(self, actor_id: int | None, *, force: bool = False) -> int:
        """Cancel every waiting job (running ones go on); each user's result post says
        so. Returns how many were cancelled. Owners only."""
        self._check_admin(actor_id, "clear", force)
        cleared = self.runner.clear("the queue was cleared by an owner")
        self.db.run_sync(
            db_audit.log_action,
            actor_id or 0,
            "queue.clear",
            details={"jobs": [int(j.job_id) for j in cleared]},
        )
        return len(cleared)

    @property
    def paused(self) -> bool:
        """Whether the queue is paused."""
        return self.runner.paused

    # Looking --------------------------------------------------------------------------------
    def seconds_per_step(self) -> float | None:
        """Recent seconds per sampling step per job (median of the last 20 jobs)."""
        with self._lock:
            values = sorted(self._timings)
        return values[len(values) // 2] if values else None

    def seconds_per_job(self) -> float | None:
        """Recent measured seconds per job (median of the last 20; a batch's time
        shared by its jobs); None while no job has finished."""
        with self._lock:
            values = list(self._job_seconds)
        return median(values)

    def estimate_wait(self, job_id: str | int | None = None) -> float | None:
        """Seconds until ``job_id`` starts (until a new job would start, if None): the
        jobs ahead of it times the measured seconds per job, over the workers
        (:mod:`bot.services.jobs.estimates`); a waiting job's estimate never grows
        while its place does not. None while no timing is known; 0 while it runs."""
        per_job = self.seconds_per_job()
        if per_job is None:
            return None
        workers = max(1, len(self.runner.workers))
        running = self.runner.running()
        if job_id is None:
            return jobs_ahead(len(self.runner.waiting()) + 1, running) * per_job / workers
        key = str(job_id)
        position = self.runner.position(key)
        if position is None or position == 0:
            self._waits.forget(key)
            return 0.0 if position == 0 else None
        wait = jobs_ahead(position, running) * per_job / workers
        return self._waits.shown(key, position, wait)

    def job_info(self, job_id: int, user_id: int | None = None, *, admin: bool = False) -> JobInfo:
        """One of the user's jobs (any job for ``admin``) with its position and wait."""
        job = self._own_job(job_id, user_id, admin)
        return self._info(job)

    def _info(self, job: Job) -> JobInfo:
        queued = job.status is JobStatus.QUEUED
        position = self.runner.position(str(job.id)) if queued else None
        return job_info(job, position, self.estimate_wait(job.id) if queued else None)

    def queue(self) -> list[JobInfo]:
        """Running jobs, then waiting ones in the order they will run."""
        jobs = {
            j.id: j for j in self.db.read_sync(db_jobs.list_jobs, statuses=db_jobs.ACTIVE_STATUSES)
        }
        running = [self._info(j) for j in jobs.values() if j.status is JobStatus.RUNNING]
        order = [int(s.job_id) for s in self.runner.waiting()]
        waiting = [self._info(jobs[i]) for i in order if i in jobs]
        return running + waiting

    def subscribe(
        self, job_id: int | str | None = None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> Subscription:
        """Events of one job (or all): ``async for event in service.subscribe(id)``; wrap
        in :func:`runner.jobs.throttled` for at most one update per N seconds."""
        return self.runner.bus.subscribe(None if job_id is None else str(job_id), loop=loop)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits or runs and every result is posted (tools, tests)."""
        if not self.runner.wait_idle(timeout):
            return False
        self._post_pool.submit(lambda: None).result(timeout)
        return True


__all__ = ["JobService"]
