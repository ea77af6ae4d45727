"""The job queue's state that outlives a restart (today: whether it is paused)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import QueueState

_ROW = 1


def queue_paused(session: Session) -> bool:
    """Whether an owner paused the queue (and did not resume it since)."""
    state = session.get(QueueState, _ROW)
    return bool(state is not None and state.paused)


def set_queue_paused(session: Session, paused: bool, *, actor_id: int | None = None) -> QueueState:
    """Store that the queue is paused (or running again), and who changed it."""
    state = session.get(QueueState, _ROW)
    if state is None:
        state = QueueState(id=_ROW)
        session.add(state)
    state.paused = bool(paused)
    state.changed_by = actor_id
    state.updated_at = utcnow()
    session.flush()
    return state
