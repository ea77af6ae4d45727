"""The durable side of :class:`bot.services.jobs.JobService`: the
:class:`runner.jobs.JobStore` callbacks the runner makes on its worker threads (a job
started, was requeued, finished) and the recovery at start. Every change of a job's
state moves its generation with it (:func:`db.jobs.move_job`)."""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bot.services.history import History, StagedImage, stage_image
from bot.services.storage import write_atomic
from db import generations as db_generations
from db import jobs as db_jobs
from db.engine import Database
from db.errors import NotFound
from db.models import Generation, Job, JobStatus
from runner.errors import JobCancelled
from runner.jobs import JobOutcome, JobSpec, make_job
from runner.jobs.backend_driver import UNREACHABLE

log = logging.getLogger("bot.services.jobs")

STAGING_FOLDER = "output/.incoming"
"""Where images that arrived as bytes (from Ray workers) wait to be recorded."""


def _generation(session: Session, generation_id: int | None) -> Generation | None:
    if generation_id is None:
        return None
    try:
        return db_generations.get_generation(session, generation_id, user_id=0, admin=True)
    except NotFound:
        return None


class DurableJobs:
    """The store half of :class:`bot.services.jobs.JobService` (a mixin: it uses the
    service's ``db``, ``settings``, ``history`` and timings, and schedules posts)."""

    db: Database
    settings: Any
    history: History
    _timings: collections.deque[float]
    _job_seconds: collections.deque[float]
    _lock: threading.Lock

    _schedule_post: Callable[[int], None]  # ResultPosting's

    # Recovery -----------------------------------------------------------------------------
    def _recover_tx(self, session: Session) -> tuple[list[int], list[JobSpec], list[int]]:
        requeued = []
        for job in db_jobs.list_jobs(session, statuses=[JobStatus.RUNNING]):
            # The process died while the job ran: perhaps because of it (a plugin that
            # exits, memory). Past the cap it fails instead of crash-looping the bot.
            refusal = self._refusal(job, "the bot stopped while it ran")
            if refusal is not None:
                log.warning("job %s is not run again: %s", job.id, refusal)
                db_jobs.move_job(session, job.id, JobStatus.FAILED, error=refusal)
                continue
            db_jobs.move_job(session, job.id, JobStatus.QUEUED)
            requeued.append(job.id)
        waiting = sorted(
            db_jobs.list_jobs(session, statuses=[JobStatus.QUEUED]),
            key=lambda j: (j.created_at, j.id),
        )
        specs = [self._spec(session, job) for job in waiting]
        unposted = db_jobs.unposted_job_ids(session)
        return requeued, [s for s in specs if s is not None], unposted

    def _spec(self, session: Session, job: Job) -> JobSpec | None:
        generation = _generation(session, job.generation_id)
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
        recent = self.db.read_sync(db_jobs.recent_done_jobs, self._timings.maxlen or 20)
        for job in reversed(recent):
            steps = int(((job.request or {}).get("request") or {}).get("steps") or 0)
            seconds = (job.finished_at - job.started_at).total_seconds()
            if steps > 0 and seconds >= 0:
                with self._lock:
                    self._timings.append(seconds / steps)
                    self._job_seconds.append(seconds)

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
        db_jobs.move_job(session, job_id, JobStatus.RUNNING, worker=worker)
        return True

    def job_requeued(self, job: JobSpec, reason: str) -> str | None:
        """The job's worker was lost: it waits again (its next start is another
        attempt), unless it has started ``max_job_attempts`` times already: then the
        sentence saying so is returned and the runner ends it as failed."""
        return self.db.run_sync(self._requeued_tx, int(job.job_id), reason)

    def _requeued_tx(self, session: Session, job_id: int, reason: str) -> str | None:
        job = db_jobs.get_job(session, job_id)
        if job.status.finished:
            return None
        if UNREACHABLE in reason:
            # The whole cluster went away: not this job's doing, so not one of its attempts.
            job.attempts = max(0, job.attempts - 1)
        else:
            refusal = self._refusal(job, reason)
            if refusal is not None:
                return refusal
        db_jobs.move_job(session, job_id, JobStatus.QUEUED, error=reason)
        return None

    def _refusal(self, job: Job, reason: str) -> str | None:
        """Why ``job`` must not start again after its worker was lost (``reason``), or
        None while it has attempts left."""
        limit = int(getattr(self.settings, "max_job_attempts", 3) or 3)
        if job.attempts < limit:
            return None
        times = "once" if job.attempts == 1 else f"{job.attempts} times"
        return (
            f"it was started {times} and each time its worker stopped before it finished "
            f"(the last time: {reason.rstrip('.')}), so it is not tried again"
        )

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
                self._job_seconds.append(outcome.seconds / max(1, outcome.batch_size))
        self._schedule_post(int(job.job_id))

    def _stage(self, image: Any) -> StagedImage:
        path = Path(image.path) if image.path else None
        if path is None or not path.is_file():
            path = self.settings.data_dir / STAGING_FOLDER / f"{uuid.uuid4().hex}.png"
            write_atomic(path, image.data)
        return stage_image(path)

    def _finished_tx(
        self, session: Session, job_id: int, outcome: JobOutcome, staged: list[StagedImage]
    ) -> bool:
        job = db_jobs.get_job(session, job_id)
        if job.status.finished:
            return False
        status = JobStatus(outcome.status)
        worker = outcome.worker or None
        generation = _generation(session, job.generation_id)
        if generation is None or generation.status.finished:
            db_jobs.set_job_status(session, job_id, status, error=outcome.error, worker=worker)
        elif status is JobStatus.CANCELLED and job.status is JobStatus.QUEUED:
            # Never ran: nothing to record but the end, for both.
            db_jobs.move_job(session, job_id, status, error=outcome.error, worker=worker)
        else:
            error: BaseException | None = None
            if status is JobStatus.CANCELLED:
                error = JobCancelled(outcome.error or "cancelled")
            elif status is JobStatus.FAILED:
                error = RuntimeError(outcome.error or "failed")
            self.history.record_in_session(session, generation.id, staged, outcome.seconds, error)
            db_jobs.set_job_status(session, job_id, status, error=outcome.error, worker=worker)
        return True


__all__ = ["STAGING_FOLDER", "DurableJobs"]
