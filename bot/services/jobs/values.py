"""The values the job service hands out: submissions, results for the poster, the
queue as shown, and what recovery found."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from db.models import Job


@dataclass(frozen=True)
class Submission:
    """A stored, queued job: its id, its 1-based place in the running order and an
    estimate of the wait in seconds (None until timings are known)."""

    job_id: int
    generation_id: int
    position: int
    seed: int | None
    estimated_wait_s: float | None


@dataclass(frozen=True)
class JobResult:
    """What the poster gets: how a job ended and where its images are."""

    job_id: int
    user_id: int
    generation_id: int | None
    status: str
    images: list[Path] = field(default_factory=list)
    error: str | None = None
    channel_id: int | None = None
    guild_id: int | None = None
    seed: int | None = None
    prompt: str = ""
    post_started_at: datetime | None = None
    """When an earlier try to post this result started (None if this is the first):
    the message may exist already, so the poster looks for it before sending again."""
    status_token: str | None = None
    """The interaction token of the job's private status, while it is valid."""
    status_channel_id: int | None = None
    status_message_id: int | None = None
    """The reply message that shows the job's status (reply-to-image), if any."""

    @property
    def maybe_posted(self) -> bool:
        """Whether an earlier try may have posted this result (look before sending)."""
        return self.post_started_at is not None

    @property
    def nonce(self) -> str:
        """A stable nonce for the post (Discord's ``enforce_nonce`` drops a repeat)."""
        return f"easel-job-{self.job_id}"


@dataclass(frozen=True)
class JobInfo:
    """One job as the queue shows it."""

    job_id: int
    user_id: int
    status: str
    position: int | None
    prompt: str = ""
    steps: int = 0
    priority: int = 0
    attempts: int = 0
    worker: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    estimated_wait_s: float | None = None


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`JobService.start` found from the previous run."""

    requeued: list[int]
    """Jobs that were running when the process stopped, queued again."""
    resumed: list[int]
    """Jobs queued again (all that wait, including the requeued ones), in order."""
    reposted: list[int]
    """Finished jobs whose result had not been posted, posted now."""
    paused: bool


Poster = Callable[[JobResult], "int | None | Awaitable[int | None]"]
"""Posts a job's result (sync or async); returns the message id, if any."""

StatusNotifier = Callable[[JobResult], "None | Awaitable[None]"]
"""Tells a job's private status (from a previous run) that the job is queued again
after a restart; gets a :class:`JobResult` whose ``status`` is ``queued``."""


def job_info(job: Job, position: int | None, estimated_wait_s: float | None = None) -> JobInfo:
    """A job row as the queue shows it, at ``position`` (None while it runs)."""
    request = (job.request or {}).get("request") or {}
    return JobInfo(
        job.id,
        job.user_id,
        job.status.value,
        position,
        request.get("prompt", ""),
        int(request.get("steps") or 0),
        job.priority,
        job.attempts,
        job.worker,
        job.created_at,
        job.started_at,
        estimated_wait_s,
    )


__all__ = [
    "JobInfo",
    "JobResult",
    "Poster",
    "RecoveryReport",
    "StatusNotifier",
    "Submission",
    "job_info",
]
