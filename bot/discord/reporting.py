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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.discord import render
from bot.discord.errors import friendly, sentence
from bot.discord.views import result_view
from bot.services.errors import NotFound
from bot.services.generation import Destination, Submission, Ticket, result_parameters
from bot.services.jobs import JobResult
from runner import events as ev
from runner.jobs import Subscription, throttled
from runner.jobs.backend_driver import UNREACHABLE

log = logging.getLogger(__name__)


class Status:
    """A message that shows one job's state, edited in place, at most once per
    ``interval`` seconds for progress; final texts always go through."""

    def __init__(self, interval: float = 1.5):
        self.interval = interval
        self._lock = asyncio.Lock()
        self._last = 0.0
        self._closed = False
        self._shown: str | None = None

    async def _edit(self, text: str, file: discord.File | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    async def update(
        self, text: str, *, progress: bool = False, file: discord.File | None = None
    ) -> None:
        """Show ``text``; progress updates inside the interval are dropped."""
        if self._closed or (text == self._shown and file is None):
            return
        now = time.monotonic()
        if progress and now - self._last < self.interval:
            return
        self._last = now
        async with self._lock:
            if self._closed:
                return
            self._shown = text
            try:
                await self._edit(text, file)
            except discord.HTTPException as exc:  # e.g. the interaction token expired
                log.info("could not update a status message: %s", exc)

    async def close(self, text: str) -> None:
        """Show the final ``text``; later updates are ignored."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                await self._edit(text, None)
            except discord.HTTPException as exc:
                log.info("could not update a status message: %s", exc)

    async def fallback_send(self, **kwargs: Any) -> discord.Message | None:
        """Post a result here when the channel refuses it (None when impossible)."""
        return None

    def where(self) -> dict[str, Any] | None:
        """How to find this status again after a restart (for
        :meth:`bot.services.jobs.JobService.remember_status`), or None."""
        return None


class InteractionStatus(Status):
    """The deferred response of an interaction (ephemeral when deferred so)."""

    def __init__(self, interaction: discord.Interaction, interval: float = 1.5):
        super().__init__(interval)
        self.interaction = interaction

    async def _edit(self, text: str, file: discord.File | None = None) -> None:
        kwargs: dict[str, Any] = {"content": text}
        kwargs["attachments"] = [file] if file is not None else []
        await self.interaction.edit_original_response(**kwargs)

    async def fallback_send(self, **kwargs: Any) -> discord.Message | None:
        kwargs.pop("allowed_mentions", None)
        return await self.interaction.followup.send(wait=True, **kwargs)

    def where(self) -> dict[str, Any] | None:
        token = getattr(self.interaction, "token", None)
        created = getattr(self.interaction, "created_at", None)
        if not token or created is None:
            return None
        return {"token": token, "expires_at": created + TOKEN_LIFETIME}


class MessageStatus(Status):
    """A bot message replying to the user's message (reply-to-image)."""

    def __init__(self, message: discord.Message, interval: float = 1.5):
        super().__init__(interval)
        self.message = message

    async def _edit(self, text: str, file: discord.File | None = None) -> None:
        await self.message.edit(content=text, attachments=[file] if file is not None else [])

    def where(self) -> dict[str, Any] | None:
        channel = getattr(self.message, "channel", None)
        if channel is None or getattr(self.message, "id", None) is None:
            return None
        return {"channel_id": channel.id, "message_id": self.message.id}


TOKEN_LIFETIME = datetime.timedelta(minutes=14)
"""How long a stored interaction token is used: Discord's 15 minutes, less a margin."""

LOOK_BACK = datetime.timedelta(minutes=2)
"""How far before "posting started" a restart looks for a result it may have posted
(clocks of the bot and Discord differ a little)."""

LOOK_LIMIT = 500
"""At most this many channel messages are read looking for one result."""


def is_post_of(message: Any, result: JobResult, bot_id: int | None) -> bool:
    """Whether ``message`` is the bot's post of ``result``: its nonce as Discord hands
    it back (only shortly after the send), the result buttons' custom ids (which carry
    the generation id), or a notice naming the user and the job."""
    if bot_id is not None and getattr(getattr(message, "author", None), "id", None) != bot_id:
        return False
    nonce = getattr(message, "nonce", None)
    if nonce is not None and str(nonce) == result.nonce:
        return True
    if result.generation_id is not None:
        pattern = re.compile(rf"easel:[a-z]+:{result.generation_id}(:\d+)?")
        for row in getattr(message, "components", None) or []:
            for item in getattr(row, "children", None) or [row]:
                if pattern.fullmatch(getattr(item, "custom_id", None) or ""):
                    return True
    content = getattr(message, "content", "") or ""
    if result.status != "done" and content.startswith(f"<@{result.user_id}>"):
        return f"({notice_name(result)}):" in content
    return False


def notice_name(result: JobResult) -> str:
    """How a notice names its job: ``#generation`` or ``job N``."""
    return f"#{result.generation_id}" if result.generation_id else f"job {result.job_id}"


def _preview_file(event: ev.Progress) -> discord.File | None:
    if event.preview is None:
        return None
    buf = io.BytesIO()
    event.preview.convert("RGB").save(buf, format="JPEG", quality=70)
    buf.seek(0)
    return discord.File(buf, filename="preview.jpg")


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


def ended_text(result: JobResult, message: discord.Message | None) -> str:
    """The status's last words for a job that ended."""
    if result.status == "done":
        if message is None:
            return f"⚠️ The image was made (#{result.generation_id}) but could not be posted here."
        return f"✅ Done: {message.jump_url}"
    if result.status == "cancelled":
        reason = result.error or ""
        if reason and reason not in ("cancelled", "cancelled while waiting"):
            return f"🛑 Cancelled: {reason}."
        return "🛑 Cancelled."
    return f"⚠️ {failure_sentence(result.error)}"


def failure_sentence(error: str | None) -> str:
    """One sentence for a failed job's error."""
    if not error:
        return "The generation failed; the details are in the bot's log."
    return sentence(f"The generation failed: {error}")


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
            await status.close(ended_text(result, message))
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
        return render.queued_text(
            position, wait_s=wait, job_id=job_id, paused=bool(self.bot.jobs.paused)
        )

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
                        render.progress_text(event.step, event.total), file=_preview_file(event)
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
                message = await self._find_posted(result)
                if message is not None:
                    log.warning(
                        "job %s was posted before the restart (message %s); not posted again",
                        result.job_id,
                        message.id,
                    )
            if message is None:
                message = await self._deliver(result, live)
            if message is not None and result.status == "done" and result.generation_id:
                # Linked before the job is marked posted, so a reply or a button on the
                # message finds its generation as soon as the job reads as posted.
                await self._link(result, message)
        except BaseException as exc:
            if live is not None and not live.posted.done():
                live.posted.set_exception(exc)
            raise
        if live is not None and not live.posted.done():
            live.posted.set_result((result, message))
        elif live is None:
            await self._tell_old_status(result, ended_text(result, message))
        return message.id if message is not None else None

    async def resumed(self, result: JobResult) -> None:
        """The job service's status notifier: a job of the last run is queued again
        after a restart; its old status (which still says "Queued" or shows progress)
        says so."""
        await self._tell_old_status(
            result,
            f"🔄 The bot restarted; job #{result.job_id} is queued again and runs from the "
            "start. Its result is posted in this channel.",
        )

    async def _tell_old_status(self, result: JobResult, text: str) -> None:
        """Edit a status left from an earlier run (stored interaction token while valid,
        or the reply message); nothing when none is known."""
        try:
            if result.status_token and self.bot.application_id:
                webhook = discord.Webhook.partial(
                    self.bot.application_id, result.status_token, client=self.bot
                )
                await webhook.edit_message("@original", content=text, attachments=[])
            elif result.status_message_id and result.status_channel_id:
                await (
                    self.bot.get_partial_messageable(result.status_channel_id)
                    .get_partial_message(result.status_message_id)
                    .edit(content=text, attachments=[])
                )
        except discord.HTTPException as exc:
            log.info("could not update the old status of job %s: %s", result.job_id, exc)

    async def _find_posted(self, result: JobResult) -> discord.Message | None:
        """The bot's message of ``result`` in its channel, if an earlier try sent it:
        the channel's messages since shortly before that try are read, oldest first."""
        if result.channel_id is None or result.post_started_at is None:
            return None
        channel = self.bot.get_channel(result.channel_id) or self.bot.get_partial_messageable(
            result.channel_id, guild_id=result.guild_id
        )
        bot_id = self.bot.user.id if self.bot.user is not None else None
        after = result.post_started_at - LOOK_BACK
        if after.tzinfo is None:
            after = after.replace(tzinfo=datetime.UTC)
        async for message in channel.history(limit=LOOK_LIMIT, after=after, oldest_first=True):
            if is_post_of(message, result, bot_id):
                return message
        return None

    async def _link(self, result: JobResult, message: discord.Message) -> None:
        channel_id = getattr(getattr(message, "channel", None), "id", None) or result.channel_id
        try:
            await asyncio.to_thread(
                self.bot.generations.history.set_message,
                result.generation_id,
                message_id=message.id,
                channel_id=channel_id,
                guild_id=result.guild_id,
            )
        except NotFound:  # deleted meanwhile
            pass

    async def _live_for(self, job_id: int) -> Live | None:
        live = self._live.get(job_id)
        # A job can end before the run() that submitted it registered its id (a very
        # fast failure): wait for the registration briefly while submissions are on.
        deadline = time.monotonic() + 2.0
        while live is None and self._submitting and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            live = self._live.get(job_id)
        return live

    def _destination(self, result: JobResult, live: Live | None) -> Destination:
        if live is not None:
            return live.dest
        channel = self.bot.get_channel(result.channel_id) if result.channel_id else None
        from bot.discord.context import is_nsfw_channel

        return Destination(
            user_id=result.user_id,
            channel_id=result.channel_id,
            guild_id=result.guild_id,
            nsfw_allowed=is_nsfw_channel(channel),
        )

    def _upload_limit(self, result: JobResult, live: Live | None) -> int:
        if live is not None:
            return live.upload_limit
        guild = self.bot.get_guild(result.guild_id) if result.guild_id else None
        return guild.filesize_limit if guild is not None else render.DEFAULT_UPLOAD_LIMIT

    async def _deliver(self, result: JobResult, live: Live | None) -> discord.Message | None:
        if result.status == "done":
            return await self._post_images(result, live)
        if live is not None:
            return None  # the status says how it ended
        if result.status == "failed":
            text = f"⚠️ {failure_sentence(result.error)}"
        elif result.error and "cleared" in result.error:
            text = f"🛑 Cancelled: {result.error}."
        else:
            return None
        name = notice_name(result)
        content = f"<@{result.user_id}> {render.escape(result.prompt[:100])} ({name}): {text}"
        return await self._send(result, live, {"content": content[: render.MAX_CONTENT]})

    async def _post_images(self, result: JobResult, live: Live | None) -> discord.Message | None:
        settings = self.bot.settings
        generations = self.bot.generations
        try:
            generation = await generations.generation(result.generation_id)
        except NotFound:  # deleted meanwhile: nothing to show
            return None
        dest = self._destination(result, live)
        flagged = await asyncio.to_thread(generations.check_outputs, generation, dest)
        outputs = sorted(generation.outputs, key=lambda o: o.index)
        notes: list[str] = []
        shown, spoiler = [], False
        for output, reason in zip(outputs, flagged, strict=True):
            if reason and settings.safety == "refuse":
                continue
            spoiler = spoiler or bool(reason)
            shown.append(settings.data_dir / output.path)
        withheld = len(outputs) - len(shown)
        if withheld:
            notes.append(f"{withheld} image(s) withheld by the safety check.")
        elif spoiler:
            notes.append("Marked as a spoiler by the safety check.")
        prepared = await asyncio.to_thread(
            render.fit_images,
            shown,
            self._upload_limit(result, live),
            stem=f"easel_{generation.id}",
        )
        if prepared.note:
            notes.append(prepared.note)
        content = render.result_content(
            f"<@{result.user_id}>", result_parameters(generation), generation.id, notes
        )

        def kwargs() -> dict[str, Any]:
            return {
                "content": content,
                "files": render.to_discord_files(prepared, spoiler=spoiler),
                "view": result_view(generation.id, len(prepared.files) or 1),
            }

        return await self._send(result, live, kwargs)

    async def _send(
        self, result: JobResult, live: Live | None, kwargs: Any
    ) -> discord.Message | None:
        """A channel message mentioning the user, with the job's nonce (enforced, so a
        repeat after a crash returns the first message); the status's fallback (an
        interaction follow-up) when the channel refuses."""
        make = kwargs if callable(kwargs) else (lambda: dict(kwargs))
        mentions = discord.AllowedMentions(
            users=[discord.Object(result.user_id)], roles=False, everyone=False
        )
        if result.channel_id is not None:
            channel = self.bot.get_channel(result.channel_id) or self.bot.get_partial_messageable(
                result.channel_id, guild_id=result.guild_id
            )
            try:
                return await channel.send(**make(), allowed_mentions=mentions, nonce=result.nonce)
            except discord.HTTPException as exc:
                log.warning(
                    "could not post job %s in channel %s: %s", result.job_id, result.channel_id, exc
                )
                if live is None and not isinstance(exc, discord.Forbidden | discord.NotFound):
                    raise  # perhaps passing: posted again at the next start
        if live is not None:
            return await live.status.fallback_send(**make())
        return None
