"""The ``/plugin`` cog's commands, called with a stand-in interaction (what discord.py
hands a command: the user, a response to defer, the original response to edit): owners
only, install after a confirmation button, refusals answered in one sentence."""

from __future__ import annotations

import asyncio
import types

import pytest
from plugin_testlib import EXAMPLE, OWNER, STRANGER


class FakeResponse:
    def __init__(self):
        self.deferred = False

    async def defer(self, **kwargs):
        self.deferred = True

    def is_done(self):
        return self.deferred


class FakeInteraction:
    """Records what the command says; presses the confirmation button with ``press``."""

    def __init__(self, user_id: int, press: bool | None = True):
        self.user = types.SimpleNamespace(id=user_id)
        self.response = FakeResponse()
        self.press = press
        self.said: list[str] = []

    async def edit_original_response(self, content=None, view=None, **kwargs):
        self.said.append(content)
        if view is not None and self.press is not None:
            view.value = self.press
            view.stop()


@pytest.fixture
def cog(plugin_settings, database):
    from bot.discord.cogs.plugins.cog import PluginCog
    from bot.services.plugins import PluginService

    bot = types.SimpleNamespace(settings=plugin_settings, loop=None)
    return PluginCog(bot, PluginService(plugin_settings, database))


def run(cog, command: str, interaction, *args):
    callback = getattr(type(cog), command).callback
    asyncio.run(callback(cog, interaction, *args))
    assert interaction.response.deferred  # acknowledged before any slow work
    return interaction.said


def test_plugin_commands_are_owner_only(cog):
    for command, args in (("install", (str(EXAMPLE),)), ("list_plugins", ()), ("remove", ("x",))):
        said = run(cog, command, FakeInteraction(STRANGER), *args)
        assert said == ["⚠️ Only the bot's owners can manage plugins."]
    assert not cog.service.prefix.exists()


def test_plugin_install_asks_first(cog, offline_builds, example):
    said = run(cog, "install", FakeInteraction(OWNER, press=False), str(example))
    assert "pip would install" in said[0] and "easel-plugin-example 0.1.0" in said[0]
    assert said[-1] == "Nothing was installed."

    said = run(cog, "install", FakeInteraction(OWNER, press=True), str(example))
    assert said[-1].startswith("Installed and enabled **easel-plugin-example 0.1.0**")
    listed = run(cog, "list_plugins", FakeInteraction(OWNER))[-1]
    assert "🟢 easel-plugin-example 0.1.0 (distribution) enabled" in listed
    assert (
        "⚪ easel-plugin-example"
        in run(cog, "disable", FakeInteraction(OWNER), "easel-plugin-example")[-1]
    )
    removed = run(cog, "remove", FakeInteraction(OWNER, press=True), "easel-plugin-example")[-1]
    assert "removed" in removed
    missing = run(cog, "info", FakeInteraction(OWNER), "easel-plugin-example")[-1]
    assert missing == "⚠️ no plugin named 'easel-plugin-example'; see the plugin list"
