"""The job service's errors; ``str(exc)`` is a sentence for the user."""

from __future__ import annotations

from bot.services.errors import ServiceError


class JobServiceError(ServiceError):
    """Base class of the job service's errors; ``str(exc)`` is a sentence for the user."""


class QueueFull(JobServiceError):
    """The user already has as many jobs waiting as allowed."""

    def __init__(self, user_id: int, waiting: int, limit: int):
        self.user_id = user_id
        self.waiting = waiting
        self.limit = limit
        super().__init__(
            f"You already have {waiting} job{'s' if waiting != 1 else ''} waiting or running, "
            f"and the limit is {limit}. Please wait for one to finish (or cancel one) and try again."
        )


class JobNotFound(JobServiceError):
    """No such job, or not one of the caller's (which is reported the same way)."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"There is no job {job_id} of yours.")


class JobAlreadyFinished(JobServiceError):
    """The job ended already, so it cannot be cancelled."""

    def __init__(self, job_id: int, status: str):
        self.job_id = job_id
        self.status = status
        super().__init__(f"Job {job_id} is already {status}.")


class NotAllowed(JobServiceError):
    """Only the bot's owners may pause, resume or clear the queue."""

    def __init__(self, actor_id: int, action: str):
        self.actor_id = actor_id
        self.action = action
        super().__init__(f"Only the bot's owners may {action} the queue.")


__all__ = ["JobAlreadyFinished", "JobNotFound", "JobServiceError", "NotAllowed", "QueueFull"]
