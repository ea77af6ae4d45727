"""Wiring: an environment whose third-party plugins are under a plugin host and a plugin
service, as the bot and the command line start it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.services.plugins.results import PluginStatus
from bot.services.plugins.service import LOCAL_OPERATOR, PluginService
from runner.plugin_host import PluginHost

if TYPE_CHECKING:
    from db.engine import Database
    from runner.environment import Environment


@dataclass
class PluginRuntime:
    """An environment whose third-party plugins are managed by a plugin service."""

    env: Environment
    service: PluginService
    statuses: list[PluginStatus] = field(default_factory=list)

    def close(self) -> None:
        """Unload the plugins, then close the environment."""
        self.service.close()
        self.env.close()


def start_plugins(env: Environment, settings: Any, db: Database) -> PluginService:
    """Put ``env``'s plugins under a host (adopting entry-point plugins already loaded) and
    restore the recorded state: what the bot does at start."""
    service = PluginService(settings, db, PluginHost(env))
    service.start()
    return service


def environment_with_plugins(settings: Any, db: Database) -> PluginRuntime:
    """A new Environment (built-ins only) whose third-party plugins are loaded by the host,
    as recorded in the database: for the command line and the bot."""
    from runner.environment import Environment
    from runner.plugin_manager import build_plugin_manager

    env = Environment(settings, build_plugin_manager(entry_points=False))
    service = start_plugins(env, settings, db)
    return PluginRuntime(env, service, service.list_plugins(LOCAL_OPERATOR))


def switched_off_plugins(settings: Any) -> list[tuple[str, str]]:
    """(distribution, reason) of every plugin easel switched off with a reason, read from
    the database without migrating it (for ``easel doctor``; changes nothing)."""
    from bot.services.database import open_database
    from db import plugins as db_plugins

    with open_database(settings, upgrade=False) as db:
        rows = db.read_sync(db_plugins.list_plugins, enabled=False)
        return [(row.distribution, row.error) for row in rows if row.error]


__all__ = ["PluginRuntime", "environment_with_plugins", "start_plugins", "switched_off_plugins"]
