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
(:mod:`runner.jobs`); this package is the :class:`runner.jobs.JobStore` that keeps them
durable. Results are recorded through :class:`bot.services.history.History` (images by
content hash) in the same unit of work that marks the job done, then posted by the
``poster`` callback, and marked posted (:func:`db.jobs.mark_job_posted`).

Posting happens after the result is stored and before it is marked posted. "Posting
started" is committed before the send: after a crash between the send and the mark, the
next start hands the poster the result with ``maybe_posted`` set, and the poster looks
for the message it may have sent (the bot's reads the channel) and adopts it instead of
sending again, however long the bot was down. The nonce (``easel-job-<id>``, Discord's
``enforce_nonce``) only covers the minutes Discord remembers it.

A job whose worker (or the whole process) dies while it runs waits again, at most
``max_job_attempts`` starts in all: then it fails with a sentence saying why, and its
user is told like for any failure.

The package, by seam: :mod:`.service` (the service), :mod:`.store` (the runner's
durable store callbacks and recovery), :mod:`.posting` (posting results),
:mod:`.queries` (the queue from the database alone), :mod:`.values` and :mod:`.errors`.
Import from here: ``from bot.services.jobs import JobService, QueueFull, ...``.
"""

from __future__ import annotations

from bot.services.jobs.errors import (
    JobAlreadyFinished,
    JobNotFound,
    JobServiceError,
    NotAllowed,
    QueueFull,
)
from bot.services.jobs.queries import queue_from_database
from bot.services.jobs.service import JobService
from bot.services.jobs.store import STAGING_FOLDER
from bot.services.jobs.values import JobInfo, JobResult, Poster, RecoveryReport, Submission

__all__ = [
    "STAGING_FOLDER",
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
