"""``/plugin``: the bot's owners install, list, inspect, enable, disable, remove and reload
plugins without a restart. Every command is acknowledged at once (ephemeral), runs the
plugin service on a worker thread, and answers in one message; installing and removing ask
for confirmation with buttons first."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import say
from bot.discord.cogs.plugins import texts
from bot.discord.views import ConfirmView

log = logging.getLogger(__name__)


def error_text(exc: BaseException, command: str = "/plugin") -> str:
    """The answer to a failed ``command``: plugin management's errors are sentences already;
    anything else is logged with its traceback and goes through ``friendly``."""
    from bot.services.plugins import PLUGIN_ERRORS, NotOwner

    if isinstance(exc, NotOwner):
        return "⚠️ Only the bot's owners can manage plugins."
    if isinstance(exc, PLUGIN_ERRORS):
        return texts.clip(f"⚠️ {exc}")
    from bot.discord.errors import friendly

    log.error("%s failed", command, exc_info=(type(exc), exc, exc.__traceback__))
    return f"⚠️ {friendly(exc)}"


class PluginCog(commands.Cog):
    """Owner-only plugin management."""

    plugin = app_commands.Group(
        name="plugin", description="Install and manage plugins (owners only)"
    )

    def __init__(self, bot, service):
        self.bot = bot
        self.service = service
        service.add_listener(self._on_plugin_failed)

    async def cog_unload(self) -> None:
        """Unload the plugins (their shutdown hooks run) when the bot closes."""
        await asyncio.to_thread(self.service.close)

    # -- reporting to owners ---------------------------------------------------------
    def _on_plugin_failed(self, event: Any) -> None:
        """Called from whichever thread noticed the failure: hand it to the event loop."""
        loop = getattr(self.bot, "loop", None)
        if loop is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._tell_owners(texts.failure_text(event)), loop)

    async def _tell_owners(self, text: str) -> None:
        for owner_id in self.bot.settings.owner_ids:
            try:
                user = self.bot.get_user(owner_id) or await self.bot.fetch_user(owner_id)
                await user.send(text)
            except Exception:  # a closed DM must not hide the log line
                log.warning("could not tell owner %s: %s", owner_id, text)

    # -- helpers -------------------------------------------------------------------------
    async def _call(self, interaction: discord.Interaction, method: str, *args: Any) -> Any:
        """Run the service's (blocking, synchronous) ``method`` for this user off the event
        loop; answer its error and return None. The cog's one error handler."""
        try:
            return await asyncio.to_thread(
                getattr(self.service, method), interaction.user.id, *args
            )
        except Exception as exc:
            await say(interaction, error_text(exc, f"/plugin {method}"), view=None)
            return None

    async def _confirmed(self, interaction: discord.Interaction, text: str, label: str) -> bool:
        view = ConfirmView(interaction.user.id, label=label)
        await interaction.edit_original_response(content=text, view=view)
        await view.wait()
        return bool(view.value)

    # -- commands -------------------------------------------------------------------------
    @plugin.command(name="install")
    @app_commands.describe(spec="A PyPI requirement, pinned: name==1.0 (URLs and paths if allowed)")
    async def install(
        self, interaction: discord.Interaction, spec: app_commands.Range[str, 1, 500]
    ) -> None:
        """Install a plugin with pip and load it, after showing what pip will install."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        plan = await self._call(interaction, "plan_install", spec)
        if plan is None:
            return
        if not await self._confirmed(interaction, texts.plan_text(plan), "Install"):
            await asyncio.to_thread(self.service.decline_install, interaction.user.id, spec)
            await interaction.edit_original_response(content="Nothing was installed.", view=None)
            return
        await interaction.edit_original_response(content=f"Installing `{spec}`…", view=None)
        result = await self._call(interaction, "install", spec)
        if result is not None:
            await say(interaction, texts.install_text(result), view=None)

    @plugin.command(name="list")
    async def list_plugins(self, interaction: discord.Interaction) -> None:
        """Built-in, installed and drop-in plugins with their state."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        statuses = await self._call(interaction, "list_plugins")
        if statuses is not None:
            await say(interaction, texts.list_text(statuses))

    @plugin.command(name="info")
    @app_commands.describe(name="The plugin's name (see /plugin list)")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        """Everything known about one plugin, its last error included."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self._call(interaction, "info", name)
        if status is not None:
            await say(interaction, texts.info_text(status))

    @plugin.command(name="enable")
    @app_commands.describe(name="The plugin's name (see /plugin list)")
    async def enable(self, interaction: discord.Interaction, name: str) -> None:
        """Enable a plugin and load it now."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self._call(interaction, "enable", name)
        if status is not None:
            await say(interaction, texts.status_line(status))

    @plugin.command(name="disable")
    @app_commands.describe(name="The plugin's name (see /plugin list)")
    async def disable(self, interaction: discord.Interaction, name: str) -> None:
        """Disable a plugin now: its nodes and templates disappear."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self._call(interaction, "disable", name)
        if status is not None:
            await say(interaction, texts.status_line(status))

    @plugin.command(name="remove")
    @app_commands.describe(name="The plugin's name (see /plugin list)")
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove a plugin and its files (asks first)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self._call(interaction, "info", name)
        if status is None:
            return
        if not await self._confirmed(
            interaction, f"Remove **{status.name}** and its files?", "Remove"
        ):
            await interaction.edit_original_response(content="Nothing was removed.", view=None)
            return
        removed = await self._call(interaction, "remove", name)
        if removed is not None:
            await say(interaction, texts.status_line(removed), view=None)

    @plugin.command(name="reload")
    async def reload(self, interaction: discord.Interaction) -> None:
        """Load every plugin again from disk (new drop-ins, edited files, command-line changes)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        statuses = await self._call(interaction, "reload")
        if statuses is not None:
            await say(interaction, texts.list_text([s for s in statuses if s.kind != "builtin"]))
