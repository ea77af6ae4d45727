"""The durable job service: every generation is a job in the database before anyone is
told it exists, runs when its fair turn comes, survives a restart, and has its result
posted once.

The life of a job::

    service = JobService.create(db, settings, env, poster=post_result)
    service.start()                         # recovery: requeue, post what was not posted
    sub = service.submit(user_id, request, channel_id=...)   # stored, then queued
    # from the event loop: await asyncio.to_thread(service.submit, user_id, request, ...)
    async for event in throttled(service.subscribe(sub.job_id), 2.0): ...
    ...
    service.stop()

Scheduling, batching and the workers (local threads or Ray actors) are the runner's
(:mod:`runner.jobs`); this module is the :class:`runner.jobs.JobStore` that keeps them
durable. Results are recorded through :class:`bot.services.history.History` (images by
content hash) in the same unit of work that marks the job done, then posted by the
``poster`` callback, and marked posted (:func:`db.jobs.mark_job_posted`).

Posting happens after the result is stored and before it is marked posted: a crash
between the two posts it again at the next start. Give the poster the job id as the
message's nonce (Discord's ``enforce_nonce``) to make that repeat harmless.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.services.errors import ServiceError
from bot.services.history import History
from bot.services.storage import sha256_file, write_atomic
from db import audit as db_audit
from db import generations as db_generations
from db import jobs as db_jobs
from db.engine import Database
from db.errors import NotFound
from db.models import Generation, Job, JobStatus
from runner.errors import JobCancelled
from runner.jobs import (
    CANCELLED,
    EventBus,
    FairQueue,
    JobOutcome,
    JobRunner,
    JobSpec,
    Subscription,
    UnknownJob,
    make_job,
)
from runner.templates import GenerationRequest

log = logging.getLogger(__name__)

PAUSE_ACTIONS = ("queue.pause", "queue.resume")
STAGING_FOLDER = "output/.incoming"
"""Where images that arrived as bytes (from Ray workers) wait to be recorded."""


# Errors -----------------------------------------------------------------------------------
class JobServiceError(ServiceError):
    """Base class of the job service's errors; ``str(exc)`` is a sentence for the user."""


class QueueFull(JobServiceError):
    """The user already has as many jobs waiting as allowed."""

    def __init__(self, user_id: int, waiting: int, limit: int):
        self.user_id = user_id
        self.waiting = waiting
        self.limit = limit
        super().__init__(
            f"You already have {waiting} job{'s' if waiting != 1 else ''} waiting or running, "
            f"and the limit is {limit}. Please wait for one to finish (or cancel one) and try again."
        )


class JobNotFound(JobServiceError):
    """No such job, or not one of the caller's (which is reported the same way)."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"There is no job {job_id} of yours.")


class JobAlreadyFinished(JobServiceError):
    """The job ended already, so it cannot be cancelled."""

    def __init__(self, job_id: int, status: str):
        self.job_id = job_id
        self.status = status
        super().__init__(f"Job {job_id} is already {status}.")


class NotAllowed(JobServiceError):
    """Only the bot's owners may pause, resume or clear the queue."""

    def __init__(self, actor_id: int, action: str):
        self.actor_id = actor_id
        self.action = action
        super().__init__(f"Only the bot's owners may {action} the queue.")


