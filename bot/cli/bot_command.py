"""``easel bot``: run the Discord bot from configuration."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from bot.cli.common import make_environment

log = logging.getLogger("bot.discord")


def load_bot_settings():
    """The bot's settings (file + environment), or a ClickException naming the problem."""
    from pydantic import ValidationError

    from bot.discord.settings import BotSettings

    try:
        return BotSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"configuration is invalid: {problems}") from None


def make_queue(settings, backend: str):
    """The job queue for ``backend``: the in-process queue (local), or the job service's
    Ray backend when it is installed."""
    if backend == "local":
        from bot.discord.local_queue import LocalJobQueue

        return LocalJobQueue(workers=1, max_per_user=settings.max_queued_per_user)
    raise click.ClickException(
        f"the {backend!r} backend is not available in this build of the bot yet; use --backend local"
    )


async def run_bot(settings, env, queue, *, sync: bool) -> None:
    """Open the database (migrations applied, off the event loop), then run the bot until
    it is closed or the process gets SIGTERM/SIGINT."""
    from bot.discord.client import EaselBot
    from bot.services.database import aopen_database

    database = await aopen_database(settings)
    async with database:
        bot = EaselBot(settings=settings, env=env, database=database, queue=queue, sync=sync)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
                pass
        async with bot:
            await bot.start(settings.discord_token)


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
@click.option("--ray-address", default=None, help="Ray cluster address (with --backend ray).")
def bot(sync: bool, backend: str | None, ray_address: str | None) -> None:
    """Run the Discord bot (token from DISCORD_TOKEN or the config file).

    Application commands are synced only with --sync or the owners' `@bot sync`, never on
    every start (Discord limits how often commands may be created).
    """
    from bot.discord.config import BadDiscordUrl, apply_discord_urls

    settings = load_bot_settings()
    if not settings.discord_token:
        raise click.ClickException(
            "no Discord token: set DISCORD_TOKEN or discord_token in the config file"
        )
    try:
        urls = apply_discord_urls(settings.discord_api_base, settings.discord_gateway_url)
    except BadDiscordUrl as exc:
        raise click.ClickException(str(exc)) from None
    log.info("Discord REST %s, gateway %s", urls.api_base, urls.gateway)
    queue = make_queue(settings, backend or getattr(settings, "backend", None) or "local")
    env = make_environment(settings)
    try:
        asyncio.run(run_bot(settings, env, queue, sync=sync))
    except KeyboardInterrupt:
        pass
    finally:
        env.close()
