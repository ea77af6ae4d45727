"""The Ray backend with the Ray driver out of the caller's process.

A Ray driver whose head dies is ended by Ray about a minute later, and one whose head
comes back is stuck on the old cluster (WrongClusterID) until its process restarts. So
the bot never imports Ray: :class:`DriverBackend` runs a :class:`~runner.jobs.
ray_backend.RayBackend` in a driver subprocess and talks to it over a pipe. The bot's
runner gets one :class:`DriverWorker` per Ray worker actor. When the cluster cannot be
reached (the head died, the network is down, the driver process ended), the driver's
workers leave the runner: jobs wait in the queue (a running one goes back to it), the
status callback is told once, and a new driver process tries again every few seconds
until the cluster is back; then its workers join and the jobs run, without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.jobs.errors import WorkerLost

if TYPE_CHECKING:
    from runner import events as ev
    from runner.context import CancelToken
    from runner.jobs.scheduler import JobRunner
    from runner.jobs.spec import JobOutcome, JobSpec

log = logging.getLogger(__name__)

UNREACHABLE = "the GPU cluster is unreachable; your job is kept"
"""Why a job went back to the queue when the cluster went away (shown to its user)."""


# The driver process ------------------------------------------------------------------
class _RunnerShim:
    """What :class:`RayBackend` needs of a runner, in the driver process: workers it
    finds are announced to the bot."""

    def __init__(self, send: Callable[[tuple], None]):
        self.send = send
        self.on_worker_lost = None

    def add_worker(self, worker: Any) -> None:
        self.send(("worker", worker.name, dict(worker.info)))


def _gcs_target(address: str | None) -> tuple[str, int] | None:
    from runner.jobs.ray_connect import _host_port

    target = _host_port(address)
    if target is None:
        try:
            import ray

            target = _host_port(ray.get_runtime_context().gcs_address)
        except Exception:
            target = None
    return target


def _watch_cluster(address: str | None, send: Callable[[tuple], None], every_s: float) -> None:
    """End this driver process as soon as the head stops answering (Ray itself would
    only after a minute, and could not reconnect)."""
    target = _gcs_target(address)
    if target is None:
        return
    failures = 0
    while True:
        time.sleep(every_s)
        try:
            socket.create_connection(target, timeout=2).close()
            failures = 0
        except OSError:
            failures += 1
            if failures >= 2:
                with contextlib.suppress(Exception):
                    send(("down", f"the Ray head at {target[0]}:{target[1]} does not answer"))
                os._exit(3)


def driver_main(conn: Any, options: dict[str, Any]) -> None:
    """The driver process: connect, start or find the worker actors, run what the bot
    sends. Ends when the bot says stop, the pipe closes, or the cluster goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bot's to handle
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    from runner.jobs.errors import BackendError
    from runner.jobs.ray_backend import RayBackend
    from runner.settings import EngineSettings

    paths: dict[str, str] = {}
    backend = RayBackend(
        EngineSettings(**options["settings"]),
        address=options["address"],
        namespace=options["namespace"],
        workers=options["workers"],
        num_gpus=options["num_gpus"],
        lora_resolver=lambda name: Path(paths[name]) if name in paths else None,
        init_kwargs=options["init_kwargs"],
        discover_every_s=options["discover_every_s"],
    )
    shim = _RunnerShim(send)
    try:
        backend.start(shim)  # type: ignore[arg-type]
    except BackendError as exc:
        send(("down", str(exc)))
        return
    except Exception as exc:  # anything Ray raises while connecting
        send(("down", f"{type(exc).__name__}: {exc}"))
        return
    threading.Thread(
        target=_watch_cluster,
        args=(options["address"], send, options["health_every_s"]),
        daemon=True,
    ).start()
    send(("up", options["address"] or "a local cluster"))

    def run(batch_id: str, name: str, jobs: list, loras: dict[str, str]) -> None:
        paths.update(loras)
        worker = backend.workers.get(name)
        if worker is None:
            send(("lost", batch_id, "it left the cluster"))
            return
        try:
            outcomes = worker.run(jobs, lambda event: send(("event", batch_id, event)), {})
        except WorkerLost as exc:
            send(("lost", batch_id, exc.reason))
            send(("gone", name))
            backend._worker_lost(worker, exc)
            return
        except Exception as exc:
            send(("lost", batch_id, f"{type(exc).__name__}: {exc}"))
            return
        send(("result", batch_id, outcomes, worker.held))

    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "run":
                threading.Thread(target=run, args=message[1:], daemon=True).start()
            elif kind == "cancel":
                worker = backend.workers.get(message[1])
                if worker is not None:
                    with contextlib.suppress(Exception):
                        worker.cancel(message[2])
            elif kind == "stop":
                break
    finally:
        with contextlib.suppress(Exception):
            backend.stop()
        with contextlib.suppress(Exception):
            send(("stopped",))


