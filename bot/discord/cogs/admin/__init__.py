"""Owner commands: syncing application commands on demand."""

from __future__ import annotations

from bot.discord.cogs.admin.cog import AdminCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(AdminCog(bot))