# Values handed out -------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    """A stored, queued job: its id, its 1-based place in the running order and an
    estimate of the wait in seconds (None until timings are known)."""

    job_id: int
    generation_id: int
    position: int
    seed: int | None
    estimated_wait_s: float | None


@dataclass(frozen=True)
class JobResult:
    """What the poster gets: how a job ended and where its images are."""

    job_id: int
    user_id: int
    generation_id: int | None
    status: str
    images: list[Path] = field(default_factory=list)
    error: str | None = None
    channel_id: int | None = None
    guild_id: int | None = None
    seed: int | None = None
    prompt: str = ""

    @property
    def nonce(self) -> str:
        """A stable nonce for the post (Discord's ``enforce_nonce`` drops a repeat)."""
        return f"easel-job-{self.job_id}"


@dataclass(frozen=True)
class JobInfo:
    """One job as the queue shows it."""

    job_id: int
    user_id: int
    status: str
    position: int | None
    prompt: str = ""
    steps: int = 0
    priority: int = 0
    attempts: int = 0
    worker: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    estimated_wait_s: float | None = None


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`JobService.start` found from the previous run."""

    requeued: list[int]
    """Jobs that were running when the process stopped, queued again."""
    resumed: list[int]
    """Jobs queued again (all that wait, including the requeued ones), in order."""
    reposted: list[int]
    """Finished jobs whose result had not been posted, posted now."""
    paused: bool


Poster = Callable[[JobResult], "int | None | Awaitable[int | None]"]


@dataclass
class _Staged:
    path: Path
    sha256: str
    width: int
    height: int
    size_bytes: int


# The service ------------------------------------------------------------------------------
class JobService:
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
    ):
        self.db = db
        self.settings = settings
        self.runner = runner
        self.runner.store = self
        self.history = history
        self.poster = poster
        self.loop = loop
        self.backend = backend
        self._timings: collections.deque[float] = collections.deque(maxlen=20)
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
            from runner.jobs.ray_backend import RayBackend

            backend = RayBackend(
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
        paused = self.db.read_sync(_paused_in_audit)
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

    def _recover_tx(self, session: Session) -> tuple[list[int], list[JobSpec], list[int]]:
        requeued = []
        for job in db_jobs.list_jobs(session, statuses=[JobStatus.RUNNING]):
            db_jobs.set_job_status(session, job.id, JobStatus.QUEUED)
            if job.generation_id is not None:
                db_generations.set_generation_status(session, job.generation_id, JobStatus.QUEUED)
            requeued.append(job.id)
        waiting = sorted(
            db_jobs.list_jobs(session, statuses=[JobStatus.QUEUED]),
            key=lambda j: (j.created_at, j.id),
        )
        specs = [self._spec(session, job) for job in waiting]
        unposted = list(
            session.scalars(
                select(Job.id)
                .where(Job.status.in_([JobStatus.DONE, JobStatus.FAILED]), Job.posted.is_(False))
                .order_by(Job.id)
            )
        )
        return requeued, [s for s in specs if s is not None], unposted

    def _spec(self, session: Session, job: Job) -> JobSpec | None:
        generation = (
            session.get(Generation, job.generation_id) if job.generation_id is not None else None
        )
        if generation is None or not generation.workflow:
            db_jobs.set_job_status(
                session, job.id, JobStatus.FAILED, error="its generation record is missing"
            )
            return None
        return make_job(
            str(job.id),
            generation.workflow,
            user_id=job.user_id,
            priority=job.priority,
            previews=bool((job.request or {}).get("previews")),
            meta={"generation_id": generation.id},
        )

    def _load_timings(self) -> None:
        """Seed the step timings from the last jobs of the previous run."""

        def recent(session: Session) -> list[Job]:
            return list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.status == JobStatus.DONE,
                        Job.started_at.is_not(None),
                        Job.finished_at.is_not(None),
                    )
                    .order_by(Job.finished_at.desc())
                    .limit(self._timings.maxlen or 20)
                )
            )

        for job in reversed(self.db.read_sync(recent)):
            steps = int(((job.request or {}).get("request") or {}).get("steps") or 0)
            seconds = (job.finished_at - job.started_at).total_seconds()
            if steps > 0 and seconds >= 0:
                with self._lock:
                    self._timings.append(seconds / steps)

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
        prepared = self.history.prepare_in_session(session, user_id, request, family=family, **prepare)
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
        self.db.run_sync(db_audit.log_action, actor_id or 0, "queue.pause")

    def resume(self, actor_id: int | None, *, force: bool = False) -> None:
        """Start jobs again after :meth:`pause`. Owners only."""
        self._check_admin(actor_id, "resume", force)
        self.runner.resume()
        self.db.run_sync(db_audit.log_action, actor_id or 0, "queue.resume")

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

    def estimate_wait(self, job_id: str | int | None = None) -> float | None:
        """Seconds until ``job_id`` starts (until a new job would start, if None), from
        the steps ahead of it and recent step timings; None while no timing is known."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        workers = max(1, len(self.runner.workers))
        steps = self.runner.steps_ahead(None if job_id is None else str(job_id))
        return steps * per_step / workers

    def job_info(self, job_id: int, user_id: int | None = None, *, admin: bool = False) -> JobInfo:
        """One of the user's jobs (any job for ``admin``) with its position and wait."""
        job = self._own_job(job_id, user_id, admin)
        return self._info(job)

    def _info(self, job: Job) -> JobInfo:
        position = self.runner.position(str(job.id)) if job.status is JobStatus.QUEUED else None
        wait = self.estimate_wait(job.id) if job.status is JobStatus.QUEUED else None
        request = (job.request or {}).get("request") or {}
        return JobInfo(
            job.id,
            job.user_id,
            job.status.value,
            position,
            request.get("prompt", ""),
            int(request.get("steps") or 0),
            job.priority,
            job.attempts,
            job.worker,
            job.created_at,
            job.started_at,
            wait,
        )

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

    def flush_posts(self, timeout: float | None = None) -> bool:
        """Block until every result handed to the poster so far is posted and marked
        posted (False on timeout); e.g. before telling someone their result is up."""
        try:
            self._post_pool.submit(lambda: None).result(timeout)
        except RuntimeError:  # stopped: nothing more is posted in this run
            return True
        except TimeoutError:
            return False
        return True

    # JobStore: called by the runner on worker threads ------------------------------------------
    def job_started(self, job: JobSpec, worker: str) -> bool:
        """Mark the job running (an attempt), unless it is no longer queued."""
        return self.db.run_sync(self._started_tx, int(job.job_id), worker)

    def _started_tx(self, session: Session, job_id: int, worker: str) -> bool:
        try:
            job = db_jobs.get_job(session, job_id)
        except NotFound:
            return False
        if job.status is not JobStatus.QUEUED:
            return False
        db_jobs.set_job_status(session, job_id, JobStatus.RUNNING, worker=worker)
        if job.generation_id is not None:
            db_generations.set_generation_status(session, job.generation_id, JobStatus.RUNNING)
        return True

    def job_requeued(self, job: JobSpec, reason: str) -> None:
        """The job's worker was lost: it waits again (its next start is another attempt)."""
        self.db.run_sync(self._requeued_tx, int(job.job_id), reason)

    def _requeued_tx(self, session: Session, job_id: int, reason: str) -> None:
        job = db_jobs.get_job(session, job_id)
        if job.status.finished:
            return
        db_jobs.set_job_status(session, job_id, JobStatus.QUEUED, error=reason)
        if job.generation_id is not None:
            db_generations.set_generation_status(session, job.generation_id, JobStatus.QUEUED)

    def job_finished(self, job: JobSpec, outcome: JobOutcome) -> None:
        """Record the outcome (images by content hash, statuses) once, then post it."""
        staged = [self._stage(image) for image in outcome.images] if outcome.ok else []
        try:
            recorded = self.db.run_sync(self._finished_tx, int(job.job_id), outcome, staged)
        except Exception:
            for item in staged:
                if STAGING_FOLDER in item.path.as_posix():
                    item.path.unlink(missing_ok=True)
            raise
        if not recorded:
            log.warning(
                "job %s finished again (%s) after it was recorded; ignored",
                job.job_id,
                outcome.status,
            )
            return
        if outcome.ok and job.steps:
            with self._lock:
                self._timings.append(outcome.seconds / max(1, outcome.batch_size) / job.steps)
        self._schedule_post(int(job.job_id))

    def _stage(self, image: Any) -> _Staged:
        from PIL import Image

        path = Path(image.path) if image.path else None
        if path is None or not path.is_file():
            path = self.settings.data_dir / STAGING_FOLDER / f"{uuid.uuid4().hex}.png"
            write_atomic(path, image.data)
        with Image.open(path) as pil:
            width, height = pil.size
        return _Staged(path, sha256_file(path), width, height, path.stat().st_size)

    def _finished_tx(
        self, session: Session, job_id: int, outcome: JobOutcome, staged: list[_Staged]
    ) -> bool:
        job = db_jobs.get_job(session, job_id)
        if job.status.finished:
            return False
        status = JobStatus(outcome.status)
        if job.generation_id is not None:
            generation = session.get(Generation, job.generation_id)
            if generation is not None and not generation.status.finished:
                if status is JobStatus.CANCELLED and job.status is JobStatus.QUEUED:
                    db_generations.set_generation_status(
                        session, job.generation_id, status, error=outcome.error
                    )
                else:
                    error = None
                    if status is JobStatus.CANCELLED:
                        error = JobCancelled(outcome.error or "cancelled")
                    elif status is JobStatus.FAILED:
                        error = RuntimeError(outcome.error or "failed")
                    self.history.record_in_session(
                        session, job.generation_id, staged, outcome.seconds, error
                    )
        db_jobs.set_job_status(
            session, job_id, status, error=outcome.error, worker=outcome.worker or None
        )
        return True

    # Posting ------------------------------------------------------------------------------
    def _schedule_post(self, job_id: int) -> None:
        if self.poster is None:
            return
        with self._lock:
            if job_id in self._pending_posts:
                return
            self._pending_posts.add(job_id)
        try:
            self._post_pool.submit(self._post, job_id)
        except RuntimeError:  # shutting down: posted at the next start
            with self._lock:
                self._pending_posts.discard(job_id)

    def _post(self, job_id: int) -> None:
        try:
            result = self.db.read_sync(self._result_tx, job_id)
            if result is None:
                return
            message_id = self.poster(result)
            if inspect.isawaitable(message_id):
                if self.loop is None:
                    raise RuntimeError(
                        "an async poster needs the service's event loop (start(loop=...))"
                    )
                message_id = asyncio.run_coroutine_threadsafe(
                    _await(message_id), self.loop
                ).result()
            first = self.db.run_sync(db_jobs.mark_job_posted, job_id, message_id)  # type: ignore[arg-type]
            if not first:
                log.warning("job %s was posted twice", job_id)
            if message_id and result.generation_id is not None:
                self.history.set_message(
                    result.generation_id, message_id=int(message_id), channel_id=result.channel_id
                )
        except Exception:
            log.exception(
                "posting the result of job %s failed; it is posted again at the next start", job_id
            )
        finally:
            with self._lock:
                self._pending_posts.discard(job_id)

    def _result_tx(self, session: Session, job_id: int) -> JobResult | None:
        job = db_jobs.get_job(session, job_id)
        if job.posted or not job.status.finished:
            return None
        generation = None
        if job.generation_id is not None:
            generation = db_generations.get_generation(
                session, job.generation_id, user_id=0, admin=True
            )
        images = (
            self.history.output_paths(generation)
            if generation is not None and job.status is JobStatus.DONE
            else []
        )
        return JobResult(
            job_id=job.id,
            user_id=job.user_id,
            generation_id=job.generation_id,
            status=job.status.value,
            images=images,
            error=job.error,
            channel_id=generation.channel_id if generation else None,
            guild_id=generation.guild_id if generation else None,
            seed=generation.seed if generation else None,
            prompt=generation.prompt if generation else "",
        )


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _paused_in_audit(session: Session) -> bool:
    entries = [db_audit.list_audit(session, action=action, limit=1) for action in PAUSE_ACTIONS]
    pause, resume = (e[0] if e else None for e in entries)
    if pause is None:
        return False
    return resume is None or (pause.created_at, pause.id) > (resume.created_at, resume.id)


def queue_from_database(db: Database) -> list[JobInfo]:
    """What runs and waits, read from the database alone (``easel queue``): running jobs,
    then waiting ones in the fair order the scheduler would use."""
    jobs = db.read_sync(db_jobs.list_jobs, statuses=db_jobs.ACTIVE_STATUSES)
    running = [j for j in jobs if j.status is JobStatus.RUNNING]
    waiting = sorted(
        (j for j in jobs if j.status is JobStatus.QUEUED), key=lambda j: (j.created_at, j.id)
    )
    fair = FairQueue()  # running jobs had their turn: their users wait a round for the next
    for job in sorted(running, key=lambda j: (j.started_at or j.created_at, j.id)):
        fair.put(JobSpec(str(job.id), {}, user_id=job.user_id, priority=job.priority))
    while fair.take() is not None:
        pass
    for job in waiting:
        fair.put(JobSpec(str(job.id), {}, user_id=job.user_id, priority=job.priority))
    by_id = {j.id: j for j in waiting}
    ordered = [by_id[int(s.job_id)] for s in fair.jobs()]
    out = []
    for position, job in [(None, j) for j in running] + list(enumerate(ordered, start=1)):
        request = (job.request or {}).get("request") or {}
        out.append(
            JobInfo(
                job.id,
                job.user_id,
                job.status.value,
                position,
                request.get("prompt", ""),
                int(request.get("steps") or 0),
                job.priority,
                job.attempts,
                job.worker,
                job.created_at,
                job.started_at,
            )
        )
    return out


__all__ = [
    "JobAlreadyFinished",
    "JobInfo",
    "JobNotFound",
    "JobResult",
    "JobService",
    "JobServiceError",
    "NotAllowed",
    "Poster",
    "QueueFull",
    "RecoveryReport",
    "Submission",
    "queue_from_database",
]