# The bot's side -----------------------------------------------------------------------
class DriverWorker:
    """The bot's handle on one Ray worker actor, through the driver process (the
    :class:`~runner.jobs.worker.Worker` protocol)."""

    def __init__(self, backend: DriverBackend, name: str, info: Mapping[str, Any]):
        self.backend = backend
        self.name = name
        self.info = dict(info)
        self.held: dict[str, list[str]] = {
            "models": list(self.info.get("models", [])),
            "loras": list(self.info.get("loras", [])),
        }

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    def run(
        self,
        jobs: Sequence[JobSpec],
        emit: Callable[[ev.Event], None],
        tokens: Mapping[str, CancelToken],
    ) -> list[JobOutcome]:
        batch_id = uuid.uuid4().hex
        inbox: queue.Queue = queue.Queue()
        loras = self.backend.lora_paths(jobs)
        with self.backend._lock:
            if self.backend._generation_of.get(self.name) != self.backend._generation:
                raise WorkerLost(self.name, UNREACHABLE)
            self.backend._pending[batch_id] = inbox
        try:
            try:
                self.backend._send(("run", batch_id, self.name, list(jobs), loras))
            except (OSError, ValueError, AttributeError) as exc:
                raise WorkerLost(self.name, UNREACHABLE) from exc
            while True:
                message = inbox.get()
                if message[0] == "event":
                    emit(message[2])
                elif message[0] == "result":
                    self.held = message[3]
                    return message[2]
                else:  # lost
                    raise WorkerLost(self.name, message[2])
        finally:
            with self.backend._lock:
                self.backend._pending.pop(batch_id, None)

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            self.backend._send(("cancel", self.name, job_id))

    def affinity(self, job: JobSpec) -> int:
        return sum(2 for m in job.models if m in self.held.get("models", [])) + sum(
            1 for lora in job.loras if lora in self.held.get("loras", [])
        )

    def close(self) -> None:
        """Nothing: the driver process owns the actors."""


