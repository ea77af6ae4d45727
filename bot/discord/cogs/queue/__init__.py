"""``/cancel`` and ``/queue``: what runs and waits (owners: pause, resume, clear)."""

from __future__ import annotations

from bot.discord.cogs.queue.cog import QueueCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(QueueCog(bot))
