"""Owner commands for plugins: ``/plugin install|list|info|enable|disable|remove|reload``.

The logic is :mod:`bot.services.plugins`; this cog parses, asks for confirmation, and
renders (``texts``)."""

from __future__ import annotations

from bot.discord.cogs.plugins.cog import PluginCog


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point): put the bot's plugins under a
    plugin host (off the event loop) unless the bot already has a plugin service."""
    import asyncio

    from bot.services.plugins import start_plugins

    runtime = getattr(bot.env, "plugin_runtime", None)  # set by bot.cli.common.make_environment
    service = getattr(bot, "plugin_service", None) or getattr(runtime, "service", None)
    if service is None:
        service = await asyncio.to_thread(start_plugins, bot.env, bot.settings, bot.database)
        bot.plugin_service = service
    await bot.add_cog(PluginCog(bot, service))
