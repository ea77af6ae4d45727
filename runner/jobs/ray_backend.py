"""The Ray backend: one worker actor per GPU on any machine of a Ray cluster.

The bot (the driver) keeps the queue, the fairness and the database; actors only run
batches. A batch goes to an actor as plain data; its events stream back as they happen
(a Ray streaming generator) and its images come back as bytes, through Ray's object
store, as do the LoRA files an actor lacks (fetched once per file). When an actor dies
mid-batch, the driver sees the call fail, puts the batch's jobs back at the front of the
queue, and another worker runs them.

Workers either start on each GPU machine with ``easel worker --ray-address ADDR``
(named ``easel-worker-HOST-PID-GPU`` in the ``easel`` namespace, owned by that process;
the driver finds them)
or are started by the driver itself (``workers=N``, or one per GPU in the cluster when
none are found).

This module holds the driver's side: :class:`LoraShipper`, :class:`RayWorker` (the
handle on one actor) and :class:`RayBackend` (attaching to and starting actors, adding
them to a runner). Connecting to the cluster lives in :mod:`runner.jobs.ray_connect`,
the actor itself in :mod:`runner.jobs.ray_actor`; their names are importable from here
as well.

Ray is optional (``pip install easel[ray]``); importing this module does not need it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import events as ev
from runner.context import CancelToken
from runner.jobs.errors import BackendError, WorkerLost
from runner.jobs.ray_actor import (
    DEFAULT_NAMESPACE,
    NAMED_PREFIX,
    RayWorkerActor,
    _settings_payload,
    actor_class,
    start_named_workers,
)
from runner.jobs.ray_connect import (
    AUTH_HELP,
    check_ray_address,
    connect_ray,
    import_ray,
    prepare_ray_auth,
)
from runner.jobs.spec import JobOutcome, JobSpec

if TYPE_CHECKING:
    from runner.jobs.scheduler import JobRunner
    from runner.settings import EngineSettings

__all__ = [
    "AUTH_HELP",
    "DEFAULT_NAMESPACE",
    "NAMED_PREFIX",
    "LoraShipper",
    "RayBackend",
    "RayWorker",
    "RayWorkerActor",
    "actor_class",
    "check_ray_address",
    "connect_ray",
    "import_ray",
    "prepare_ray_auth",
    "start_named_workers",
    "wait_until",
]

log = logging.getLogger(__name__)


class LoraShipper:
    """Puts LoRA files into the object store once per file content, for workers that lack
    them; ``resolve(name)`` gives the driver's file for a LoRA name (None: the workers
    must have it themselves)."""

    def __init__(self, resolve: Callable[[str], Path | None] | None = None):
        self.resolve = resolve
        self._refs: dict[tuple[str, int, int], tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def refs_for(self, names: Sequence[str]) -> dict[str, tuple[str, Any]]:
        """``{name: (sha256, object ref)}`` for the LoRA names this driver can resolve."""
        if self.resolve is None or not names:
            return {}
        ray = import_ray()
        out = {}
        for name in names:
            try:
                path = self.resolve(name)
            except Exception:
                path = None
            if path is None or not Path(path).is_file():
                continue
            stat = Path(path).stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            with self._lock:
                known = self._refs.get(key)
                if known is None:
                    data = Path(path).read_bytes()
                    known = (hashlib.sha256(data).hexdigest(), ray.put(data))
                    self._refs[key] = known
            out[name] = known
        return out


class RayWorker:
    """The driver's handle on one worker actor (the :class:`~runner.jobs.worker.Worker`
    protocol)."""

    def __init__(
        self,
        actor: Any,
        name: str,
        info: dict[str, Any] | None = None,
        shipper: LoraShipper | None = None,
    ):
        self.actor = actor
        self.name = name
        self.info = dict(info or {})
        self.shipper = shipper or LoraShipper()
        self.held: dict[str, list[str]] = {
            "models": list(self.info.get("models", [])),
            "loras": list(self.info.get("loras", [])),
        }

    @property
    def pid(self) -> int | None:
        """The actor's process id (as it last reported it)."""
        return self.info.get("pid")

    def run(
        self,
        jobs: Sequence[JobSpec],
        emit: Callable[[ev.Event], None],
        tokens: Mapping[str, CancelToken],
    ) -> list[JobOutcome]:
        """Send the batch to the actor, pass its events on, return its outcomes."""
        ray = import_ray()
        names = list(dict.fromkeys(lora for job in jobs for lora in job.loras))
        loras = self.shipper.refs_for(names)
        stream = self.actor.run.options(num_returns="streaming").remote(list(jobs), loras)
        outcomes: list[JobOutcome] | None = None
        try:
            for ref in stream:
                kind, payload = ray.get(ref)
                if kind == "event":
                    emit(payload)
                else:
                    outcomes, self.held = payload
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.ObjectLostError,
        ) as exc:
            raise WorkerLost(self.name, type(exc).__name__) from exc
        except ray.exceptions.ActorUnavailableError as exc:  # pragma: no cover - network trouble
            raise WorkerLost(self.name, "unreachable") from exc
        if outcomes is None:
            raise WorkerLost(self.name, "the batch ended without a result")
        return outcomes

    def cancel(self, job_id: str) -> None:
        """Pass a cancellation to the actor (it stops the job at its next step)."""
        self.actor.cancel.remote(job_id)

    def affinity(self, job: JobSpec) -> int:
        """2 per model the actor has loaded, 1 per LoRA it used recently."""
        return sum(2 for m in job.models if m in self.held.get("models", [])) + sum(
            1 for lora in job.loras if lora in self.held.get("loras", [])
        )

    def close(self) -> None:
        """Nothing: the backend owns the actors it started."""