class DriverBackend:
    """Jobs on a Ray cluster through a driver subprocess that is started again whenever
    the cluster goes away (same arguments as :class:`~runner.jobs.ray_backend.
    RayBackend`). ``on_status(up, message)`` is called when the cluster becomes
    reachable or unreachable (once per change). ``start`` never fails because the
    cluster is down: jobs wait until it is up."""

    def __init__(
        self,
        settings: Any,
        *,
        address: str | None = None,
        namespace: str = "easel",
        workers: int = -1,
        num_gpus: float | None = None,
        lora_resolver: Callable[[str], Path | None] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        retry_every_s: float = 5.0,
        health_every_s: float = 1.0,
        discover_every_s: float = 10.0,
    ):
        from runner.jobs.ray_actor import _settings_payload

        self.options = {
            "settings": _settings_payload(settings),
            "address": address,
            "namespace": namespace,
            "workers": workers,
            "num_gpus": num_gpus,
            "init_kwargs": dict(init_kwargs or {}),
            "health_every_s": health_every_s,
            "discover_every_s": discover_every_s,
        }
        self.address = address
        self.lora_resolver = lora_resolver
        self.retry_every_s = retry_every_s
        self.on_status: Callable[[bool, str], None] | None = None
        self.up: bool | None = None  # None: not known yet
        self.message = ""
        self.runner: JobRunner | None = None
        self.workers: dict[str, DriverWorker] = {}
        self._pending: dict[str, queue.Queue] = {}
        self._generation = 0
        self._generation_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Any = None
        self._proc: Any = None
        self._thread: threading.Thread | None = None

    # Starting and stopping ------------------------------------------------------------
    def start(self, runner: JobRunner) -> list[DriverWorker]:
        """Start the driver process (in the background; workers join as they are
        ready)."""
        self.runner = runner
        self._thread = threading.Thread(
            target=self._supervise, name="easel-ray-driver", daemon=True
        )
        self._thread.start()
        return []

    def stop(self) -> None:
        """Stop the driver process (it kills the actors it started)."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self._send(("stop",))
        proc = self._proc
        if proc is not None:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if self._thread is not None:
            self._thread.join(10)

    def lora_paths(self, jobs: Sequence[JobSpec]) -> dict[str, str]:
        """The driver's files for the batch's LoRAs (the driver runs on this machine)."""
        out: dict[str, str] = {}
        if self.lora_resolver is None:
            return out
        for name in dict.fromkeys(lora for job in jobs for lora in job.loras):
            try:
                path = self.lora_resolver(name)
            except Exception:
                path = None
            if path is not None:
                out[name] = str(path)
        return out

    # The driver process ---------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _supervise(self) -> None:
        context = multiprocessing.get_context("spawn")
        while not self._stop.is_set():
            parent, child = context.Pipe()
            proc = context.Process(
                target=driver_main,
                args=(child, self.options),
                name="easel-ray-driver",
                daemon=True,
            )
            with self._lock:
                self._generation += 1
            self._conn, self._proc = parent, proc
            proc.start()
            child.close()
            reason = self._read(parent)
            with contextlib.suppress(Exception):
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            parent.close()
            self._lose_all(reason or UNREACHABLE)
            if self._stop.is_set():
                break
            self._set_status(False, reason or "the Ray driver process ended")
            self._stop.wait(self.retry_every_s)

    def _read(self, conn: Any) -> str:
        """Handle the driver's messages until it ends; returns why it ended."""
        reason = ""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return reason
            kind = message[0]
            if kind == "worker":
                self._add(message[1], message[2])
            elif kind == "gone":
                self._remove(message[1])
            elif kind in ("event", "result", "lost"):
                with self._lock:
                    inbox = self._pending.get(message[1])
                if inbox is not None:
                    inbox.put(message)
            elif kind == "up":
                self._set_status(True, f"connected to the Ray cluster at {message[1]}")
            elif kind == "down":
                reason = message[1]
            elif kind == "stopped":
                return reason

    def _add(self, name: str, info: dict[str, Any]) -> None:
        worker = DriverWorker(self, name, info)
        with self._lock:
            self.workers[name] = worker
            self._generation_of[name] = self._generation
        if self.runner is not None:
            self.runner.add_worker(worker)
        log.info("Ray worker %s ready (pid %s on %s)", name, info.get("pid"), info.get("host"))

    def _remove(self, name: str) -> None:
        with self._lock:
            self.workers.pop(name, None)
        if self.runner is not None:
            self.runner.remove_worker(name)

    def _lose_all(self, reason: str) -> None:
        """The driver is gone: its workers leave the runner and their batches go back to
        the queue."""
        with self._lock:
            names = list(self.workers)
            self.workers.clear()
            pending = list(self._pending.values())
        for name in names:
            if self.runner is not None:
                self.runner.remove_worker(name)
        for inbox in pending:
            inbox.put(("lost", "", UNREACHABLE))

    def _set_status(self, up: bool, message: str) -> None:
        changed = self.up is not up
        self.up, self.message = up, message
        if not changed:
            return
        (log.warning if not up else log.info)(
            "%s", message if up else f"the GPU cluster is unreachable ({message}); jobs wait"
        )
        if self.on_status is not None:
            try:
                self.on_status(up, message)
            except Exception:
                log.exception("the cluster status callback failed")
