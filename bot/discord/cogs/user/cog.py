"""Per-user commands. Every reply is ephemeral: these are the user's own data."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import say
from bot.discord.cogs.user import texts
from bot.discord.errors import friendly
from bot.discord.views import ConfirmView, ResultButton
from bot.services.loras import LoraLibrary
from bot.services.parsing import ParseError, parse_size
from bot.services.userdata import aforget_user
from db import users as db_users

PAGE_SIZE = 5

log = logging.getLogger(__name__)


class UserCog(commands.Cog):
    """Seeds, settings, LoRAs, history, the queue and data rights."""

    lora = app_commands.Group(name="lora", description="Your LoRA library")

    def __init__(self, bot):
        self.bot = bot
        self.library = LoraLibrary(bot.database, bot.settings)

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await say(interaction, f"⚠️ {friendly(getattr(error, 'original', error))}")

    # -- seeds and settings -------------------------------------------------------------
    @app_commands.command(name="seed")
    @app_commands.describe(
        policy="How seeds are chosen when you give none", value="The seed for the fixed policy"
    )
    @app_commands.choices(
        policy=[app_commands.Choice(name=p, value=p) for p in ("random", "fixed", "increment")]
    )
    async def seed(
        self,
        interaction: discord.Interaction,
        policy: str | None = None,
        value: app_commands.Range[int, 0, 2**53 - 1] | None = None,
    ) -> None:
        """Show your seed policy, or set it: random, fixed N, or increment."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        changes = {
            k: v for k, v in (("seed_policy", policy), ("fixed_seed", value)) if v is not None
        }
        if value is not None and policy is None:
            changes["seed_policy"] = "fixed"
        if changes:
            settings = await self.bot.database.run(
                db_users.update_settings, interaction.user.id, **changes
            )
        else:
            settings = await self.bot.database.run(db_users.get_settings, interaction.user.id)
        await say(interaction, texts.seed_text(settings))

    @app_commands.command(name="settings")
    @app_commands.describe(
        model="Default checkpoint",
        size="Default size, e.g. 768x512",
        steps="Default steps",
        cfg="Default CFG",
        sampler="Default sampler",
        scheduler="Default scheduler",
        negative="Default negative prompt",
        reset="Forget all your defaults",
    )
    async def settings_command(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        size: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        negative: str | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change your defaults for /imagine."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            changes = self._setting_changes(
                interaction, model, size, steps, cfg, sampler, scheduler, negative, reset
            )
        except ParseError as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        if changes:
            settings = await self.bot.database.run(
                db_users.update_settings, interaction.user.id, **changes
            )
        else:
            settings = await self.bot.database.run(db_users.get_settings, interaction.user.id)
        await say(interaction, texts.settings_text(settings, self.bot.settings))

    def _setting_changes(
        self, interaction, model, size, steps, cfg, sampler, scheduler, negative, reset
    ) -> dict:
        from bot.discord.context import requester
        from bot.discord.requests import sampler_names, scheduler_names

        if reset:
            keys = (
                "default_model",
                "width",
                "height",
                "steps",
                "cfg",
                "sampler",
                "scheduler",
                "negative_prompt",
            )
            return dict.fromkeys(keys)
        limits = self.bot.gate.limits(requester(self.bot, interaction.user, interaction.guild_id))
        env = self.bot.env
        changes: dict = {}
        if model is not None:
            if model not in env.models.checkpoint_names():
                raise ParseError(f"there is no model named {model!r}.")
            changes["default_model"] = model
        if size is not None:
            width, height = parse_size(size)
            if width > limits.max_width or height > limits.max_height:
                raise ParseError(
                    f"size {width}x{height} is larger than your limit of {limits.max_width}x{limits.max_height}."
                )
            changes.update(width=width, height=height)
        if steps is not None:
            if steps > limits.max_steps:
                raise ParseError(f"steps {steps} is more than your limit of {limits.max_steps}.")
            changes["steps"] = steps
        if cfg is not None:
            changes["cfg"] = cfg
        if sampler is not None:
            if sampler not in sampler_names(env):
                raise ParseError(f"there is no sampler named {sampler!r}.")
            changes["sampler"] = sampler
        if scheduler is not None:
            if scheduler not in scheduler_names(env):
                raise ParseError(f"there is no scheduler named {scheduler!r}.")
            changes["scheduler"] = scheduler
        if negative is not None:
            changes["negative_prompt"] = negative or None
        return changes

    # -- LoRAs --------------------------------------------------------------------------
    @lora.command(name="add")
    @app_commands.describe(
        file="A .safetensors LoRA",
        name="What you will call it in prompts",
        trigger="Trigger words, comma-separated",
        weight="Default weight",
        shared="Share with everyone",
    )
    async def lora_add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 64],
        trigger: str | None = None,
        weight: app_commands.Range[float, -10.0, 10.0] = 1.0,
        shared: bool = False,
    ) -> None:
        """Add a LoRA to your library."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await self.bot.requests.read_attachment(file)
            defaults = await self._defaults(interaction)
            words = [w.strip() for w in (trigger or "").split(",") if w.strip()]
            row = await self.library.aadd(
                interaction.user.id,
                data,
                file.filename,
                name=name,
                trigger_words=words,
                default_weight=weight,
                shared=shared,
                model=defaults.model,
            )
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        await say(interaction, texts.lora_added(row))

    @lora.command(name="list")
    async def lora_list(self, interaction: discord.Interaction) -> None:
        """Your LoRAs and the shared ones."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        rows = await self.library.alist_visible(interaction.user.id)
        await say(interaction, texts.lora_list(rows, interaction.user.id))

    @lora.command(name="remove")
    async def lora_remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove one of your LoRAs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.library.aremove(interaction.user.id, name)
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        await say(interaction, f"Removed LoRA `{name}`.")

    @lora.command(name="share")
    @app_commands.describe(shared="False to make it private again")
    async def lora_share(
        self, interaction: discord.Interaction, name: str, shared: bool = True
    ) -> None:
        """Share one of your LoRAs with everyone (or stop sharing it)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.library.ashare(interaction.user.id, name, shared)
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        await say(interaction, f"LoRA `{name}` is now {'shared' if shared else 'private'}.")

    # -- history ------------------------------------------------------------------------
    @app_commands.command(name="history")
    @app_commands.describe(query="Only prompts containing this", page="Page number")
    async def history(
        self,
        interaction: discord.Interaction,
        query: str | None = None,
        page: app_commands.Range[int, 1, 1000] = 1,
    ) -> None:
        """Your past images, newest first, with links and rerun buttons."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self._show_history(interaction, query, page)

    async def _show_history(
        self, interaction: discord.Interaction, query: str | None, page: int
    ) -> None:
        history = self.bot.generations.history
        result = await history.ahistory(
            interaction.user.id, query=query, page=page, per_page=PAGE_SIZE
        )
        view = discord.ui.View(timeout=600)
        for generation in result.items:
            view.add_item(ResultButton("rerun", generation.id, row=0))
        if page > 1 or result.has_more:
            view.add_item(_PageButton(self, query, page - 1, "◀ Newer", disabled=page <= 1))
            view.add_item(
                _PageButton(self, query, page + 1, "Older ▶", disabled=not result.has_more)
            )
        await interaction.edit_original_response(
            content=texts.history_text(result, query, page, interaction.guild_id), view=view
        )

    @app_commands.command(name="show")
    @app_commands.describe(id="The generation number (#id)")
    async def show(
        self, interaction: discord.Interaction, id: app_commands.Range[int, 1, 2**53]
    ) -> None:
        """Show one of your generations with all its parameters."""
        from bot.discord import render

        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            generation = await self.bot.generations.history.aget(interaction.user.id, id)
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        paths = self.bot.generations.history.output_paths(generation)
        prepared = render.fit_images(
            [p for p in paths if p.is_file()], interaction.filesize_limit, stem=f"easel_{id}"
        )
        await interaction.edit_original_response(
            embed=render.details_embed(generation), attachments=render.to_discord_files(prepared)
        )

    # -- queue --------------------------------------------------------------------------
    @app_commands.command(name="cancel")
    @app_commands.describe(job="A job number from /queue (default: all of yours)")
    async def cancel(
        self, interaction: discord.Interaction, job: app_commands.Range[int, 1, 2**53] | None = None
    ) -> None:
        """Cancel your queued or running jobs."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        admin = interaction.user.id in self.bot.settings.owner_set
        try:
            cancelled = await self.bot.generations.cancel(interaction.user.id, job, admin=admin)
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        await say(interaction, texts.cancelled_text(cancelled))

    @app_commands.command(name="queue")
    @app_commands.describe(action="Owners: pause, resume or clear the queue")
    @app_commands.choices(
        action=[app_commands.Choice(name=a, value=a) for a in ("show", "pause", "resume", "clear")]
    )
    async def queue(self, interaction: discord.Interaction, action: str = "show") -> None:
        """What is running and waiting (owners: pause, resume or clear it)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        user_id = interaction.user.id
        jobs = self.bot.jobs
        try:
            if action in ("pause", "resume", "clear") and not jobs.is_admin(user_id):
                from bot.services.jobs import NotAllowed

                raise NotAllowed(user_id, action)
            if action == "pause":
                await jobs.apause(user_id)
                await say(interaction, texts.PAUSED)
                return
            if action == "resume":
                await jobs.aresume(user_id)
                await say(interaction, texts.RESUMED)
                return
            if action == "clear":
                await self._clear(interaction)
                return
            entries, paused = await self.bot.generations.queue()
        except Exception as exc:
            await say(interaction, f"⚠️ {friendly(exc)}")
            return
        await say(
            interaction,
            texts.queue_text(entries, user_id, paused=paused, show_all=jobs.is_admin(user_id)),
        )

    async def _clear(self, interaction: discord.Interaction) -> None:
        view = ConfirmView(interaction.user.id, label="Yes, clear the queue")
        entries, _ = await self.bot.generations.queue()
        waiting = sum(1 for e in entries if e.status == "queued")
        await interaction.edit_original_response(content=texts.clear_question(waiting), view=view)
        await view.wait()
        if not view.value:
            await interaction.edit_original_response(content="Nothing was cleared.", view=None)
            return
        count = await self.bot.jobs.aclear(interaction.user.id)
        await interaction.edit_original_response(content=texts.cleared_text(count), view=None)

    # -- data rights --------------------------------------------------------------------
    @app_commands.command(name="forget-me")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Delete everything the bot stores about you (asks first)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = ConfirmView(interaction.user.id)
        await interaction.edit_original_response(
            content="This deletes your settings, LoRAs, history and images for good. Are you sure?",
            view=view,
        )
        await view.wait()
        if not view.value:
            await interaction.edit_original_response(content="Nothing was deleted.", view=None)
            return
        try:
            await self.bot.generations.cancel(interaction.user.id)
        except Exception:
            log.exception("could not cancel the jobs of a user who asked to be forgotten")
        try:
            report = await aforget_user(
                self.bot.database, self.bot.settings, interaction.user.id, pm=self.bot.env.pm
            )
        except Exception as exc:
            await interaction.edit_original_response(content=f"⚠️ {friendly(exc)}", view=None)
            return
        await interaction.edit_original_response(content=texts.forget_text(report), view=None)

    async def _defaults(self, interaction: discord.Interaction):
        from bot.discord.context import user_defaults

        return await user_defaults(self.bot, interaction.user)


class _PageButton(discord.ui.Button):
    def __init__(self, cog: UserCog, query: str | None, page: int, label: str, *, disabled: bool):
        super().__init__(label=label, style=discord.ButtonStyle.secondary, disabled=disabled, row=1)
        self.cog, self.query, self.page = cog, query, page

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await self.cog._show_history(interaction, self.query, self.page)
