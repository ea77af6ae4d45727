"""The job machinery's exceptions; each names the job, worker or value at fault."""

from __future__ import annotations

from runner.errors import EaselError


class JobError(EaselError):
    """Base class of the scheduling and execution errors."""


class UnknownJob(JobError):
    """No waiting or running job has this id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no waiting or running job {job_id!r}")


class DuplicateJob(JobError):
    """A job with this id is already waiting or running."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id!r} is already waiting or running")


class WorkerLost(JobError):
    """A worker died (its process or machine went away) while it held jobs."""

    def __init__(self, worker: str, reason: str = ""):
        self.worker = worker
        self.reason = reason
        super().__init__(f"worker {worker!r} was lost" + (f": {reason}" if reason else ""))


class BackendError(JobError):
    """A backend could not start (Ray missing, no cluster at the address, no workers)."""


class RunnerStopped(JobError):
    """The job runner was stopped; it takes no more jobs."""

    def __init__(self) -> None:
        super().__init__("the job runner is stopped and takes no more jobs")


class RemoteJobFailed(JobError):
    """A job run on a Ray worker failed; the message is the worker's."""

    def __init__(self, job_id: str, message: str):
        self.job_id = job_id
        super().__init__(f"job {job_id} failed on its worker: {message}")
