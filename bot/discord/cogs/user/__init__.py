"""Per-user commands: /seed, /settings, /lora, /history, /show, /cancel, /queue, /forget-me."""

from __future__ import annotations

from bot.discord.cogs.user.cog import UserCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point)."""
    await bot.add_cog(UserCog(bot))
