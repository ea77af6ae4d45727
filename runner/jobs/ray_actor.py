"""The Ray worker actor: :class:`RayWorkerActor` runs a
:class:`~runner.jobs.worker.LocalWorker` in an actor process and streams a batch's
events back to the driver; :func:`actor_class` wraps it for Ray and
:func:`start_named_workers` starts the named actors of ``easel worker``.

Ray is optional (``pip install easel[ray]``); importing this module does not need it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runner import events as ev
from runner.context import CancelToken
from runner.jobs.errors import BackendError
from runner.jobs.ray_connect import import_ray
from runner.jobs.spec import FAILED, JobOutcome, JobSpec

if TYPE_CHECKING:
    from runner.settings import EngineSettings

log = logging.getLogger(__name__)

NAMED_PREFIX = "easel-worker-"
"""Names of the detached actors started by ``easel worker``."""
DEFAULT_NAMESPACE = "easel"


def _quiet_environment() -> None:
    for key, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)


class RayWorkerActor:
    """Runs in the actor process: a :class:`~runner.jobs.worker.LocalWorker` on the
    actor's device, fed batches by the driver. Wrapped with ``ray.remote`` by
    :func:`actor_class`."""

    def __init__(self, settings: dict[str, Any], name: str):
        _quiet_environment()
        self.name = name
        self.settings_data = settings
        self._local = None
        self._tokens: dict[str, CancelToken] = {}
        self._cancelled_early: set[str] = set()
        self._lock = threading.Lock()

    def _worker(self):
        with self._lock:
            if self._local is None:
                from runner.environment import Environment
                from runner.jobs.worker import LocalWorker
                from runner.settings import EngineSettings

                settings = EngineSettings(**self.settings_data)
                if settings.threads:
                    import torch

                    torch.set_num_threads(settings.threads)
                self._local = LocalWorker(Environment(settings), name=self.name)
            return self._local

    def ready(self) -> dict[str, Any]:
        """Build the environment (so the first job does not pay for it) and describe this
        worker."""
        worker = self._worker()
        return {**self.info(), "device": str(worker.env.models.device)}

    def info(self) -> dict[str, Any]:
        """Process id, host, and what this worker holds (for routing)."""
        held = self._local.held() if self._local is not None else {"models": [], "loras": []}
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), **held}

    def cancel(self, job_id: str) -> None:
        """Cancel a job of the batch running now (or about to)."""
        with self._lock:
            token = self._tokens.get(job_id)
            if token is None:
                self._cancelled_early.add(job_id)
        if token is not None:
            token.cancel()

    def _fetch_loras(self, env: Any, loras: Mapping[str, Sequence[Any]]) -> None:
        import ray

        from runner.files import write_atomic

        for name, (sha256, ref) in loras.items():
            if name in env.models.extra_lora_paths and env.models.extra_lora_paths[name].is_file():
                continue
            target = env.settings.lora_library_dir / f"{sha256}.safetensors"
            if not target.is_file():
                data = ray.get(ref)
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise BackendError(f"LoRA {name!r} arrived damaged (its sha256 does not match)")
                write_atomic(target, data)
            env.models.extra_lora_paths[name] = target

    def run(self, jobs: list[JobSpec], loras: dict[str, Any]):
        """Run a batch; yields ``("event", event)`` as the jobs progress, then
        ``("result", (outcomes, held))``."""
        worker = self._worker()
        events: queue.Queue = queue.Queue()
        with self._lock:
            tokens = {job.job_id: CancelToken() for job in jobs}
            for job_id, token in tokens.items():
                if job_id in self._cancelled_early:
                    self._cancelled_early.discard(job_id)
                    token.cancel()
            self._tokens.update(tokens)

        def work() -> None:
            try:
                self._fetch_loras(worker.env, loras)
                outcomes = worker.run(jobs, lambda e: events.put(("event", e)), tokens)
            except Exception as exc:  # reported as failed jobs, the actor lives on
                log.exception("batch failed on %s", self.name)
                outcomes = [
                    JobOutcome(
                        j.job_id, FAILED, error=f"{type(exc).__name__}: {exc}", worker=self.name
                    )
                    for j in jobs
                ]
            for outcome in outcomes:
                for image in outcome.images:
                    image.path = None  # a path on this machine means nothing to the driver
            events.put(("result", (outcomes, worker.held())))

        thread = threading.Thread(target=work, name=f"{self.name}-batch", daemon=True)
        thread.start()
        try:
            while True:
                kind, payload = events.get()
                if kind == "event" and isinstance(payload, ev.Finished):
                    payload = ev.Finished(
                        payload.job_id,
                        executed=payload.executed,
                        cached=payload.cached,
                        seconds=payload.seconds,
                    )
                yield kind, payload
                if kind == "result":
                    return
        finally:
            thread.join()
            with self._lock:
                for job_id in tokens:
                    self._tokens.pop(job_id, None)


def actor_class(max_concurrency: int = 8) -> Any:
    """:class:`RayWorkerActor` as a Ray actor class (threaded, so ``cancel`` and ``info``
    are answered while a batch runs)."""
    ray = import_ray()
    return ray.remote(max_concurrency=max_concurrency)(RayWorkerActor)


def _settings_payload(settings: EngineSettings) -> dict[str, Any]:
    from runner.settings import EngineSettings as Base

    return {k: v for k, v in settings.model_dump(mode="json").items() if k in Base.model_fields}


def start_named_workers(
    settings: EngineSettings,
    *,
    count: int | None = None,
    num_gpus: float | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    detached: bool = False,
) -> list[tuple[str, Any]]:
    """Start (or find) this process's worker actors, one per local GPU (or ``count``),
    pinned to this node; for ``easel worker``. Call after ``ray.init``.

    Names are unique per process and GPU (``easel-worker-HOST-PID-INDEX``), so two
    ``easel worker`` on one machine get their own actors. Without ``detached`` the
    actors belong to this process: Ray ends them with it (Ctrl-C, a crash, SIGKILL) and
    never those of another process."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    try:
        import torch

        local_gpus = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        local_gpus = 0
    gpus = num_gpus if num_gpus is not None else (1.0 if local_gpus else 0.0)
    count = max(1, count if count is not None else local_gpus)
    host = socket.gethostname().split(".")[0]
    cls = actor_class()
    payload = _settings_payload(settings)
    actors = []
    for index in range(count):
        name = f"{NAMED_PREFIX}{host}-{os.getpid()}-{index}"
        options: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "get_if_exists": True,
            "num_gpus": gpus,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        }
        if detached:
            options["lifetime"] = "detached"
        if not gpus:
            options["num_cpus"] = 0
        actor = cls.options(**options).remote(payload, name)
        actors.append((name, actor))
    return actors
