"""From a submission to a posted result: queue position, throttled progress, the result
message with its buttons, and one sentence when anything fails.

The status goes wherever a :class:`Status` points (the deferred interaction response,
or a reply message for reply-to-image); the result is always a channel message that
mentions the user, so jobs longer than an interaction token's 15 minutes still land.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import discord

from bot.discord import render
from bot.discord.errors import friendly
from bot.discord.generation import Destination, Outcome, Submission, Ticket
from bot.discord.views import result_view
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

    async def _edit(self, text: str, file: discord.File | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    async def update(
        self, text: str, *, progress: bool = False, file: discord.File | None = None
    ) -> None:
        """Show ``text``; progress updates inside the interval are dropped."""
        if self._closed:
            return
        now = time.monotonic()
        if progress and now - self._last < self.interval:
            return
        self._last = now
        async with self._lock:
            if self._closed:
                return
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


class MessageStatus(Status):
    """A bot message replying to the user's message (reply-to-image)."""

    def __init__(self, message: discord.Message, interval: float = 1.5):
        super().__init__(interval)
        self.message = message

    async def _edit(self, text: str, file: discord.File | None = None) -> None:
        await self.message.edit(content=text, attachments=[file] if file is not None else [])


def _preview_file(event: ev.Progress) -> discord.File | None:
    if event.preview is None:
        return None
    buf = io.BytesIO()
    event.preview.convert("RGB").save(buf, format="JPEG", quality=70)
    buf.seek(0)
    return discord.File(buf, filename="preview.jpg")


def listener_for(status: Status):
    """An event listener that turns queue and runner events into status updates."""

    async def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.Queued):
            await status.update(render.queued_text(event.position))
        elif isinstance(event, ev.Started):
            await status.update("🎨 Starting…")
        elif isinstance(event, ev.Progress):
            final = event.step >= event.total
            await status.update(
                render.progress_text(event.step, event.total),
                progress=not final,
                file=_preview_file(event),
            )

    return on_event


class Reporter:
    """Runs submissions to the end for one bot: submit, report, post, record."""

    def __init__(self, bot):
        self.bot = bot

    @property
    def interval(self) -> float:
        return self.bot.settings.progress_interval_s

    async def run(
        self,
        submission: Submission,
        dest: Destination,
        status: Status,
        *,
        upload_limit: int = render.DEFAULT_UPLOAD_LIMIT,
    ) -> discord.Message | None:
        """Queue ``submission`` and see it through; every failure ends as one sentence
        in ``status``. Returns the posted result message."""
        try:
            ticket = await self.bot.generations.submit(submission, dest, listener_for(status))
        except Exception as exc:
            await status.close(f"⚠️ {friendly(exc)}")
            return None
        await status.update(
            render.queued_text(ticket.position) if ticket.position else "🎨 Starting…"
        )
        try:
            outcome: Outcome = await ticket.future
        except asyncio.CancelledError:
            await status.close("🛑 Cancelled.")
            return None
        except Exception as exc:
            from runner.errors import JobCancelled

            if isinstance(exc, JobCancelled):
                await status.close("🛑 Cancelled.")
            else:
                await status.close(f"⚠️ {friendly(exc)}")
            return None
        try:
            message = await self.post(ticket, outcome, status, upload_limit=upload_limit)
        except Exception as exc:
            await status.close(
                f"⚠️ The image was made (#{outcome.generation_id}) but could not be posted: {friendly(exc)}"
            )
            return None
        if message is None:
            await status.close(
                f"⚠️ The image was made (#{outcome.generation_id}) but could not be posted here."
            )
            return None
        await status.close(f"✅ Done: {message.jump_url}")
        return message

    async def post(
        self,
        ticket: Ticket,
        outcome: Outcome,
        status: Status | None = None,
        *,
        upload_limit: int = render.DEFAULT_UPLOAD_LIMIT,
    ) -> discord.Message | None:
        """Post the result as a channel message mentioning the user, with its buttons."""
        settings = self.bot.settings
        dest = ticket.destination
        notes: list[str] = []
        shown, spoiler = [], False
        for image, reason in zip(
            outcome.images, outcome.flagged or [None] * len(outcome.images), strict=False
        ):
            if reason and settings.safety == "refuse":
                continue
            spoiler = spoiler or bool(reason)
            shown.append(settings.data_dir / image.path)
        withheld = len(outcome.images) - len(shown)
        if withheld:
            notes.append(f"{withheld} image(s) withheld by the safety check.")
        elif spoiler:
            notes.append("Marked as a spoiler by the safety check.")
        prepared = await asyncio.to_thread(
            render.fit_images, shown, upload_limit, stem=f"easel_{outcome.generation_id}"
        )
        if prepared.note:
            notes.append(prepared.note)
        params = {
            **outcome.submission.request.to_parameters(),
            "seed": outcome.seed,
            "init_image": outcome.submission.init_image,
        }
        content = render.result_content(f"<@{dest.user_id}>", params, outcome.generation_id, notes)
        kwargs = {
            "content": content,
            "files": render.to_discord_files(prepared, spoiler=spoiler),
            "view": result_view(outcome.generation_id, len(prepared.files) or 1),
            "allowed_mentions": discord.AllowedMentions(
                users=[discord.Object(dest.user_id)], roles=False, everyone=False
            ),
        }
        message: discord.Message | None = None
        if dest.channel_id is not None:
            channel = self.bot.get_channel(dest.channel_id) or self.bot.get_partial_messageable(
                dest.channel_id, guild_id=dest.guild_id
            )
            try:
                message = await channel.send(**kwargs)
            except discord.HTTPException as exc:
                log.warning(
                    "could not post result %s in channel %s: %s",
                    outcome.generation_id,
                    dest.channel_id,
                    exc,
                )
        if message is None and status is not None:
            kwargs["files"] = render.to_discord_files(prepared, spoiler=spoiler)
            message = await status.fallback_send(**kwargs)
        if message is None:
            return None
        if not await self.bot.generations.claim_posting(outcome.job_id, message.id):
            await message.delete()  # someone else posted it first
            return None
        await self.bot.generations.set_message(
            outcome.generation_id, message.id, dest.channel_id, dest.guild_id
        )
        return message
