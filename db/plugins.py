"""Third-party plugin distributions installed by the bot's owners."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.errors import InvalidName, NotFound
from db.models import InstalledPlugin

_DIST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def normalize_distribution(name: str) -> str:
    """The PEP 503 form of a distribution name (``My_Plugin`` -> ``my-plugin``);
    :class:`InvalidName` for something that is not a distribution name."""
    if not isinstance(name, str) or not _DIST_RE.fullmatch(name):
        raise InvalidName("distribution", str(name), "not a valid distribution name")
    return re.sub(r"[-_.]+", "-", name).lower()


def get_plugin(session: Session, distribution: str) -> InstalledPlugin | None:
    """The record of an installed distribution, or None."""
    return session.scalars(
        select(InstalledPlugin).where(
            InstalledPlugin.distribution == normalize_distribution(distribution)
        )
    ).one_or_none()


def _require(session: Session, distribution: str) -> InstalledPlugin:
    plugin = get_plugin(session, distribution)
    if plugin is None:
        raise NotFound("plugin", distribution)
    return plugin


def list_plugins(session: Session, *, enabled: bool | None = None) -> list[InstalledPlugin]:
    """Installed plugins by name; ``enabled`` filters."""
    stmt = select(InstalledPlugin).order_by(InstalledPlugin.distribution)
    if enabled is not None:
        stmt = stmt.where(InstalledPlugin.enabled.is_(enabled))
    return list(session.scalars(stmt))


def record_plugin_install(
    session: Session,
    distribution: str,
    *,
    source: str,
    version: str | None = None,
    wheel_sha256: str | None = None,
) -> InstalledPlugin:
    """Record a successful install (or upgrade) of ``distribution`` from ``source``
    (what was passed to pip). The plugin is enabled and any earlier error cleared."""
    name = normalize_distribution(distribution)
    plugin = get_plugin(session, name)
    now = utcnow()
    if plugin is None:
        plugin = InstalledPlugin(distribution=name, source=source, installed_at=now)
        session.add(plugin)
    plugin.source = source
    plugin.version = version
    plugin.wheel_sha256 = wheel_sha256
    plugin.enabled = True
    plugin.error = None
    plugin.updated_at = now
    session.flush()
    return plugin


def set_plugin_enabled(
    session: Session, distribution: str, enabled: bool, *, error: str | None = None
) -> InstalledPlugin:
    """Enable or disable an installed plugin. ``error`` records why it was disabled
    (it failed to import, or raised in a hook); enabling clears the error."""
    plugin = _require(session, distribution)
    plugin.enabled = bool(enabled)
    plugin.error = None if enabled else error
    plugin.updated_at = utcnow()
    session.flush()
    return plugin


def remove_plugin(session: Session, distribution: str) -> None:
    """Forget an uninstalled plugin; :class:`NotFound` if it was never recorded."""
    session.delete(_require(session, distribution))
    session.flush()
