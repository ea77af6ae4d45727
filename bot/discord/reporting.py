"""From a submission to a posted result, through the durable job service: queue
position and estimated wait, throttled progress, the result message with its buttons,
and one sentence when anything fails.

Two paths meet here:

- :meth:`Reporter.run` follows a job this process submitted: it subscribes to the job
  service's events *before* submitting (so no event is missed), edits a :class:`Status`
  (the deferred interaction response, or a reply message for reply-to-image) at most
  once per ``progress_interval_s`` (:func:`runner.jobs.throttled`), and closes it with a
  link to the result, or one sentence.
- :meth:`Reporter.post_result` is the job service's *poster*: called once per finished
  job, in this run or after a restart (a job that was queued or running when the process
  died), it posts the result as a channel message that mentions the user, with Discord's
  ``enforce_nonce`` set to the job's nonce, and returns the message id; the job service
  then marks the job posted. After a crash between posting and marking, the job service
  says the result may have been posted (``maybe_posted``): the channel's messages since
  then are read and the bot's message of that job (its buttons carry the generation id;
  a notice names the job) is adopted instead of sending a second, however long the bot
  was down (Discord remembers a nonce only minutes).
- Where a job's private status shows (an interaction token, valid 15 minutes, or a
  reply message) is stored with the job; after a restart that status says the job is
  queued again (:meth:`Reporter.resumed`, the job service's status notifier) and, once
  the result is posted, links it or says how it failed.

Results are channel messages, so jobs longer than an interaction token's 15 minutes
still land.

This module holds the :class:`Reporter` and the filter of one job's events
(:func:`job_events`); the status messages and their texts are in
:mod:`bot.discord.status`, sending a result in :mod:`bot.discord.posting`, and finding
what an earlier run posted or left in :mod:`bot.discord.recovery`. Their public names
stay importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.discord import posting, recovery, render
from bot.discord.errors import friendly
from bot.discord.recovery import LOOK_BACK, LOOK_LIMIT, is_post_of
from bot.discord.status import (
    TOKEN_LIFETIME,
    InteractionStatus,
    MessageStatus,
    Status,
    ended_text,
    failure_sentence,
    notice_name,
    preview_file,
)
from bot.services.generation import Destination, Submission, Ticket
from bot.services.jobs import JobResult
from runner import events as ev
from runner.jobs import Subscription, throttled
from runner.jobs.backend_driver import UNREACHABLE

__all__ = [
    "LOOK_BACK",
    "LOOK_LIMIT",
    "OTHER_JOB_MOVES",
    "SHOWN",
    "TOKEN_LIFETIME",
    "InteractionStatus",
    "Live",
    "MessageStatus",
    "Reporter",
    "Status",
    "ended_text",
    "failure_sentence",
    "is_post_of",
    "job_events",
    "notice_name",
]

log = logging.getLogger(__name__)


OTHER_JOB_MOVES = frozenset({"queued", "started", "job_ended", "job_requeued"})
"""Events of other jobs after which a waiting job's place may have changed."""
SHOWN = frozenset(
    {
        "queued",
        "job_requeued",
        "started",
        "progress",
        "finished",
        "failed",
        "cancelled",
        "job_ended",
    }
)
"""A job's events that a status shows (node events are left out before throttling, so
they never take a progress update's turn)."""


async def job_events(
    subscription: AsyncIterator[ev.Event],
    job_id: int | str,
    position: Any = None,
) -> AsyncIterator[ev.Event]:
    """One job's events that a status shows (:data:`SHOWN`) out of a subscription to
    every job's, until its :class:`~runner.jobs.JobEnded`. While it waits, other jobs
    starting, ending or arriving may move it: ``position(job_id)`` is asked then, and a
    new place is yielded as a :class:`~runner.events.Queued` event."""
    job_id = str(job_id)
    last: int | None = None
    waiting = True
    async for event in subscription:
        if event.job_id == job_id:
            if event.type not in SHOWN:
                continue
            if event.type in ("queued", "job_requeued"):
                waiting, last = True, event.position
            else:
                waiting = False
            yield event
            if event.type == "job_ended":
                return
        elif waiting and position is not None and event.type in OTHER_JOB_MOVES:
            now = position(job_id)
            if now is None or now == 0:
                continue
            if now != last:
                last = now
                yield ev.Queued(job_id, position=now)


