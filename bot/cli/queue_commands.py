"""``easel queue`` (what waits and runs, from the database), ``easel worker`` (Ray worker
actors for this machine's GPUs) and the Ray path of ``easel generate``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from bot.cli.common import handle_errors, load_settings, quiet_libraries
from runner.errors import EaselError


class RemoteJobFailed(EaselError):
    """A job run on a Ray worker failed; the message is the worker's."""

    def __init__(self, job_id: str, message: str):
        self.job_id = job_id
        super().__init__(f"job {job_id} failed on its worker: {message}")


def _ray_init_kwargs(settings: Any, address: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"namespace": settings.ray_namespace, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    return kwargs


def run_on_ray(
    settings: Any,
    env: Any,
    workflow: dict[str, Any],
    *,
    ray_address: str | None = None,
    on_event: Any = None,
) -> list[str]:
    """Run one workflow on a Ray worker (found in the cluster, or started for it), stream
    its events to ``on_event``, and write the images it sends back into the output folder.
    Returns their paths."""
    from runner.errors import JobCancelled
    from runner.files import write_atomic
    from runner.jobs import JobRunner, MemoryStore, make_job
    from runner.jobs.ray_backend import RayBackend, import_ray

    ray = import_ray()
    address = ray_address or settings.ray_address
    backend = RayBackend(
        settings,
        address=address,
        namespace=settings.ray_namespace,
        workers=settings.ray_workers,
        lora_resolver=env.models.lora_path,
    )
    store = MemoryStore()
    runner = JobRunner(store=store)
    if on_event is not None:
        runner.bus.add_listener(on_event)
    try:
        if not ray.is_initialized():
            ray.init(**_ray_init_kwargs(settings, address))
        backend.start(runner)
        runner.start()
        job = make_job("cli", workflow)
        runner.submit(job)
        runner.wait_idle()
    finally:
        runner.stop(cancel_running=True, timeout=10)
        backend.stop()
    outcome = store.outcomes["cli"]
    if outcome.status == "cancelled":
        raise JobCancelled("the job was cancelled")
    if outcome.status != "done":
        raise RemoteJobFailed("cli", outcome.error or "unknown error")
    paths = []
    for image in outcome.images:
        target = settings.output_dir / f"ray-{Path(image.filename).name}"
        counter = 1
        while target.exists():
            target = settings.output_dir / f"ray-{Path(image.filename).stem}-{counter}.png"
            counter += 1
        write_atomic(target, image.data)
        paths.append(str(target))
    return paths


def _format_row(info: Any) -> str:
    place = "running" if info.status == "running" else f"#{info.position}"
    worker = f" on {info.worker}" if info.status == "running" and info.worker else ""
    prio = f" prio {info.priority}" if info.priority else ""
    retry = f" attempt {info.attempts + 1}" if info.status == "queued" and info.attempts else ""
    prompt = info.prompt if len(info.prompt) <= 50 else info.prompt[:49] + "…"
    return f"{place:>8}  job {info.job_id:<6} user {info.user_id:<20} {info.steps:>3} steps{prio}{retry}{worker}  {prompt}"


@click.command("queue")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--user", "user_id", type=int, help="Only this Discord user's jobs.")
@handle_errors
def queue(as_json: bool, user_id: int | None) -> None:
    """Show the jobs that run and wait, in the order they will run (from the database)."""
    from bot.services.database import open_database
    from bot.services.jobs import queue_from_database

    settings = load_settings()
    with open_database(settings) as db:
        rows = [r for r in queue_from_database(db) if user_id is None or r.user_id == user_id]
    if as_json:
        click.echo(
            json.dumps([{k: v for k, v in vars(r).items()} for r in rows], indent=2, default=str)
        )
        return
    if not rows:
        click.echo("the queue is empty")
        return
    running = sum(1 for r in rows if r.status == "running")
    click.echo(f"{running} running, {len(rows) - running} waiting")
    for row in rows:
        click.echo(_format_row(row))


@click.command("worker")
@click.option(
    "--ray-address",
    required=True,
    help="The Ray cluster to join (auto, HOST:6379, ray://HOST:10001).",
)
@click.option(
    "--workers",
    "count",
    type=click.IntRange(1, None),
    help="Worker actors to start (default: one per GPU, one on a CPU-only machine).",
)
@click.option(
    "--num-gpus",
    type=click.FloatRange(0, None),
    help="GPUs per worker (default 1 on a GPU machine, 0 without).",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Start the workers and return; they stay in the cluster until killed.",
)
@handle_errors
def worker(ray_address: str, count: int | None, num_gpus: float | None, detach: bool) -> None:
    """Serve jobs from a bot started with --backend ray: one worker actor per GPU of this
    machine, pinned to it, using this machine's configuration and models folders. Runs
    until Ctrl-C (which stops the workers), restarting a worker that dies."""
    from runner.jobs.ray_backend import import_ray, start_named_workers

    quiet_libraries()
    settings = load_settings()
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(**_ray_init_kwargs(settings, ray_address))
        except ConnectionError as exc:
            raise click.ClickException(f"no Ray cluster at {ray_address}: {exc}") from None

    def start() -> list[tuple[str, Any]]:
        actors = start_named_workers(
            settings, count=count, num_gpus=num_gpus, namespace=settings.ray_namespace
        )
        for name, actor in actors:
            info = ray.get(actor.ready.remote())
            click.echo(
                f"worker {name} ready: pid {info['pid']} on {info['host']}, {info['device']}",
                err=True,
            )
        return actors

    actors = start()
    if detach:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo("serving jobs; Ctrl-C stops these workers", err=True)
    while not stop.wait(10):
        for name, actor in actors:
            try:
                ray.get(actor.info.remote(), timeout=30)
            except Exception as exc:  # dead or unreachable: start it again
                click.echo(
                    f"worker {name} is gone ({type(exc).__name__}); starting it again", err=True
                )
                actors = start()
                break
    for _, actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # pragma: no cover - already gone
            pass
    click.echo("workers stopped", err=True)
    sys.exit(0)


QUEUE_COMMANDS = (queue, worker)
"""The commands this module adds to ``easel``."""
