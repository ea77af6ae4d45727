"""Owner commands. ``@easel sync`` (a mention, so it works before any slash command
exists) and ``/sync`` push the application commands to the configured guilds, or
globally when none are configured."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.errors import reported

log = logging.getLogger(__name__)


class AdminCog(commands.Cog):
    """Things only the bot's owners may do."""

    def __init__(self, bot):
        self.bot = bot

    def _is_owner(self, user_id: int) -> bool:
        return user_id in self.bot.settings.owner_set

    @staticmethod
    def _replier(ctx: commands.Context):
        async def reply(text: str) -> None:
            await ctx.reply(text, mention_author=False)

        return reply

    @commands.command(name="sync")
    async def sync_text(self, ctx: commands.Context) -> None:
        """Sync application commands (owners only)."""
        if not self._is_owner(ctx.author.id):
            return
        async with reported(self._replier(ctx)) as attempt:
            names = await self.bot.sync_commands()
        if attempt.failed:
            return
        await ctx.reply(
            f"Synced {len(names)} command(s): {', '.join(names)}.", mention_author=False
        )

    @app_commands.command(name="sync")
    async def sync_slash(self, interaction: discord.Interaction) -> None:
        """Sync application commands (owners only)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not self._is_owner(interaction.user.id):
            await interaction.edit_original_response(
                content="⚠️ Only the bot's owners can sync commands."
            )
            return
        async with reported(interaction) as attempt:
            names = await self.bot.sync_commands()
        if attempt.failed:
            return
        await interaction.edit_original_response(
            content=f"Synced {len(names)} command(s): {', '.join(names)}."
        )
