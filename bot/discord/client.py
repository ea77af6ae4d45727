"""The bot: a ``commands.Bot`` that receives its resources (settings, environment,
database, job service) through its constructor and loads its cogs in ``setup_hook``, as
in discord.py's ``examples/advanced_startup.py``.

Every generation is a job of the durable job service (:mod:`bot.services.jobs`), whose
poster is the bot's :meth:`~bot.discord.reporting.Reporter.post_result`: at start the
service queues again what a previous process left queued or running and posts the
results it never posted; each result is posted once.

Application commands are synced only when asked (``easel bot --sync`` or the owners'
``@bot sync``), never on every start: Discord rate-limits command creation.
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import ResultActions
from bot.discord.errors import command_error
from bot.discord.reporting import Reporter
from bot.discord.requests import RequestBuilder
from bot.discord.views import ResultButton
from bot.services.generation import GenerationService
from bot.services.loras import LoraLibrary
from bot.services.moderation import Gate
from bot.services.preferences import Preferences

log = logging.getLogger(__name__)

POST_GRACE_S = 3.0
"""At stop, how long posting may take beyond the running job's grace before the bot
disconnects anyway (Discord unreachable: the result is posted at the next start)."""

DEFAULT_COGS: tuple[str, ...] = (
    "bot.discord.cogs.imagine",
    "bot.discord.cogs.remix",
    "bot.discord.cogs.settings",
    "bot.discord.cogs.lora",
    "bot.discord.cogs.history",
    "bot.discord.cogs.queue",
    "bot.discord.cogs.privacy",
    "bot.discord.cogs.admin",
    "bot.discord.cogs.plugins",
    "bot.discord.cogs.workflows",
)


def intents() -> discord.Intents:
    """Default intents, without the privileged message-content intent: Discord still
    sends the content of messages that mention the bot, which is all it reads."""
    value = discord.Intents.default()
    value.message_content = False
    value.members = False
    value.presences = False
    return value


class EaselBot(commands.Bot):
    """easel's Discord client. Build it with its resources; ``start()`` it in a loop."""

    def __init__(
        self,
        *,
        settings,
        env,
        database,
        jobs=None,
        sync: bool = False,
        cogs: tuple[str, ...] = DEFAULT_COGS,
    ):
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            owner_ids=set(settings.owner_ids) or None,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=settings.guild_ready_timeout,
        )
        self.settings = settings
        self.env = env
        self.database = database
        self.sync_on_start = sync
        self.initial_cogs = cogs
        self.gate = Gate(settings)
        self.reporter = Reporter(self)
        if jobs is None:
            from bot.services.jobs import JobService

            jobs = JobService.create(database, settings, env)
        if jobs.poster is None:
            jobs.poster = self.reporter.post_result
        if getattr(jobs, "status_notifier", False) is None:
            jobs.status_notifier = self.reporter.resumed
        self.jobs = jobs
        self.generations = GenerationService(env, database, settings, jobs)
        self.loras = LoraLibrary(database, settings)
        self.preferences = Preferences(database, settings)
        self.requests = RequestBuilder(self)
        self.actions = ResultActions(self)
        self._background: set[asyncio.Task] = set()
        self._jobs_started = False
        self._jobs_stopped = False
        self._cluster_was_down = False

    async def setup_hook(self) -> None:
        """Start the job service (recovering what a previous run left: jobs queued or
        running run again, results never posted are posted), register the persistent
        buttons, load the cogs, and sync commands only when asked."""
        if self.jobs.loop is None:  # async posters are run on this loop
            self.jobs.loop = asyncio.get_running_loop()
        backend = getattr(self.jobs, "backend", None)
        if backend is not None and hasattr(backend, "on_status"):
            backend.on_status = self._cluster_status
        report = await asyncio.to_thread(self.jobs.start)
        self._jobs_started = True
        if report.requeued or report.resumed or report.reposted:
            log.warning(
                "recovered from the previous run: %d job(s) queued again (%d interrupted "
                "while running), %d result(s) to post",
                len(report.resumed),
                len(report.requeued),
                len(report.reposted),
            )
        if report.paused:
            log.warning("the queue is paused (an owner paused it): /queue resume starts it")
        self.add_dynamic_items(ResultButton)
        self.tree.on_error = self.on_app_command_error
        for name in self.initial_cogs:
            await self.load_extension(name)
        if self.sync_on_start:
            try:
                synced = await self.sync_commands()
            except Exception:  # a sync failure must not stop the bot
                log.exception(
                    "syncing application commands failed; the bot runs with the commands Discord has"
                )
            else:
                log.warning("synced %d application command(s): %s", len(synced), ", ".join(synced))
        if self.settings.preload_model and self.settings.backend == "local":
            self.spawn(self._preload())

    def _cluster_status(self, up: bool, message: str) -> None:
        """From the Ray backend's thread: the GPU cluster went away or came back. The
        owners are told once per change; jobs wait meanwhile and run when it is back."""
        if up and not self._cluster_was_down:
            return  # connected at start: nothing to tell
        self._cluster_was_down = not up
        text = (
            f"⚠️ The GPU cluster is unreachable ({message}). Jobs are kept and wait; "
            "they run when it is back (the bot reconnects by itself)."
            if not up
            else "✅ The GPU cluster is back; waiting jobs run now."
        )
        loop = self.loop if hasattr(self, "loop") else None
        if loop is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._tell_owners(text), loop)
        asyncio.run_coroutine_threadsafe(self.reporter.cluster_changed(up), loop)

    @property
    def cluster_down(self) -> bool:
        """Whether the GPU cluster is unreachable now (jobs are kept and wait)."""
        return self._cluster_was_down

    async def _tell_owners(self, text: str) -> None:
        for owner_id in self.settings.owner_ids:
            try:
                user = self.get_user(owner_id) or await self.fetch_user(owner_id)
                await user.send(text)
            except Exception:  # a closed DM must not hide the log line
                log.warning("could not tell owner %s: %s", owner_id, text)

    def spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` in the background, keeping a reference and logging failures."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _preload(self) -> None:
        # Loading weights is slow and synchronous: never on the event loop.
        try:
            await asyncio.to_thread(self.env.models.checkpoint, self.settings.default_model)
            log.info("model %s loaded", self.settings.default_model)
        except Exception:
            log.exception("could not preload the model %s", self.settings.default_model)

    async def sync_commands(self) -> list[str]:
        """Sync application commands to the configured guilds (instantly), or globally
        when none are configured. Returns the names synced."""
        names: list[str] = []
        if self.settings.guild_ids:
            for guild_id in self.settings.guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                names = [c.name for c in await self.tree.sync(guild=guild)]
        else:
            names = [c.name for c in await self.tree.sync()]
        return names

    async def on_ready(self) -> None:
        log.warning(
            "easel bot ready as %s (%s) in %d guild(s)",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
        )

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Any command error reaches the user as one sentence; details go to the log
        (see :func:`bot.discord.errors.command_error`)."""
        await command_error(interaction, error)

    async def on_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        """Mentions that are not commands (prompts for reply-to-image) are not errors."""
        if isinstance(error, commands.CommandNotFound | commands.CheckFailure):
            return
        log.error("command %s failed", ctx.command, exc_info=error)

    async def close(self) -> None:
        """Stop the job service (a running job gets ``shutdown_timeout_s`` to finish and
        be posted; waiting jobs stay queued in the database for the next start), then
        disconnect. Never waits on Discord: when posting does not finish in a few more
        seconds (Discord unreachable), the bot disconnects anyway, the posts in flight
        are abandoned, and those results are posted at the next start."""
        stopping: asyncio.Future | None = None
        try:
            if self._jobs_started and not self._jobs_stopped:
                self._jobs_stopped = True
                grace = self.settings.shutdown_timeout_s
                stopping = asyncio.ensure_future(asyncio.to_thread(self.jobs.stop, timeout=grace))
                done, _ = await asyncio.wait({stopping}, timeout=grace + POST_GRACE_S)
                if not done:
                    log.warning(
                        "Discord did not answer within %.0f s: stopping without waiting; "
                        "results not posted yet are posted at the next start",
                        grace + POST_GRACE_S,
                    )
        finally:
            # Posts still waiting on Discord are cancelled when the loop ends (asyncio.run
            # cancels what is left), which lets the posting thread, and the stop, end.
            await super().close()
