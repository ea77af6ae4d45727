"""``/forget-me``: a user's right to have their data deleted."""

from __future__ import annotations

from bot.discord.cogs.privacy.cog import PrivacyCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(PrivacyCog(bot))
