"""The Discord bot's settings now live in :class:`bot.settings.Settings` (so ``easel
doctor`` shows them with the others); ``BotSettings`` and ``RoleLimit`` stay importable
from here."""

from __future__ import annotations

from bot.settings import RoleLimit, Settings

BotSettings = Settings
"""The settings ``easel bot`` reads: the same object as :class:`bot.settings.Settings`."""

__all__ = ["BotSettings", "RoleLimit"]