@dataclass
class Live:
    """A job followed by this process: where its status shows, who asked, the upload
    limit where it is posted, and the future the poster completes with
    ``(JobResult, posted message or None)``."""

    status: Status
    dest: Destination
    upload_limit: int
    posted: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Reporter:
    """Sees submissions through for one bot (:meth:`run`) and posts every finished job's
    result once (:meth:`post_result`, the job service's poster)."""

    def __init__(self, bot):
        self.bot = bot
        self._live: dict[int, Live] = {}
        self._submitting = 0

    @property
    def interval(self) -> float:
        return self.bot.settings.progress_interval_s

    # -- following a job -----------------------------------------------------------------
    async def run(
        self,
        submission: Submission,
        dest: Destination,
        status: Status,
        *,
        upload_limit: int = render.DEFAULT_UPLOAD_LIMIT,
    ) -> discord.Message | None:
        """Store and queue ``submission`` and see it through; every failure ends as one
        sentence in ``status``. Returns the posted result message."""
        generations = self.bot.generations
        live = Live(status, dest, upload_limit)
        # Subscribed before submitting: the job's first events may come before its id.
        subscription: Subscription = self.bot.jobs.subscribe(None)
        follower: asyncio.Task | None = None
        self._submitting += 1
        try:
            try:
                ticket = await generations.submit(submission, dest)
            except Exception as exc:
                await status.close(f"⚠️ {friendly(exc)}")
                return None
            finally:
                self._submitting -= 1
            self._live[ticket.job_id] = live
            # Stored before the status says "Queued": whoever sees it can be told later.
            await self._remember(ticket.job_id, status)
            await status.update(self._queued_text(ticket.job_id, ticket.position, ticket))
            follower = asyncio.create_task(self._follow(subscription, ticket, status))
            try:
                result, message = await live.posted
            except Exception as exc:
                await self._settle(subscription, follower)
                await status.close(
                    f"⚠️ The image was made (#{ticket.generation_id}) but could not be posted: "
                    f"{friendly(exc)}"
                )
                return None
            await self._settle(subscription, follower)
            # Marked posted (and the message linked to its generation) before "Done".
            await asyncio.to_thread(self.bot.jobs.flush_posts, 30)
            await status.finish(result, message)
            return message
        finally:
            subscription.close()
            if follower is not None and not follower.done():
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            for job_id, item in list(self._live.items()):
                if item is live:
                    del self._live[job_id]

    async def _remember(self, job_id: int, status: Status) -> None:
        """Store where the status shows, so a restart can say where the job went."""
        where = status.where()
        remember = getattr(self.bot.jobs, "remember_status", None)
        if where is None or remember is None:
            return
        try:
            await asyncio.to_thread(remember, job_id, **where)
        except Exception:
            log.exception("could not store where the status of job %s shows", job_id)

    @staticmethod
    async def _settle(subscription: Subscription, follower: asyncio.Task) -> None:
        """Let the follower show the events already received, then stop it."""
        subscription.close()  # what was published so far is still read, then it ends
        try:
            await asyncio.wait_for(follower, 5.0)
        except TimeoutError:
            log.info("a status follower did not finish in time")
        except Exception:
            log.exception("a status follower failed")

    def _queued_text(self, job_id: int, position: int, ticket: Ticket | None = None) -> str:
        generations = self.bot.generations
        if ticket is not None and ticket.estimated_wait_s is not None:
            wait = ticket.estimated_wait_s
        else:
            wait = generations.estimate_wait(job_id)
        text = render.queued_text(
            position, wait_s=wait, job_id=job_id, paused=bool(self.bot.jobs.paused)
        )
        if getattr(self.bot, "cluster_down", False):
            text += f"\n⏳ {UNREACHABLE[0].upper()}{UNREACHABLE[1:]}."
        return text

    async def cluster_changed(self, up: bool) -> None:
        """The GPU cluster went away or came back: every job this process still follows
        says so in its status (a running job's own requeue event says it too)."""
        for job_id, live in list(self._live.items()):
            if live.posted.done():
                continue
            if up:
                position = self.bot.generations.position(job_id)
                text = (
                    self._queued_text(job_id, position)
                    if position is not None
                    else "⏳ The GPU cluster is back; your job runs soon."
                )
            else:
                text = f"⏳ {UNREACHABLE[0].upper()}{UNREACHABLE[1:]}."
            try:
                await live.status.update(text)
            except Exception:  # one status that cannot be edited must not stop the others
                log.info("could not update the status of job %s", job_id, exc_info=True)

    async def _follow(self, subscription: Subscription, ticket: Ticket, status: Status) -> None:
        """Show the job's place, start and progress, throttled to one edit per interval
        (terminal events always go through; the poster's result closes the status)."""
        source = job_events(subscription, ticket.job_id, self.bot.generations.position)
        last: ev.Progress | None = None
        async with contextlib.aclosing(throttled(source, self.interval)) as events:
            async for event in events:
                if isinstance(event, ev.Queued):
                    await status.update(self._queued_text(ticket.job_id, event.position))
                elif event.type == "job_requeued" and UNREACHABLE in event.reason:
                    await status.update(f"⏳ {UNREACHABLE[0].upper()}{UNREACHABLE[1:]}.")
                elif event.type == "job_requeued":
                    await status.update(
                        "⏳ Back in the queue (its worker stopped); it starts again soon."
                    )
                elif isinstance(event, ev.Started):
                    await status.update("🎨 Starting…")
                elif isinstance(event, ev.Progress):
                    # Already throttled: every progress event that comes through is shown.
                    last = event
                    await status.update(
                        render.progress_text(event.step, event.total), file=preview_file(event)
                    )
                elif isinstance(event, ev.Finished) and last is not None:
                    # The last steps may have been held back by the throttle: all are done.
                    await status.update(render.progress_text(last.total, last.total))

    # -- posting (the job service's poster) ---------------------------------------------
    async def post_result(self, result: JobResult) -> int | None:
        """Post a finished job's result (once per job: the job service marks it posted
        with the id returned). A done job gets its images and buttons in its channel; a
        failed or owner-cleared job that no status here follows (it ran after a restart)
        gets a one-line notice; otherwise the status says it. Raises when Discord
        refuses, so the job service posts it again at the next start."""
        live = await self._live_for(result.job_id)
        try:
            message = None
            if result.maybe_posted:
                # An earlier try may have sent it (the bot died before recording that):
                # adopt that message rather than send a second one.
                message = await recovery.find_posted(self.bot, result)
                if message is not None:
                    log.warning(
                        "job %s was posted before the restart (message %s); not posted again",
                        result.job_id,
                        message.id,
                    )
            if message is None:
                message = await posting.deliver(self.bot, result, live)
            if message is not None and result.status == "done" and result.generation_id:
                # Linked before the job is marked posted, so a reply or a button on the
                # message finds its generation as soon as the job reads as posted.
                await posting.link(self.bot, result, message)
        except BaseException as exc:
            if live is not None and not live.posted.done():
                live.posted.set_exception(exc)
            raise
        if live is not None and not live.posted.done():
            live.posted.set_result((result, message))
        elif live is None:
            await recovery.finish_old_status(self.bot, result, message)
        return message.id if message is not None else None

    async def resumed(self, result: JobResult) -> None:
        """The job service's status notifier: a job of the last run is queued again
        after a restart; its old status (which still says "Queued" or shows progress)
        says so."""
        await recovery.tell_old_status(
            self.bot,
            result,
            f"🔄 The bot restarted; job #{result.job_id} is queued again and runs from the "
            "start. Its result is posted in this channel.",
        )

    async def _live_for(self, job_id: int) -> Live | None:
        live = self._live.get(job_id)
        # A job can end before the run() that submitted it registered its id (a very
        # fast failure): wait for the registration briefly while submissions are on.
        deadline = time.monotonic() + 2.0
        while live is None and self._submitting and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            live = self._live.get(job_id)
        return live
