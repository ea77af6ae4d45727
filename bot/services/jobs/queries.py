"""What runs and waits, read from the database alone (``easel queue``, without a running
service)."""

from __future__ import annotations

from bot.services.jobs.values import JobInfo, job_info
from db import jobs as db_jobs
from db.engine import Database
from db.models import JobStatus
from runner.jobs import FairQueue, JobSpec


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
    return [job_info(j, None) for j in running] + [
        job_info(j, position) for position, j in enumerate(ordered, start=1)
    ]


__all__ = ["queue_from_database"]
