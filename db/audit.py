"""The audit log of admin actions (plugin installs, forgetting users, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import InvalidValue
from db.models import AuditEntry


def log_action(
    session: Session,
    actor_id: int,
    action: str,
    *,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry: who (a Discord id) did what (``action``, e.g.
    ``"plugin.install"``) to what (``target``), with JSON ``details``."""
    if not action or len(action) > 64:
        raise InvalidValue("action", action, "1 to 64 characters")
    entry = AuditEntry(actor_id=actor_id, action=action, target=target, details=dict(details or {}))
    session.add(entry)
    session.flush()
    return entry


def list_audit(
    session: Session,
    *,
    actor_id: int | None = None,
    action: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[AuditEntry]:
    """Entries, newest first, optionally for one actor and/or one action."""
    stmt = select(AuditEntry)
    if actor_id is not None:
        stmt = stmt.where(AuditEntry.actor_id == actor_id)
    if action is not None:
        stmt = stmt.where(AuditEntry.action == action)
    stmt = stmt.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
    return list(session.scalars(stmt.offset(offset).limit(limit)))
