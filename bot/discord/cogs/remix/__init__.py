"""Reply-to-image img2img and the "Remix" message context menu."""

from __future__ import annotations

from bot.discord.cogs.remix.cog import RemixCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(RemixCog(bot))
