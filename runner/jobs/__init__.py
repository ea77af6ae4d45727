"""Jobs: fair scheduling, workers (local threads or Ray actors), batching and events.

Nothing here knows about databases or Discord: persistence plugs in through
:class:`JobStore`. Typical use::

    runner = JobRunner(local_workers(settings, env), max_batch=4).start()
    position = runner.submit(make_job("42", workflow, user_id=1234))
    async for event in throttled(runner.bus.subscribe("42"), 2.0): ...
"""

from __future__ import annotations

from runner.jobs.batching import SamplerBatch
from runner.jobs.errors import (
    BackendError,
    DuplicateJob,
    JobError,
    RemoteJobFailed,
    RunnerStopped,
    UnknownJob,
    WorkerLost,
)
from runner.jobs.events import (
    EventBus,
    JobEnded,
    JobRequeued,
    Subscription,
    Throttle,
    is_terminal,
    throttled,
)
from runner.jobs.queue import FairQueue, fair_order
from runner.jobs.scheduler import JobRunner
from runner.jobs.slots import RunningJob
from runner.jobs.spec import (
    CANCELLED,
    DONE,
    FAILED,
    JobOutcome,
    JobSpec,
    OutputImage,
    batch_key,
    make_job,
    workflow_resources,
    workflow_steps,
)
from runner.jobs.store import JobStore, MemoryStore
from runner.jobs.worker import LocalWorker, Worker, call_job_hook, local_workers

__all__ = [
    "BackendError",
    "CANCELLED",
    "DONE",
    "DuplicateJob",
    "EventBus",
    "FAILED",
    "FairQueue",
    "JobEnded",
    "JobError",
    "JobOutcome",
    "JobRequeued",
    "JobRunner",
    "JobSpec",
    "JobStore",
    "LocalWorker",
    "MemoryStore",
    "OutputImage",
    "RemoteJobFailed",
    "RunnerStopped",
    "RunningJob",
    "SamplerBatch",
    "Subscription",
    "Throttle",
    "UnknownJob",
    "Worker",
    "WorkerLost",
    "batch_key",
    "call_job_hook",
    "fair_order",
    "is_terminal",
    "local_workers",
    "make_job",
    "throttled",
    "workflow_resources",
    "workflow_steps",
]
