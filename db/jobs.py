"""Durable job records. The scheduler decides order and fairness; this module only
stores what it decides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.errors import InvalidValue, NotFound
from db.generations import set_generation_status
from db.models import Generation, Job, JobStatus
from db.status import advance, parse_status
from db.users import get_or_create_user

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def create_job(
    session: Session,
    user_id: int,
    *,
    request: Mapping[str, Any],
    generation_id: int | None = None,
    priority: int = 0,
) -> Job:
    """A new queued job for ``user_id`` (created if new) with its request as JSON."""
    if not isinstance(request, Mapping):
        raise InvalidValue("request", request, "expected a JSON object")
    get_or_create_user(session, user_id)
    if generation_id is not None and session.get(Generation, generation_id) is None:
        raise NotFound("generation", generation_id)
    now = utcnow()
    job = Job(
        user_id=user_id,
        request=dict(request),
        generation_id=generation_id,
        priority=priority,
        status=JobStatus.QUEUED,
        created_at=now,
        queued_at=now,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    """The job with this id; raises :class:`NotFound`."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


def set_job_status(
    session: Session,
    job_id: int,
    status: JobStatus | str,
    *,
    error: str | None = None,
    worker: str | None = None,
    at: datetime | None = None,
) -> Job:
    """Move a job to ``status``.

    ``running`` counts an attempt and stamps ``started_at`` (and ``worker``);
    ``queued`` (e.g. requeued after a restart) stamps ``queued_at``; done, failed and
    cancelled stamp ``finished_at``. A finished job cannot change again:
    :class:`InvalidTransition`.
    """
    job = get_job(session, job_id)
    status, at = advance("job", job_id, job.status, status, at)
    if status is JobStatus.RUNNING and job.status is not JobStatus.RUNNING:
        job.attempts += 1
        job.started_at = at
    elif status is JobStatus.QUEUED and job.status is not JobStatus.QUEUED:
        job.queued_at = at
    elif status.finished and job.finished_at is None:
        job.finished_at = at
    job.status = status
    if worker is not None:
        job.worker = worker
    if error is not None:
        job.error = error
    elif status is JobStatus.DONE:
        job.error = None  # a lost worker's reason from an earlier attempt is no longer true
    job.updated_at = at
    session.flush()
    return job


def move_job(
    session: Session,
    job_id: int,
    status: JobStatus | str,
    *,
    error: str | None = None,
    worker: str | None = None,
    at: datetime | None = None,
) -> Job:
    """Move a job to ``status`` and its generation (if it has one) with it, in one
    step: the two never disagree about whether the work waits, runs or ended.

    The ``error`` goes on the generation too when the job ends (a requeue's reason is
    the job's alone). (A finished generation's outputs
    are recorded by :meth:`bot.services.history.History.record_in_session`, which moves
    the generation itself; the job follows with :func:`set_job_status`.)
    """
    status = parse_status(status)
    at = at or utcnow()
    job = set_job_status(session, job_id, status, error=error, worker=worker, at=at)
    if job.generation_id is not None:
        ended = error if status.finished else None
        set_generation_status(session, job.generation_id, status, error=ended, at=at)
    return job


def mark_job_posted(session: Session, job_id: int, message_id: int) -> bool:
    """Record that a job's result was posted as ``message_id``.

    Returns True the first time and False if it was already posted, so that a result
    is posted once even when several workers (or a restart) race to post it.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.posted.is_(False))
        .values(posted=True, posted_message_id=message_id, updated_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    get_job(session, job_id)  # NotFound for a missing job
    return False


def mark_post_started(session: Session, job_id: int, at: datetime | None = None) -> Job:
    """Record that posting the job's result starts now (committed before the send): a
    restart then knows the message may exist and looks for it before sending again.
    The first time is kept."""
    job = get_job(session, job_id)
    if job.post_started_at is None:
        job.post_started_at = at or utcnow()
        session.flush()
    return job


def remember_status(
    session: Session,
    job_id: int,
    *,
    token: str | None = None,
    expires_at: datetime | None = None,
    channel_id: int | None = None,
    message_id: int | None = None,
) -> Job:
    """Where the job's private status shows: an interaction token (valid until
    ``expires_at``) or a reply message (``channel_id``, ``message_id``), so that after a
    restart the status can say where the job went."""
    job = get_job(session, job_id)
    job.status_token = token
    job.status_expires_at = expires_at
    job.status_channel_id = channel_id
    job.status_message_id = message_id
    session.flush()
    return job


def list_jobs(
    session: Session,
    *,
    statuses: Iterable[JobStatus | str] | None = None,
    user_id: int | None = None,
    limit: int | None = None,
) -> list[Job]:
    """Jobs filtered by status and/or user, highest priority first, then oldest
    first. ``list_jobs(s, statuses=ACTIVE_STATUSES)`` finds what to resume after a
    restart."""
    stmt = select(Job)
    if statuses is not None:
        stmt = stmt.where(Job.status.in_([parse_status(s) for s in statuses]))
    if user_id is not None:
        stmt = stmt.where(Job.user_id == user_id)
    stmt = stmt.order_by(Job.priority.desc(), Job.created_at, Job.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def count_active_jobs(session: Session, user_id: int) -> int:
    """How many of the user's jobs are queued or running (for the per-user cap)."""
    return (
        session.scalar(
            select(func.count()).where(Job.user_id == user_id, Job.status.in_(ACTIVE_STATUSES))
        )
        or 0
    )


def unposted_job_ids(session: Session) -> list[int]:
    """Ids of the finished (done or failed) jobs whose result was never posted, oldest
    first: posted at the next start."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status.in_([JobStatus.DONE, JobStatus.FAILED]), Job.posted.is_(False))
            .order_by(Job.id)
        )
    )


def recent_done_jobs(session: Session, limit: int = 20) -> list[Job]:
    """The last ``limit`` jobs that ran to the end (with start and finish times), newest
    first: the step timings of the previous run."""
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.status == JobStatus.DONE,
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .order_by(Job.finished_at.desc())
            .limit(limit)
        )
    )
