"""``easel queue`` (what waits and runs, from the database) and ``easel worker`` (Ray
worker actors for this machine's GPUs). The Ray path of ``easel generate`` is
:func:`runner.jobs.ray_run.run_on_ray`."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from bot.cli.common import handle_errors, load_settings, quiet_libraries


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
    help="Start detached workers and return; they stay in the cluster until killed "
    "(without it they end with this command).",
)
@handle_errors
def worker(ray_address: str, count: int | None, num_gpus: float | None, detach: bool) -> None:
    """Serve jobs from a bot started with --backend ray: one worker actor per GPU of this
    machine, pinned to it, using this machine's configuration and models folders. Runs
    until Ctrl-C (which stops this command's workers, never another's), restarting a
    worker that dies. A cluster with token authentication (Ray's default) needs its
    token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH."""
    from runner.jobs.ray_actor import start_named_workers
    from runner.jobs.ray_connect import connect_ray, import_ray

    quiet_libraries()
    settings = load_settings()
    connect_ray(ray_address, settings.ray_namespace)
    ray = import_ray()

    def start() -> list[tuple[str, Any]]:
        actors = start_named_workers(
            settings,
            count=count,
            num_gpus=num_gpus,
            namespace=settings.ray_namespace,
            detached=detach,
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