class RayBackend:
    """Connects a :class:`~runner.jobs.scheduler.JobRunner` to worker actors on a Ray
    cluster.

    ``address``: the cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None
    starts a local one unless Ray is already initialised. ``workers``: how many actors
    this driver starts itself: 0 none (only workers from ``easel worker``), -1 one per GPU
    in the cluster (one CPU worker without GPUs) when no ``easel worker`` is found.
    ``num_gpus``: GPUs per actor the driver starts (default: 1 when the cluster has
    GPUs, else 0). ``replace_lost``: start a new actor for one of ours that died.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        address: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        workers: int = -1,
        num_gpus: float | None = None,
        lora_resolver: Callable[[str], Path | None] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        replace_lost: bool = True,
        discover_every_s: float = 10.0,
        ready_timeout_s: float = 300.0,
    ):
        self.settings = settings
        self.address = address
        self.namespace = namespace
        self.wanted = workers
        self.num_gpus = num_gpus
        self.shipper = LoraShipper(lora_resolver)
        self.init_kwargs = dict(init_kwargs or {})
        self.replace_lost = replace_lost
        self.discover_every_s = discover_every_s
        self.ready_timeout_s = ready_timeout_s
        self.runner: JobRunner | None = None
        self.workers: dict[str, RayWorker] = {}
        self._own: dict[str, Any] = {}  # actors this driver started, by name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._initialised_ray = False

    # Starting and stopping ----------------------------------------------------------------
    def connect(self) -> None:
        """``ray.init`` (unless already connected) in this backend's namespace."""
        if connect_ray(self.address, self.namespace, **self.init_kwargs):
            self._initialised_ray = True

    def start(self, runner: JobRunner) -> list[RayWorker]:
        """Connect, attach to the ``easel worker`` actors, start our own if wanted, add
        every worker to ``runner``; keeps looking for new workers in the background."""
        self.runner = runner
        self.connect()
        self.discover()
        if self.wanted > 0 or (self.wanted < 0 and not self.workers):
            count = self.wanted if self.wanted > 0 else max(1, int(self._cluster_gpus()))
            self._start_own(count)
        if not self.workers:
            raise BackendError(
                "no Ray workers: start `easel worker --ray-address ADDR` on a GPU machine"
            )
        runner.on_worker_lost = self._worker_lost
        self._monitor = threading.Thread(target=self._watch, name="easel-ray-monitor", daemon=True)
        self._monitor.start()
        return list(self.workers.values())

    def stop(self) -> None:
        """Stop watching, kill the actors this driver started, and disconnect if this
        backend connected."""
        self._stop.set()
        ray = import_ray()
        with self._lock:
            own = list(self._own.values())
            self._own.clear()
        for actor in own:
            try:
                ray.kill(actor)
            except Exception:  # pragma: no cover - already gone
                pass
        if self._initialised_ray and ray.is_initialized():
            ray.shutdown()

    # Workers ----------------------------------------------------------------------------
    def _cluster_gpus(self) -> float:
        ray = import_ray()
        return float(ray.cluster_resources().get("GPU", 0))

    def _add(self, name: str, actor: Any) -> RayWorker | None:
        ray = import_ray()
        try:
            info = ray.get(actor.ready.remote(), timeout=self.ready_timeout_s)
        except Exception as exc:
            log.warning("Ray worker %s is not ready: %s", name, exc)
            return None
        worker = RayWorker(actor, name, info, self.shipper)
        with self._lock:
            self.workers[name] = worker
        if self.runner is not None:
            self.runner.add_worker(worker)
        log.info(
            "Ray worker %s ready (pid %s on %s, %s)",
            name,
            info.get("pid"),
            info.get("host"),
            info.get("device"),
        )
        return worker

    def discover(self) -> list[RayWorker]:
        """Attach to named ``easel worker`` actors not known yet."""
        ray = import_ray()
        found = []
        try:
            names = ray.util.list_named_actors()
        except Exception:  # pragma: no cover
            log.exception("could not list Ray's named actors")
            return found
        for name in names:
            if (
                not isinstance(name, str)
                or not name.startswith(NAMED_PREFIX)
                or name in self.workers
            ):
                continue
            try:
                actor = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                continue
            worker = self._add(name, actor)
            if worker is not None:
                found.append(worker)
        return found

    def _start_own(self, count: int) -> None:
        gpus = (
            self.num_gpus
            if self.num_gpus is not None
            else (1.0 if self._cluster_gpus() >= 1 else 0.0)
        )
        cls = actor_class()
        payload = _settings_payload(self.settings)
        started = []
        for _ in range(count):
            name = f"easel-driver-{uuid.uuid4().hex[:8]}"
            options: dict[str, Any] = {"name": name, "num_gpus": gpus, "max_restarts": 0}
            if not gpus:
                options["num_cpus"] = 0  # CPU workers share the machine's cores
            actor = cls.options(**options).remote(payload, name)
            with self._lock:
                self._own[name] = actor
            started.append((name, actor))
        threads = [threading.Thread(target=self._add, args=item, daemon=True) for item in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _worker_lost(self, worker: Any, exc: WorkerLost) -> None:
        with self._lock:
            self.workers.pop(worker.name, None)
            own = self._own.pop(worker.name, None) is not None
        if own and self.replace_lost and not self._stop.is_set():
            log.info("starting a Ray worker to replace %s", worker.name)
            threading.Thread(target=self._start_own, args=(1,), daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.discover_every_s):
            try:
                self.discover()
            except Exception:  # pragma: no cover - keep watching
                log.exception("looking for new Ray workers failed")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (for tools and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
