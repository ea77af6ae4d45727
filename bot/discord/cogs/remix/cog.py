"""Reply to any image and mention the bot with a prompt (``@easel a watercolour --strength
0.6``), or use the "Remix" message menu: img2img on that image.

No privileged message-content intent is needed: Discord sends the content of messages
that mention the bot, and a reply to the bot's own message mentions it.
"""

from __future__ import annotations

import logging
import re

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord import context
from bot.discord.context import replied_message
from bot.discord.errors import reported
from bot.discord.requests import image_attachment
from bot.discord.status import MessageStatus

log = logging.getLogger(__name__)


HOW_TO = (
    "Tell me what to draw: `@easel a lighthouse at dawn --ar 16:9`, or use `/imagine`. "
    "Reply to an image with `@easel` and a prompt to change that image."
)
"""The answer to a bare mention."""


def prompt_from_mention(content: str, bot_id: int) -> str:
    """The message text without the bot's mention(s)."""
    return " ".join(re.sub(rf"<@!?{bot_id}>", " ", content).split())


class RemixCog(commands.Cog):
    """img2img from replies and from the Remix menu."""

    def __init__(self, bot):
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Remix", callback=self.remix)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def remix(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Remix this image: a prompt and a strength, then img2img."""
        await self.bot.actions.open_remix(interaction, message)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A message that mentions the bot (or answers one of its results): img2img on
        the image it replies to or carries, else a new image from its text (a mention
        with no text gets a short how-to)."""
        me = self.bot.user
        if me is None or message.author.bot or message.author.id == me.id:
            return
        explicit = re.search(rf"<@!?{me.id}>", message.content or "") is not None
        target = await replied_message(message)
        replying_to_me = target is not None and target.author.id == me.id
        if not (explicit or (replying_to_me and message.content)):
            return
        if (await self.bot.get_context(message)).valid:
            return  # an owner command such as "@easel sync"
        text = prompt_from_mention(message.content or "", me.id)
        if target is None and image_attachment(message) is not None:
            target = message  # "@easel make it snowy" with the image attached
        if target is None and not text:
            await self._reply(message, HOW_TO)
            return
        status_message = await self._reply(message, "⏳ Working on it…")
        if status_message is None:
            return
        guild_id = message.guild.id if message.guild else None
        async with reported(MessageStatus(status_message).close) as attempt:
            if target is None:
                submission = await self.bot.requests.from_text(message.author, guild_id, text)
            else:
                submission = await self.bot.requests.img2img(message.author, guild_id, target, text)
        if attempt.failed:
            return
        dest = context.destination(message.author, message.channel, message.channel.id, guild_id)
        limit = message.guild.filesize_limit if message.guild else 10 * 1024 * 1024
        await self.bot.reporter.run(
            submission,
            dest,
            MessageStatus(status_message, self.bot.settings.progress_interval_s, request=message),
            upload_limit=limit,
        )

    @staticmethod
    async def _reply(message: discord.Message, text: str) -> discord.Message | None:
        try:
            return await message.reply(text, mention_author=False)
        except discord.HTTPException as exc:
            log.info("cannot reply in channel %s: %s", message.channel.id, exc)
            return None
