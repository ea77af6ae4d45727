"""Posting results: after a job's result is stored, the ``poster`` is called once (on
one posting thread), then the job is marked posted.

Posting happens after the result is stored and before it is marked posted: a crash
between the two posts it again at the next start. Give the poster the job id as the
message's nonce (Discord's ``enforce_nonce``) to make that repeat harmless.
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
from bot.services.jobs.values import JobResult, Poster
from db import generations as db_generations
from db import jobs as db_jobs
from db.engine import Database
from db.models import JobStatus

log = logging.getLogger("bot.services.jobs")


class ResultPosting:
    """The posting half of :class:`bot.services.jobs.JobService` (a mixin: it uses the
    service's ``db``, ``history``, ``poster`` and ``loop``)."""

    db: Database
    history: History
    poster: Poster | None
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
