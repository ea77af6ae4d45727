"""One workflow run on a Ray worker from a process that is not the bot (``easel generate
--backend ray``): a runner with a memory store, the :class:`RayBackend`, and the images
the worker sends back written into the output folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import JobCancelled
from runner.files import write_atomic
from runner.jobs.errors import RemoteJobFailed
from runner.jobs.scheduler import JobRunner
from runner.jobs.spec import make_job
from runner.jobs.store import MemoryStore

JOB_ID = "cli"


def ray_init_kwargs(namespace: str, address: str | None) -> dict[str, Any]:
    """``ray.init`` arguments for a driver in ``namespace`` at ``address`` (None: a local
    cluster), without the workers' logs on this terminal."""
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    return kwargs


def run_on_ray(
    settings: Any,
    workflow: dict[str, Any],
    *,
    address: str | None = None,
    lora_resolver: Callable[[str], Path | None] | None = None,
    on_event: Callable[[Any], None] | None = None,
) -> list[str]:
    """Run one workflow on a Ray worker (found in the cluster at ``address``, default
    ``settings.ray_address``, or started for it), stream its events to ``on_event``, and
    write the images it sends back into ``settings.output_dir`` as ``ray-<name>``.
    Returns their paths. Raises :class:`JobCancelled` or :class:`RemoteJobFailed`."""
    from runner.jobs.ray_backend import RayBackend
    from runner.jobs.ray_connect import connect_ray

    address = address or settings.ray_address
    backend = RayBackend(
        settings,
        address=address,
        namespace=settings.ray_namespace,
        workers=settings.ray_workers,
        lora_resolver=lora_resolver,
    )
    store = MemoryStore()
    runner = JobRunner(store=store)
    if on_event is not None:
        runner.bus.add_listener(on_event)
    try:
        connect_ray(address, settings.ray_namespace)
        backend.start(runner)
        runner.start()
        runner.submit(make_job(JOB_ID, workflow))
        runner.wait_idle()
    finally:
        runner.stop(cancel_running=True, timeout=10)
        backend.stop()
    outcome = store.outcomes[JOB_ID]
    if outcome.status == "cancelled":
        raise JobCancelled("the job was cancelled")
    if outcome.status != "done":
        raise RemoteJobFailed(JOB_ID, outcome.error or "unknown error")
    return [str(_write(settings.output_dir, image)) for image in outcome.images]


def _write(output_dir: Path, image: Any) -> Path:
    name = Path(image.filename)
    target = output_dir / f"ray-{name.name}"
    counter = 1
    while target.exists():
        target = output_dir / f"ray-{name.stem}-{counter}.png"
        counter += 1
    write_atomic(target, image.data)
    return target


__all__ = ["RemoteJobFailed", "ray_init_kwargs", "run_on_ray"]
