"""``/history`` and ``/show``: a user's past images."""

from __future__ import annotations

from bot.discord.cogs.history.cog import HistoryCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(HistoryCog(bot))
