"""``/seed`` and ``/settings``: a user's seed policy and their defaults for /imagine."""

from __future__ import annotations

from bot.discord.cogs.settings.cog import SettingsCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(SettingsCog(bot))
