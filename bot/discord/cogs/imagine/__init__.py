"""``/imagine``: text to image (and image to image with an attachment)."""

from __future__ import annotations

from bot.discord.cogs.imagine.cog import ImagineCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(ImagineCog(bot))
