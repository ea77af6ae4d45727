"""``easel bot``: run the Discord bot from configuration."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

import click

from bot.cli.common import close_environment, handle_errors, load_settings, make_environment

log = logging.getLogger("bot.discord")

STOP_DEADLINE_S = 8.0
"""After a stop request, the longest the bot may take beyond ``shutdown_timeout_s``
before it exits anyway (its waiting jobs are in the database either way)."""


class DiscordUnreachable(Exception):
    """Discord (or the configured REST base) could not be reached at login."""


class StopRequest:
    """SIGTERM/SIGINT: the first closes the bot (cleanly, bounded by a deadline after
    which the process exits anyway); a second exits at once. Jobs are in the database
    before they are acknowledged, so nothing waiting is lost either way."""

    def __init__(self, bot, deadline_s: float):
        self.bot = bot
        self.deadline_s = deadline_s
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count > 1:
            self._exit_now("a second stop request")
            return
        log.warning("stopping (waiting jobs stay queued for the next start)")
        timer = threading.Timer(
            self.deadline_s, self._exit_now, args=(f"the stop took over {self.deadline_s:.0f} s",)
        )
        timer.daemon = True
        timer.start()
        asyncio.ensure_future(self.bot.close())

    @property
    def requested(self) -> bool:
        return self.count > 0

    @staticmethod
    def _exit_now(why: str) -> None:
        log.error("%s: exiting now; waiting jobs stay queued for the next start", why)
        logging.shutdown()
        os._exit(0)


def make_job_service(settings, env, database):
    """The durable job service for ``settings.backend``: local workers (one per GPU, in
    this process) or Ray workers on the cluster at ``settings.ray_address``. Its poster
    is set by the bot."""
    from bot.services.jobs import JobService

    return JobService.create(database, settings, env)


async def run_bot(settings, env, *, sync: bool) -> None:
    """Open the database (migrations applied, off the event loop), then run the bot until
    it is closed or the process gets SIGTERM/SIGINT."""
    import aiohttp

    from bot.discord.client import EaselBot
    from bot.services.database import open_database

    database = await asyncio.to_thread(open_database, settings)
    async with database:
        jobs = make_job_service(settings, env, database)
        bot = EaselBot(settings=settings, env=env, database=database, jobs=jobs, sync=sync)
        loop = asyncio.get_running_loop()
        stop = StopRequest(bot, settings.shutdown_timeout_s + STOP_DEADLINE_S)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
                pass
        async with bot:
            try:
                await bot.start(settings.discord_token)
            except (OSError, aiohttp.ClientError) as exc:
                if stop.requested:  # closing cut a connection attempt short
                    return
                raise DiscordUnreachable(str(exc) or type(exc).__name__) from exc


@click.command("bot")
@click.option(
    "--sync",
    is_flag=True,
    help="Sync application commands to the configured guilds (or globally) at start.",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where jobs run (default: the `backend` setting, else local).",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster address, e.g. HOST:6379 or ray://HOST:10001 (with --backend ray; "
    "default: the `ray_address` setting).",
)
@handle_errors  # a damaged database or an unusable data folder: one sentence, exit 1
def bot(sync: bool, backend: str | None, ray_address: str | None) -> None:
    """Run the Discord bot (token from DISCORD_TOKEN or the config file).

    Application commands are synced only with --sync or the owners' `@bot sync`, never on
    every start (Discord limits how often commands may be created). Jobs are stored in
    the database before they are acknowledged; those left queued or running by a
    previous run (a crash, a restart) run again at the next start, and each result is
    posted once.
    """
    from bot.discord.config import BadDiscordUrl, apply_discord_urls
    from runner.jobs.errors import BackendError

    settings = load_settings(backend=backend, ray_address=ray_address)
    if not settings.discord_token:
        raise click.ClickException(
            "no Discord token: set DISCORD_TOKEN or discord_token in the config file"
        )
    if settings.backend == "ray":
        from runner.jobs.ray_connect import import_ray

        try:
            import_ray()
        except BackendError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        urls = apply_discord_urls(settings.discord_api_base, settings.discord_gateway_url)
    except BadDiscordUrl as exc:
        raise click.ClickException(str(exc)) from None
    log.info("Discord REST %s, gateway %s", urls.api_base, urls.gateway)
    log.info(
        "jobs run on the %s backend%s",
        settings.backend,
        f" (Ray at {settings.ray_address or 'a local cluster'})"
        if settings.backend == "ray"
        else "",
    )
    env = make_environment(settings)
    try:
        asyncio.run(run_bot(settings, env, sync=sync))
    except KeyboardInterrupt:
        pass
    except BackendError as exc:
        raise click.ClickException(str(exc)) from None
    except DiscordUnreachable as exc:
        raise click.ClickException(
            f"Discord is unreachable at {urls.api_base} ({exc}); check the network or "
            "DISCORD_API_BASE, then start the bot again (queued jobs are kept)"
        ) from None
    finally:
        close_environment(env)
