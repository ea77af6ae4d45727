"""Posting one finished job's result for the :class:`~bot.discord.reporting.Reporter`:
a done job's images (sized to the upload limit, safety-checked) with its buttons, or a
one-line notice for a failed or owner-cleared job that no status here follows, sent as a
channel message that mentions the user with the job's nonce (:func:`send`, falling back
to the status's follow-up when the channel refuses), and the posted message linked to
its generation (:func:`link`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord

from bot.discord import render
from bot.discord.status import failure_sentence, notice_name
from bot.discord.views import result_view
from bot.services.errors import NotFound
from bot.services.generation import Destination, result_parameters
from bot.services.jobs import JobResult

if TYPE_CHECKING:
    from bot.discord.reporting import Live

log = logging.getLogger(__name__)


async def link(bot, result: JobResult, message: discord.Message) -> None:
    """Record ``message`` as where ``result``'s generation was posted."""
    channel_id = getattr(getattr(message, "channel", None), "id", None) or result.channel_id
    try:
        await asyncio.to_thread(
            bot.generations.history.set_message,
            result.generation_id,
            message_id=message.id,
            channel_id=channel_id,
            guild_id=result.guild_id,
        )
    except NotFound:  # deleted meanwhile
        pass


def destination(bot, result: JobResult, live: Live | None) -> Destination:
    """Where ``result`` goes: its live job's, or rebuilt from the stored job."""
    if live is not None:
        return live.dest
    channel = bot.get_channel(result.channel_id) if result.channel_id else None
    from bot.discord.context import is_nsfw_channel

    return Destination(
        user_id=result.user_id,
        channel_id=result.channel_id,
        guild_id=result.guild_id,
        nsfw_allowed=is_nsfw_channel(channel),
    )


def upload_limit(bot, result: JobResult, live: Live | None) -> int:
    """The upload limit where ``result`` is posted."""
    if live is not None:
        return live.upload_limit
    guild = bot.get_guild(result.guild_id) if result.guild_id else None
    return guild.filesize_limit if guild is not None else render.DEFAULT_UPLOAD_LIMIT


async def deliver(bot, result: JobResult, live: Live | None) -> discord.Message | None:
    """Post ``result``: its images when done; a notice when it failed or was cleared
    and no status here follows it; otherwise nothing (the status says how it ended)."""
    if result.status == "done":
        return await post_images(bot, result, live)
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
    return await send(bot, result, live, {"content": content[: render.MAX_CONTENT]})


async def post_images(bot, result: JobResult, live: Live | None) -> discord.Message | None:
    """A done job's images, with notes and the result buttons."""
    settings = bot.settings
    generations = bot.generations
    try:
        generation = await generations.generation(result.generation_id)
    except NotFound:  # deleted meanwhile: nothing to show
        return None
    dest = destination(bot, result, live)
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
        upload_limit(bot, result, live),
        stem=f"easel_{generation.id}",
    )
    params = result_parameters(generation)
    resized = None
    if generation.parent_id is None:  # an upload (a result's own V/U/reply say nothing)
        resized = await asyncio.to_thread(source_size_note, settings, params)
    if resized:
        notes.append(resized)
    if prepared.note:
        notes.append(prepared.note)
    content = render.result_content(f"<@{result.user_id}>", params, generation.id, notes)

    def kwargs() -> dict[str, Any]:
        return {
            "content": content,
            "files": render.to_discord_files(prepared, spoiler=spoiler),
            "view": result_view(
                generation.id, len(prepared.files) or 1, full=prepared.note is not None
            ),
        }

    return await send(bot, result, live, kwargs)


def source_size_note(settings, params: dict[str, Any]) -> str | None:
    """For img2img: a note saying the size worked at, when it is not the source
    image's (a small upload is worked on at the model's size, its shape kept)."""
    name = params.get("init_image")
    if not name:
        return None
    from PIL import Image

    try:
        with Image.open(settings.input_dir / str(name)) as image:
            source = image.size
    except (OSError, ValueError):
        return None
    made = (params.get("width"), params.get("height"))
    if tuple(source) == made:
        return None
    return (
        f"Started from a {source[0]}×{source[1]} image, made at {made[0]}×{made[1]} "
        "(its shape at the model's size; --size or --ar choose another)."
    )


async def send(bot, result: JobResult, live: Live | None, kwargs: Any) -> discord.Message | None:
    """A channel message mentioning the user, with the job's nonce (enforced, so a
    repeat after a crash returns the first message); the status's fallback (an
    interaction follow-up) when the channel refuses."""
    make = kwargs if callable(kwargs) else (lambda: dict(kwargs))
    mentions = discord.AllowedMentions(
        users=[discord.Object(result.user_id)], roles=False, everyone=False
    )
    if result.channel_id is not None:
        channel = bot.get_channel(result.channel_id) or bot.get_partial_messageable(
            result.channel_id, guild_id=result.guild_id
        )
        reference = live.status.reply_to() if live is not None else None
        extra: dict[str, Any] = {}
        if reference is not None:  # the member's message: the result is its reply
            extra["reference"] = reference.to_reference(fail_if_not_exists=False)
            extra["mention_author"] = False
        try:
            return await channel.send(
                **make(), **extra, allowed_mentions=mentions, nonce=result.nonce
            )
        except discord.HTTPException as exc:
            log.warning(
                "could not post job %s in channel %s: %s", result.job_id, result.channel_id, exc
            )
            if live is None and not isinstance(exc, discord.Forbidden | discord.NotFound):
                raise  # perhaps passing: posted again at the next start
    if live is not None:
        return await live.status.fallback_send(**make())
    return None
