"""``/lora add|list|remove|share``. Every reply is ephemeral: these are the user's own data."""

from __future__ import annotations

import asyncio
import functools
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import say
from bot.discord.cogs.lora import texts
from bot.discord.context import user_defaults
from bot.discord.errors import reported

log = logging.getLogger(__name__)


async def complete_own_lora(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The member's own LoRAs (the only ones they may remove or share)."""
    from bot.discord.cogs.imagine.complete import matching

    try:
        rows = await asyncio.to_thread(interaction.client.loras.list_visible, interaction.user.id)
    except Exception:
        log.exception("LoRA autocomplete failed")
        return []
    return matching([r.name for r in rows if r.owner_id == interaction.user.id], current)


class LoraCog(commands.Cog):
    """A user's LoRA library (:class:`bot.services.loras.LoraLibrary`)."""

    lora = app_commands.Group(name="lora", description="Your LoRA library")

    def __init__(self, bot):
        self.bot = bot

    @property
    def library(self):
        return self.bot.loras

    @lora.command(name="add")
    @app_commands.describe(
        file="A .safetensors LoRA",
        name="What you will call it in prompts",
        trigger="Trigger words, comma-separated",
        weight="Default weight",
        shared="Share with everyone",
    )
    async def lora_add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 64],
        trigger: str | None = None,
        weight: app_commands.Range[float, -10.0, 10.0] = 1.0,
        shared: bool = False,
    ) -> None:
        """Add a LoRA to your library."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            data = await self.bot.requests.read_attachment(file)
            defaults = await user_defaults(self.bot, interaction.user)
            words = [w.strip() for w in (trigger or "").split(",") if w.strip()]
            add = functools.partial(
                self.library.add,
                interaction.user.id,
                data,
                file.filename,
                name=name,
                trigger_words=words,
                default_weight=weight,
                shared=shared,
                model=defaults.model,
            )
            row = await asyncio.to_thread(add)
        if attempt.failed:
            return
        await say(interaction, texts.lora_added(row))

    @lora.command(name="list")
    async def lora_list(self, interaction: discord.Interaction) -> None:
        """Your LoRAs and the shared ones."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        rows = await asyncio.to_thread(self.library.list_visible, interaction.user.id)
        await say(interaction, texts.lora_list(rows, interaction.user.id))

    @lora.command(name="remove")
    @app_commands.describe(name="One of your LoRAs (shared ones stay with their owner)")
    @app_commands.autocomplete(name=complete_own_lora)
    async def lora_remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove one of your LoRAs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            await asyncio.to_thread(self.library.remove, interaction.user.id, name)
        if attempt.failed:
            return
        await say(interaction, f"Removed LoRA `{name}`.")

    @lora.command(name="share")
    @app_commands.describe(
        name="One of your LoRAs", shared="True to share it with everyone, False to make it private"
    )
    @app_commands.autocomplete(name=complete_own_lora)
    async def lora_share(
        self, interaction: discord.Interaction, name: str, shared: bool = True
    ) -> None:
        """Share one of your LoRAs with everyone (or stop sharing it)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            await asyncio.to_thread(self.library.share, interaction.user.id, name, shared)
        if attempt.failed:
            return
        await say(interaction, f"LoRA `{name}` is now {'shared' if shared else 'private'}.")
