"""``/forget-me``: delete everything the bot stores about a user (asks first)."""

from __future__ import annotations

import asyncio
import functools
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.cogs.privacy import texts
from bot.discord.errors import reported
from bot.discord.views import ConfirmView
from bot.services.userdata import forget_user

log = logging.getLogger(__name__)


class PrivacyCog(commands.Cog):
    """A user's data rights."""

    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="forget-me")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Delete everything the bot stores about you (asks first)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = ConfirmView(interaction.user.id)
        await interaction.edit_original_response(
            content="This deletes your settings, LoRAs, history and images for good. Are you sure?",
            view=view,
        )
        await view.wait()
        if not view.value:
            await interaction.edit_original_response(content="Nothing was deleted.", view=None)
            return
        try:
            await self.bot.generations.cancel(interaction.user.id)
        except Exception:  # deleting goes on: a job that still runs fails on its missing rows
            log.exception("could not cancel the jobs of a user who asked to be forgotten")
        forget = functools.partial(
            forget_user,
            self.bot.database,
            self.bot.settings,
            interaction.user.id,
            pm=self.bot.env.pm,
        )
        async with reported(interaction, view=None) as attempt:
            report = await asyncio.to_thread(forget)
        if attempt.failed:
            return
        await interaction.edit_original_response(content=texts.forget_text(report), view=None)
