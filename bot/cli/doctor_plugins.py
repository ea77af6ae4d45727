"""``easel doctor``'s plugin check: plugins that a process never came back from (a drop-in
that exits at import, a hook that crashes the process) and plugins easel switched off,
with the reason and what to do. Reads the breadcrumbs and the database; imports no plugin."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def plugin_checks(settings) -> list:
    """The plugin lines of ``easel doctor`` (:class:`bot.cli.doctor.Check` items)."""
    from bot.cli.doctor import Check
    from runner.plugin_host.breadcrumbs import FOLDER, stale_crumbs

    checks = []
    for crumb in stale_crumbs(settings.data_dir / FOLDER):
        checks.append(
            Check(
                "fail",
                f"plugin {crumb.plugin} ended the process",
                crumb.reason(),
                f"the next start disables it; fix or remove it (easel plugins remove {crumb.plugin}), "
                f"then easel plugins enable {crumb.plugin}",
            )
        )
    for name, error in _failed_plugins(settings):
        checks.append(
            Check(
                "warn",
                f"plugin {name} was disabled by easel",
                error,
                f"fix it, then easel plugins enable {name} (or /plugin enable)",
            )
        )
    return checks


def _failed_plugins(settings) -> list[tuple[str, str]]:
    """(name, reason) of the plugins recorded as switched off by easel (with a reason)."""
    if not settings.database_url and not (settings.data_dir / "easel.sqlite3").is_file():
        return []
    try:
        from bot.services.plugins import switched_off_plugins

        return switched_off_plugins(settings)  # doctor changes nothing
    except Exception as exc:  # the database check says what is wrong with it
        log.debug("reading the plugin records failed: %s", exc)
        return []


__all__ = ["plugin_checks"]
