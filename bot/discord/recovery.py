"""Finding what an earlier run left behind after a crash or restart: the bot's message
of a job whose result may have been posted already (:func:`find_posted`, which reads the
channel's messages since shortly before that try and picks the bot's post of that job,
:func:`is_post_of`), so it is adopted instead of sent a second time; and a status left
by an earlier run, edited to say where its job went (:func:`tell_old_status`).
"""

from __future__ import annotations

import datetime
import logging
import re
from typing import Any

import discord

from bot.discord.status import notice_name
from bot.services.jobs import JobResult

log = logging.getLogger(__name__)


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


async def find_posted(bot, result: JobResult) -> discord.Message | None:
    """The bot's message of ``result`` in its channel, if an earlier try sent it:
    the channel's messages since shortly before that try are read, oldest first."""
    if result.channel_id is None or result.post_started_at is None:
        return None
    channel = bot.get_channel(result.channel_id) or bot.get_partial_messageable(
        result.channel_id, guild_id=result.guild_id
    )
    bot_id = bot.user.id if bot.user is not None else None
    after = result.post_started_at - LOOK_BACK
    if after.tzinfo is None:
        after = after.replace(tzinfo=datetime.UTC)
    async for message in channel.history(limit=LOOK_LIMIT, after=after, oldest_first=True):
        if is_post_of(message, result, bot_id):
            return message
    return None


async def tell_old_status(bot, result: JobResult, text: str) -> None:
    """Edit a status left from an earlier run (stored interaction token while valid,
    or the reply message); nothing when none is known."""
    try:
        if result.status_token and bot.application_id:
            webhook = discord.Webhook.partial(bot.application_id, result.status_token, client=bot)
            await webhook.edit_message("@original", content=text, attachments=[])
        elif result.status_message_id and result.status_channel_id:
            await (
                bot.get_partial_messageable(result.status_channel_id)
                .get_partial_message(result.status_message_id)
                .edit(content=text, attachments=[])
            )
    except discord.HTTPException as exc:
        log.info("could not update the old status of job %s: %s", result.job_id, exc)


async def finish_old_status(bot, result: JobResult, message: discord.Message | None) -> None:
    """A job of an earlier run was posted: its old status says how it ended, except a
    reply status of a done job, which is deleted (the result is the answer)."""
    from bot.discord.status import ended_text

    if (
        result.status == "done"
        and message is not None
        and result.status_message_id
        and result.status_channel_id
        and not result.status_token
    ):
        try:
            await (
                bot.get_partial_messageable(result.status_channel_id)
                .get_partial_message(result.status_message_id)
                .delete()
            )
        except discord.HTTPException as exc:
            log.info("could not delete the old status of job %s: %s", result.job_id, exc)
        return
    await tell_old_status(bot, result, ended_text(result, message))
