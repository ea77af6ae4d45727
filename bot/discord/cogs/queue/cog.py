"""``/cancel`` and ``/queue``. Every reply is ephemeral."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import say
from bot.discord.cogs.queue import texts
from bot.discord.errors import reported
from bot.discord.views import ConfirmView


class QueueCog(commands.Cog):
    """What runs and waits: a user cancels their jobs, owners pause, resume or clear."""

    def __init__(self, bot):
        self.bot = bot

    @app_commands.command(name="cancel")
    @app_commands.describe(job="A job number from /queue (default: all of yours)")
    async def cancel(
        self, interaction: discord.Interaction, job: app_commands.Range[int, 1, 2**53] | None = None
    ) -> None:
        """Cancel your queued or running jobs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        admin = interaction.user.id in self.bot.settings.owner_set
        async with reported(interaction) as attempt:
            cancelled = await self.bot.generations.cancel(interaction.user.id, job, admin=admin)
        if attempt.failed:
            return
        await say(interaction, texts.cancelled_text(cancelled))

    @app_commands.command(name="queue")
    @app_commands.describe(action="Owners: pause, resume or clear the queue")
    @app_commands.choices(
        action=[app_commands.Choice(name=a, value=a) for a in ("show", "pause", "resume", "clear")]
    )
    async def queue(self, interaction: discord.Interaction, action: str = "show") -> None:
        """What is running and waiting (owners: pause, resume or clear it)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        user_id = interaction.user.id
        jobs = self.bot.jobs
        async with reported(interaction) as attempt:
            if action in ("pause", "resume", "clear") and not jobs.is_admin(user_id):
                from bot.services.jobs import NotAllowed

                raise NotAllowed(user_id, action)
            if action == "pause":
                await asyncio.to_thread(jobs.pause, user_id)
                await say(interaction, texts.PAUSED)
                return
            if action == "resume":
                await asyncio.to_thread(jobs.resume, user_id)
                await say(interaction, texts.RESUMED)
                return
            if action == "clear":
                await self._clear(interaction)
                return
            entries, paused = await self.bot.generations.queue()
        if attempt.failed:
            return
        await say(
            interaction,
            texts.queue_text(entries, user_id, paused=paused, show_all=jobs.is_admin(user_id)),
        )

    async def _clear(self, interaction: discord.Interaction) -> None:
        view = ConfirmView(interaction.user.id, label="Yes, clear the queue")
        entries, _ = await self.bot.generations.queue()
        waiting = sum(1 for e in entries if e.status == "queued")
        await interaction.edit_original_response(content=texts.clear_question(waiting), view=view)
        await view.wait()
        if not view.value:
            await interaction.edit_original_response(content="Nothing was cleared.", view=None)
            return
        count = await asyncio.to_thread(self.bot.jobs.clear, interaction.user.id)
        await interaction.edit_original_response(content=texts.cleared_text(count), view=None)
