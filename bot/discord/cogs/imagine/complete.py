"""Autocomplete for ``/imagine``'s model, sampler, scheduler, LoRA and size options."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands

from bot.discord.requests import sampler_names, scheduler_names
from bot.services.request_builder import schedulers_for

log = logging.getLogger(__name__)

SIZES = [
    "512x512",
    "768x512",
    "512x768",
    "640x640",
    "768x768",
    "1024x1024",
    "1152x896",
    "896x1152",
    "1216x832",
]
MAX_CHOICES = 25


def matching(names: list[str], current: str) -> list[app_commands.Choice[str]]:
    """Up to 25 choices containing ``current`` (case-insensitive), prefix matches first."""
    needle = current.casefold()
    hits = [n for n in names if needle in n.casefold()]
    hits.sort(key=lambda n: (not n.casefold().startswith(needle), n))
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in hits[:MAX_CHOICES]]


async def complete_model(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Checkpoints the bot can load."""
    # Off the loop: listing checks each new checkpoint file's header.
    names = await asyncio.to_thread(interaction.client.env.models.checkpoint_names)
    return matching(names, current)


def chosen(interaction: discord.Interaction, name: str) -> str | None:
    """The value the member has typed so far for another option of the command."""
    value = getattr(interaction.namespace, name, None)
    return str(value).strip() if isinstance(value, str) and value.strip() else None


async def complete_sampler(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """ComfyUI sampler names; with a scheduler chosen, those that run with it."""
    names = sampler_names(interaction.client.env)
    scheduler = chosen(interaction, "scheduler")
    if scheduler is not None:
        fitting = [n for n in names if scheduler in (schedulers_for(n) or [scheduler])]
        names = fitting or names
    return matching(names, current)


async def complete_scheduler(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """ComfyUI scheduler names; with a sampler chosen, only those it runs with."""
    names = scheduler_names(interaction.client.env)
    sampler = chosen(interaction, "sampler")
    fitting = schedulers_for(sampler) if sampler is not None else None
    if fitting is not None:
        names = [n for n in names if n in fitting]
    return matching(names, current)


async def complete_size(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Common sizes."""
    return matching(SIZES, current)


async def complete_lora(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The user's own LoRAs, then shared ones, then the operator's LoRA files."""
    bot = interaction.client
    try:
        rows = await asyncio.to_thread(bot.loras.list_visible, interaction.user.id)
    except Exception:
        log.exception("LoRA autocomplete failed")
        rows = []
    names = [r.name for r in rows]
    names += [n.removesuffix(".safetensors") for n in bot.env.models.lora_names()]
    return matching(list(dict.fromkeys(names)), current)
