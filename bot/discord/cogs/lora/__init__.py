"""``/lora add|list|remove|share``: a user's LoRA library."""

from __future__ import annotations

from bot.discord.cogs.lora.cog import LoraCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(LoraCog(bot))
