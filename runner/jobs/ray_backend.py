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

Ray is optional (``pip install easel[ray]``); importing this module does not need it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import events as ev
from runner.context import CancelToken
from runner.jobs.errors import BackendError, WorkerLost
from runner.jobs.spec import FAILED, JobOutcome, JobSpec

if TYPE_CHECKING:
    from runner.jobs.scheduler import JobRunner
    from runner.settings import EngineSettings

log = logging.getLogger(__name__)

NAMED_PREFIX = "easel-worker-"
"""Names of the detached actors started by ``easel worker``."""
DEFAULT_NAMESPACE = "easel"


def import_ray() -> Any:
    """The ``ray`` module, or :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError("the Ray backend needs Ray: pip install 'easel[ray]'") from exc
    return ray


AUTH_HELP = (
    "give easel the head's token (`ray get-auth-token` on the head prints it) as "
    "RAY_AUTH_TOKEN or in a file named by RAY_AUTH_TOKEN_PATH, or start the head and "
    "every worker with RAY_AUTH_MODE=disabled on a private network"
)


def _token_given(environ: Mapping[str, str]) -> str | None:
    """Where this process's Ray token comes from, if one is given."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    return None


def prepare_ray_auth(environ: dict[str, str] | None = None) -> None:
    """Ray 2.60 sends a token only in token mode: when a token is given (RAY_AUTH_TOKEN
    or RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset, turn token mode on for this
    process (and the processes it starts)."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE") or not _token_given(environ):
        return
    environ["RAY_AUTH_MODE"] = "token"
    if environ is os.environ and "ray" in __import__("sys").modules:
        try:  # Ray read its configuration at import: read it again
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except Exception:  # pragma: no cover - another Ray version
            log.debug("could not refresh Ray's configuration", exc_info=True)


def _host_port(address: str | None) -> tuple[str, int] | None:
    if not address or address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, in one sentence, when nothing answers at ``address`` (``HOST:PORT``)
    or its cluster refuses this process's authentication (Ray itself retries for a
    minute, logging InvalidAuthToken, then says only that it could not connect)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        raise BackendError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one there "
            "with `ray start --head`, or correct the Ray address"
        ) from None
    ray = import_ray()
    try:
        from ray._raylet import GcsClient
    except ImportError:  # pragma: no cover - another Ray version
        return
    try:
        GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        given = _token_given(os.environ)
        if given:
            problem = f"rejected the authentication token from {given}"
        else:
            problem = (
                "requires an authentication token (Ray turns token authentication on by default)"
            )
        raise BackendError(f"the Ray cluster at {address} {problem}: {AUTH_HELP}") from None
    except Exception:  # anything else: ray.init reports it
        log.debug("probing the Ray cluster at %s failed", address, exc_info=True)


def connect_ray(address: str | None, namespace: str, **init_kwargs: Any) -> bool:
    """``ray.init`` at ``address`` (None: a local cluster) in ``namespace``, without the
    workers' logs on this terminal, unless Ray is connected already (False then).
    Authentication problems and a missing cluster raise :class:`BackendError` with one
    sentence saying what to do."""
    prepare_ray_auth()
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_ray_address(address)
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, **init_kwargs}
    if address:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as exc:
        raise BackendError(
            f"the Ray cluster at {address} refused this process: {AUTH_HELP}"
        ) from exc
    except ConnectionError as exc:
        raise BackendError(f"no Ray cluster at {address!r}: {exc}") from exc
    return True


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


def _settings_payload(settings: EngineSettings) -> dict[str, Any]:
    from runner.settings import EngineSettings as Base

    return {k: v for k, v in settings.model_dump(mode="json").items() if k in Base.model_fields}


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


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (for tools and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
