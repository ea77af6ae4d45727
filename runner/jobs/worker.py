"""Workers execute batches of jobs. :class:`LocalWorker` runs them in this process on one
device through an :class:`~runner.environment.Environment`; the Ray backend wraps the
same class in an actor (``runner.jobs.ray_actor``).

A worker's ``run`` blocks until its batch is over, so the runner calls it on the
worker's own thread, never on an asyncio loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner import events as ev
from runner.context import CancelToken
from runner.errors import EaselError, JobCancelled, NodeExecutionError, WorkflowInvalid
from runner.jobs.batching import BATCH_EXTRA_KEY, SamplerBatch
from runner.jobs.spec import CANCELLED, DONE, FAILED, JobOutcome, JobSpec, OutputImage

if TYPE_CHECKING:
    from runner.environment import Environment
    from runner.settings import EngineSettings

log = logging.getLogger(__name__)

Emit = Callable[[ev.Event], None]


class Worker(Protocol):
    """What the runner needs of a worker (local thread or Ray actor)."""

    name: str

    def run(
        self, jobs: Sequence[JobSpec], emit: Emit, tokens: Mapping[str, CancelToken]
    ) -> list[JobOutcome]:
        """Run ``jobs`` (one, or a batch of compatible ones) and return one outcome per job,
        in order. Raise :class:`~runner.jobs.errors.WorkerLost` if the worker died."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask a running job to stop (its token is already cancelled)."""
        ...

    def affinity(self, job: JobSpec) -> int:
        """How well suited this worker is to ``job`` (higher: already holds its model...)."""
        ...

    def close(self) -> None:
        """Release the worker's resources."""
        ...


def call_job_hook(env: Environment, hook_name: str, **kwargs: Any) -> None:
    """Call a job lifecycle hook plugin by plugin: one that raises is logged and the
    others still run, and the worker carries on."""
    hook = getattr(env.pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})
        except Exception:
            log.exception("plugin %s raised in %s; the job goes on", impl.plugin_name, hook_name)


def _outputs_images(outputs: dict[str, dict[str, Any]]) -> list[OutputImage]:
    images = []
    for node_id, out in outputs.items():
        for item in out.get("images", []):
            path = item.get("path")
            if path is None:
                continue
            data = Path(path).read_bytes()
            images.append(
                OutputImage(
                    filename=item.get("filename") or Path(path).name,
                    data=data,
                    node_id=node_id,
                    path=path,
                )
            )
    return images


class LocalWorker:
    """Runs jobs on one device in this process. Several compatible jobs run as one batch:
    one thread per job, their sampler calls merged (``runner.jobs.batching``)."""

    def __init__(self, env: Environment, name: str = "local"):
        self.env = env
        self.name = name
        self._loras: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    # Worker protocol ---------------------------------------------------------------
    def run(
        self, jobs: Sequence[JobSpec], emit: Emit, tokens: Mapping[str, CancelToken]
    ) -> list[JobOutcome]:
        """Run one job, or a batch of compatible jobs sharing their sampler calls."""
        jobs = list(jobs)
        if len(jobs) == 1:
            job = jobs[0]
            return [self._run_one(job, emit, tokens.get(job.job_id) or CancelToken(), {}, 1)]
        batch = SamplerBatch([job.job_id for job in jobs])
        outcomes: dict[str, JobOutcome] = {}

        def member(job: JobSpec) -> None:
            try:
                token = tokens.get(job.job_id) or CancelToken()
                outcomes[job.job_id] = self._run_one(
                    job, emit, token, {BATCH_EXTRA_KEY: batch}, len(jobs)
                )
            finally:
                batch.leave(job.job_id)

        threads = [
            threading.Thread(
                target=member, args=(job,), name=f"{self.name}-job-{job.job_id}", daemon=True
            )
            for job in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [
            outcomes.get(job.job_id)
            or JobOutcome(
                job.job_id,
                FAILED,
                error="the job's thread ended without a result",
                worker=self.name,
            )
            for job in jobs
        ]

    def cancel(self, job_id: str) -> None:
        """Nothing to do: the job's token, shared with this thread, is already cancelled."""

    def affinity(self, job: JobSpec) -> int:
        """2 per model already loaded, 1 per LoRA used recently."""
        loaded = {c.name for c in self.env.models.loaded()}
        score = sum(2 for m in job.models if m in loaded)
        with self._lock:
            score += sum(1 for lora in job.loras if lora in self._loras)
        return score

    def held(self) -> dict[str, list[str]]:
        """Models loaded and LoRAs used recently (what routing prefers)."""
        with self._lock:
            loras = list(self._loras)
        return {"models": [c.name for c in self.env.models.loaded()], "loras": loras}

    def close(self) -> None:
        """Nothing to release: the environment belongs to whoever made it."""

    # Running -----------------------------------------------------------------------
    def _run_one(
        self, job: JobSpec, emit: Emit, token: CancelToken, extra: dict[str, Any], batch_size: int
    ) -> JobOutcome:
        env = self.env
        started = time.perf_counter()
        call_job_hook(
            env, "easel_job_started", job_id=job.job_id, user_id=job.user_id, workflow=job.workflow
        )
        outcome = JobOutcome(job.job_id, FAILED, worker=self.name, batch_size=batch_size)
        try:
            result = env.run(
                job.workflow,
                job_id=job.job_id,
                on_event=emit,
                cancel=token,
                previews=job.previews,
                extra=extra,
            )
            outcome.status = DONE
            outcome.outputs = result.outputs
            outcome.images = _outputs_images(result.outputs)
        except JobCancelled:
            outcome.status = CANCELLED
        except (WorkflowInvalid, NodeExecutionError) as exc:  # the executor emitted Failed
            outcome.error = str(exc)
        except EaselError as exc:
            outcome.error = str(exc)
            emit(ev.Failed(job.job_id, message=outcome.error))
        except Exception as exc:  # a bug must cost one job, not the worker
            log.exception("job %s failed unexpectedly on %s", job.job_id, self.name)
            outcome.error = f"internal error: {type(exc).__name__}: {exc}"
            emit(ev.Failed(job.job_id, message=outcome.error))
        outcome.seconds = time.perf_counter() - started
        self._remember_loras(job.loras)
        paths = [img.path for img in outcome.images if img.path]
        call_job_hook(
            env,
            "easel_job_finished",
            job_id=job.job_id,
            user_id=job.user_id,
            status=outcome.status,
            images=paths,
            error=outcome.error,
        )
        return outcome

    def _remember_loras(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._loras[name] = None
                self._loras.move_to_end(name)
            while len(self._loras) > 64:
                self._loras.popitem(last=False)


def local_workers(settings: EngineSettings, env: Environment | None = None) -> list[LocalWorker]:
    """One :class:`LocalWorker` per GPU (``env`` serves the configured GPU), or one on the
    CPU or MPS device. Extra GPUs get their own environments."""
    from runner.environment import Environment

    primary = env or Environment(settings)
    workers = [LocalWorker(primary, name=f"local:{primary.models.device}")]
    device = primary.models.device
    if device.type == "cuda" and settings.device in ("auto", "cuda"):
        import torch

        for index in range(torch.cuda.device_count()):
            if index == device.index:
                continue
            other = Environment(
                settings.model_copy(update={"gpu_index": index}), plugin_manager=primary.pm
            )
            workers.append(LocalWorker(other, name=f"local:cuda:{index}"))
    return workers
