"""The one state machine of jobs and generations (they share :class:`JobStatus`):
``queued -> running -> done | failed | cancelled``, ``running -> queued`` for a requeue,
and a finished row never changes again. :func:`db.jobs.set_job_status` and
:func:`db.generations.set_generation_status` move one row by these rules;
:func:`db.jobs.move_job` moves a job and its generation in step."""

from __future__ import annotations

from datetime import datetime

from db.base import utcnow
from db.errors import InvalidTransition, InvalidValue
from db.models import JobStatus


def parse_status(value: JobStatus | str) -> JobStatus:
    """``value`` as a :class:`JobStatus`; :class:`InvalidValue` naming the choices."""
    try:
        return JobStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in JobStatus)
        raise InvalidValue("status", value, f"must be one of {choices}") from None


def advance(
    kind: str, row_id: int, current: JobStatus, new: JobStatus | str, at: datetime | None
) -> tuple[JobStatus, datetime]:
    """Check that a ``kind`` row (``"job"``, ``"generation"``) may go from ``current``
    to ``new``; returns the parsed status and the time to stamp. A finished row stays
    finished: :class:`InvalidTransition`."""
    status = parse_status(new)
    if current.finished and status is not current:
        raise InvalidTransition(kind, row_id, current, status)
    return status, at or utcnow()
