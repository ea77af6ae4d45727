"""``easel plugins install|list|info|enable|disable|remove|audit|reload``: what the owners'
``/plugin`` commands do, from the machine's shell.

The command line acts as the local operator (who has the shell, so may run pip anyway);
every action goes to the audit log like the owners' own. Changes land on disk and in the
database at once; a bot that is running applies them at ``/plugin reload`` or at its next
start. ``install``, ``enable`` and ``reload`` load the plugins in this process as the bot
would, so a plugin that fails to import, fails validation or raises at start is reported
here and recorded as failed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import click

from bot.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, load_settings, quiet_libraries


@contextmanager
def plugin_service(*, load: bool) -> Iterator[Any]:
    """The plugin service for the settings in force; with ``load``, an environment whose
    plugins are loaded as the bot would load them (to validate them here)."""
    from bot.services.database import open_database
    from bot.services.plugins import PluginService, environment_with_plugins

    settings = load_settings()
    with open_database(settings) as db:
        if not load:
            yield PluginService(settings, db)
            return
        quiet_libraries()
        runtime = environment_with_plugins(settings, db)
        try:
            yield runtime.service
        finally:
            runtime.close()


def plugin_errors(fn: Callable) -> Callable:
    """Plugin management's errors as one line on stderr: exit 2 for a refused or unknown
    request (:data:`~bot.services.plugins.REFUSALS`), 1 for a failure (pip, a broken
    plugin)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bot.services.plugins import PLUGIN_ERRORS, REFUSALS

        try:
            return fn(*args, **kwargs)
        except PLUGIN_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT if isinstance(exc, REFUSALS) else EXIT_FAILED)

    return wrapper


def _operator() -> int:
    from bot.services.plugins import LOCAL_OPERATOR

    return LOCAL_OPERATOR


def _show(status: Any) -> None:
    click.echo(status.line())


@click.group("plugins")
def plugins() -> None:
    """Install, list, enable, disable and remove plugins (the owners' /plugin commands)."""


@plugins.command("install")
@click.argument("spec")
@click.option("-y", "--yes", is_flag=True, help="Install without asking for confirmation.")
@plugin_errors
def install(spec: str, yes: bool) -> None:
    """Install SPEC with pip (name==version; a URL or path when plugin_allow_urls is on) and
    load it. Shows what pip would install first and asks for confirmation."""
    with plugin_service(load=True) as service:
        plan = service.plan_install(_operator(), spec)
        click.echo(plan.describe())
        if not yes and not click.confirm("Install?", default=False):
            service.decline_install(_operator(), spec)
            click.echo("nothing installed")
            return
        result = service.install(_operator(), spec)
        click.echo(result.pip_summary, err=True)
        _show(result.plugin)
        if result.plugin.status != "enabled":
            sys.exit(EXIT_FAILED)


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@plugin_errors
def list_plugins(as_json: bool) -> None:
    """Built-in, installed and drop-in plugins with their state."""
    with plugin_service(load=False) as service:
        statuses = service.list_plugins(_operator())
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
        return
    for status in statuses:
        _show(status)


@plugins.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@plugin_errors
def info(name: str, as_json: bool) -> None:
    """Everything known about plugin NAME: version, source, wheel hash, the node types,
    templates and hooks it provides (its plugins are loaded here to say), last error."""
    with plugin_service(load=True) as service:
        status = service.info(_operator(), name)
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2))
        return
    for key, shown in status.shown_fields():
        click.echo(f"{key}: {shown}")


@plugins.command("enable")
@click.argument("name")
@plugin_errors
def enable(name: str) -> None:
    """Enable plugin NAME (and check here that it loads)."""
    with plugin_service(load=True) as service:
        status = service.enable(_operator(), name)
    _show(status)
    if status.status != "enabled":
        sys.exit(EXIT_FAILED)


@plugins.command("disable")
@click.argument("name")
@plugin_errors
def disable(name: str) -> None:
    """Disable plugin NAME."""
    with plugin_service(load=False) as service:
        _show(service.disable(_operator(), name))


@plugins.command("remove")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Remove without asking for confirmation.")
@plugin_errors
def remove(name: str, yes: bool) -> None:
    """Remove plugin NAME: its files and its record (packages it pulled in stay)."""
    with plugin_service(load=False) as service:
        status = service.info(_operator(), name)
        if not yes and not click.confirm(f"Remove {status.name}?", default=False):
            click.echo("nothing removed")
            return
        _show(service.remove(_operator(), name))


@plugins.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@plugin_errors
def audit(limit: int, as_json: bool) -> None:
    """The newest plugin actions in the audit log."""
    with plugin_service(load=False) as service:
        entries = service.audit(_operator(), limit=limit)
    rows = [
        {
            "at": e.created_at.isoformat() if e.created_at else None,
            "actor": e.actor_id,
            "action": e.action,
            "target": e.target,
            "details": e.details,
        }
        for e in entries
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        actor = "operator" if row["actor"] == _operator() else row["actor"]
        click.echo(f"{row['at']}  {actor}  {row['action']}  {row['target'] or ''}")


@plugins.command("reload")
@plugin_errors
def reload() -> None:
    """Load every plugin as the bot would (drop-ins' requirements included) and report
    their state. A running bot reloads with /plugin reload."""
    with plugin_service(load=True) as service:
        statuses = service.reload(_operator())
    failed = [s for s in statuses if s.status == "failed"]
    for status in statuses:
        if status.kind != "builtin":
            _show(status)
    if failed:
        sys.exit(EXIT_FAILED)
