"""Posting results: after a job's result is stored, the ``poster`` is called once (on
one posting thread), then the job is marked posted.

Before the poster is called, the job records (committed) that posting started; a crash
between the send and marking it posted leaves that mark, and the next try hands the
poster a result with :attr:`~bot.services.jobs.JobResult.maybe_posted` set: the poster
looks for the message it may have sent (in the channel, by the job's marker) and adopts
it instead of sending again. That holds however long the bot was down; the message's
nonce (Discord's ``enforce_nonce``) only covers the few minutes Discord remembers it.

Jobs that a restart queued again and whose private status (an interaction token while
valid, or a reply message) is known are handed to ``status_notifier`` so the status
stops saying "Queued" from the last run; when their result is posted, the poster edits
that status to say where it went.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session

from bot.services.history import History
from bot.services.jobs.values import JobResult, Poster, StatusNotifier
from db import generations as db_generations
from db import jobs as db_jobs
from db.base import utcnow
from db.engine import Database
from db.models import JobStatus

log = logging.getLogger("bot.services.jobs")


class ResultPosting:
    """The posting half of :class:`bot.services.jobs.JobService` (a mixin: it uses the
    service's ``db``, ``history``, ``poster`` and ``loop``)."""

    db: Database
    history: History
    poster: Poster | None
    status_notifier: StatusNotifier | None
    loop: asyncio.AbstractEventLoop | None
    _post_pool: ThreadPoolExecutor
    _pending_posts: set[int]
    _lock: threading.Lock

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
            # Read and mark "posting started" in one committed unit of work, before the
            # send: after a crash the next try knows to look for the message first.
            result = self.db.run_sync(self._result_tx, job_id)
            if result is None:
                return
            message_id = self._call(self.poster, result)
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

    def _call(self, callback: Any, result: JobResult) -> Any:
        value = callback(result)
        if inspect.isawaitable(value):
            if self.loop is None:
                raise RuntimeError(
                    "an async poster needs the service's event loop (start(loop=...))"
                )
            value = asyncio.run_coroutine_threadsafe(_await(value), self.loop).result()
        return value

    def _schedule_status_notes(self, job_ids: list[int]) -> None:
        """Tell the statuses left from the last run that these jobs are queued again."""
        if self.status_notifier is None or not job_ids:
            return
        try:
            self._post_pool.submit(self._notify, list(job_ids))
        except RuntimeError:  # shutting down
            pass

    def _notify(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            try:
                note = self.db.read_sync(self._note_tx, job_id)
                if note is not None:
                    self._call(self.status_notifier, note)
            except Exception:
                log.exception("could not update the status of job %s after the restart", job_id)

    def _note_tx(self, session: Session, job_id: int) -> JobResult | None:
        job = db_jobs.get_job(session, job_id)
        if job.status.finished:
            return None
        token = _valid_token(job)
        if token is None and job.status_message_id is None:
            return None
        return JobResult(
            job_id=job.id,
            user_id=job.user_id,
            generation_id=job.generation_id,
            status=job.status.value,
            error=job.error,
            status_token=token,
            status_channel_id=job.status_channel_id,
            status_message_id=job.status_message_id,
        )

    def _result_tx(self, session: Session, job_id: int) -> JobResult | None:
        job = db_jobs.get_job(session, job_id)
        if job.posted or not job.status.finished:
            return None
        post_started_at = job.post_started_at
        db_jobs.mark_post_started(session, job_id)
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
            post_started_at=post_started_at,
            status_token=_valid_token(job),
            status_channel_id=job.status_channel_id,
            status_message_id=job.status_message_id,
        )


def _valid_token(job: Any) -> str | None:
    """The job's stored interaction token while it is still valid."""
    if not job.status_token or job.status_expires_at is None:
        return None
    return job.status_token if utcnow() < job.status_expires_at else None


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
