"""Where a job's state shows and what it says: a :class:`Status` (the deferred
interaction response, :class:`InteractionStatus`, or a reply message,
:class:`MessageStatus`) edited in place and throttled for progress, how to find it again
after a restart (:meth:`Status.where`), and the texts a status or a notice ends with
(:func:`ended_text`, :func:`failure_sentence`, :func:`notice_name`) or a progress
preview it shows (:func:`preview_file`).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import time
from typing import Any

import discord

from bot.discord.errors import sentence
from bot.services.jobs import JobResult
from runner import events as ev

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

    async def finish(self, result: JobResult, message: discord.Message | None) -> None:
        """The job ended and its result was posted (``message``, or None): show how it
        ended (:func:`ended_text`)."""
        await self.close(ended_text(result, message))

    def reply_to(self) -> discord.Message | None:
        """The member's message that the result answers as a reply, if any."""
        return None

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
    """A bot message replying to the user's message (reply-to-image, a mention): it
    shows the wait and the progress; once the result is posted (itself a reply to the
    member's message, ``request``) it is deleted, so nothing but the result is left."""

    def __init__(
        self,
        message: discord.Message,
        interval: float = 1.5,
        request: discord.Message | None = None,
    ):
        super().__init__(interval)
        self.message = message
        self.request = request

    def reply_to(self) -> discord.Message | None:
        return self.request

    async def finish(self, result: JobResult, message: discord.Message | None) -> None:
        if result.status != "done" or message is None:
            await super().finish(result, message)
            return
        async with self._lock:
            self._closed = True
            try:
                await self.message.delete()
            except discord.HTTPException as exc:
                log.info("could not delete a status message: %s", exc)

    async def _edit(self, text: str, file: discord.File | None = None) -> None:
        await self.message.edit(content=text, attachments=[file] if file is not None else [])

    def where(self) -> dict[str, Any] | None:
        channel = getattr(self.message, "channel", None)
        if channel is None or getattr(self.message, "id", None) is None:
            return None
        return {"channel_id": channel.id, "message_id": self.message.id}


TOKEN_LIFETIME = datetime.timedelta(minutes=14)
"""How long a stored interaction token is used: Discord's 15 minutes, less a margin."""


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


def notice_name(result: JobResult) -> str:
    """How a notice names its job: ``#generation`` or ``job N``."""
    return f"#{result.generation_id}" if result.generation_id else f"job {result.job_id}"


def preview_file(event: ev.Progress) -> discord.File | None:
    """A progress event's preview as a JPEG attachment, or None without one."""
    if event.preview is None:
        return None
    buf = io.BytesIO()
    event.preview.convert("RGB").save(buf, format="JPEG", quality=70)
    buf.seek(0)
    return discord.File(buf, filename="preview.jpg")
