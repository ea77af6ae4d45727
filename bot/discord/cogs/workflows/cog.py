"""The ``/workflow`` commands and ``@easel run``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord import context
from bot.discord.actions import say
from bot.discord.cogs.workflows import texts
from bot.discord.cogs.workflows.requests import folder_of, png_request, usable
from bot.discord.context import replied_message
from bot.discord.errors import reported
from bot.discord.requests import image_attachment
from bot.discord.status import MessageStatus
from bot.discord.views import ConfirmView
from bot.services.generation import Submission
from bot.services.moderation import Refused
from bot.services.operator_workflows import UnknownWorkflow, WorkflowRejected, parse_sidecar
from runner.errors import WorkflowError

log = logging.getLogger(__name__)

WORKFLOW_SUFFIXES = (".json", ".png", ".webp")
SIDECAR_SUFFIXES = (".toml", ".json")


def install_builder(bot) -> None:
    """Let the job service's history build ``workflow:NAME`` and ``png-run:SHA``
    templates (every other template still goes to the environment's builder)."""
    history = bot.jobs.history
    if getattr(history.build_workflow, "operator_workflows", None) is None:
        history.build_workflow = folder_of(bot).builder(
            history.build_workflow or bot.env.build_workflow
        )


async def complete_workflow(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The workflows the member may use, with their descriptions."""
    bot = interaction.client
    try:
        items = await asyncio.to_thread(
            folder_of(bot).visible,
            context.role_ids(interaction.user),
            owner=interaction.user.id in bot.settings.owner_set,
        )
    except Exception:
        log.exception("workflow autocomplete failed")
        return []
    needle = current.casefold()
    hits = [w for w in items if needle in w.name or needle in w.description.casefold()]
    hits.sort(key=lambda w: (not w.name.startswith(needle), w.name))
    return [
        app_commands.Choice(
            name=(f"{w.name}: {w.description}" if w.description else w.name)[:100], value=w.name
        )
        for w in hits[:25]
    ]


class WorkflowsCog(commands.Cog):
    """The operator's ComfyUI workflows."""

    group = app_commands.Group(name="workflow", description="ComfyUI workflows members can use")

    def __init__(self, bot):
        self.bot = bot

    def _owner(self, user: discord.abc.User) -> bool:
        return user.id in self.bot.settings.owner_set

    @group.command(name="add")
    @app_commands.describe(
        file="A ComfyUI workflow: API or UI JSON, or a PNG that carries one",
        name="Its name (default: the file name)",
        sidecar="Optional settings for it (TOML or JSON): bindings, allow, limits, roles",
    )
    async def add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        name: app_commands.Range[str, 1, 64] | None = None,
        sidecar: discord.Attachment | None = None,
    ) -> None:
        """Owners: add or replace a workflow (shows its bindings and asks first)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not self._owner(interaction.user):
            await say(interaction, "⚠️ Only the bot's owners can add workflows.")
            return
        folder = folder_of(self.bot)
        async with reported(interaction) as attempt:
            if not file.filename.lower().endswith(WORKFLOW_SUFFIXES):
                raise Refused(f"{file.filename} is not a .json or .png workflow file.")
            if sidecar is not None and not sidecar.filename.lower().endswith(SIDECAR_SUFFIXES):
                raise Refused(f"{sidecar.filename} is not a .toml or .json sidecar file.")
            data = await self.bot.requests.read_attachment(file)
            table = None
            if sidecar is not None:
                raw = await self.bot.requests.read_attachment(sidecar)
                try:
                    table = parse_sidecar(raw, sidecar.filename)
                except WorkflowError as exc:
                    guess = Path(file.filename).stem if name is None else name
                    await say(interaction, texts.refused_text(WorkflowRejected(guess, [str(exc)])))
                    return
            try:
                workflow = await asyncio.to_thread(
                    folder.check, data, file.filename, name=name, sidecar=table
                )
            except WorkflowRejected as exc:
                await say(interaction, texts.refused_text(exc))
                return
        if attempt.failed:
            return
        replacing = workflow.name in folder.names()
        view = ConfirmView(interaction.user.id, label="Replace" if replacing else "Confirm")
        await interaction.edit_original_response(
            content=texts.confirm_text(workflow, replacing, sidecar=sidecar and sidecar.filename),
            view=view,
        )
        await view.wait()
        if not view.value:
            await interaction.edit_original_response(
                content="Cancelled: nothing was stored.", view=None
            )
            return
        suffix = Path(file.filename).suffix.lower()
        try:
            stored = await asyncio.to_thread(
                folder.add,
                data,
                f"upload{suffix}",
                name=workflow.name,
                sidecar=table,
                replace=True,
            )
        except WorkflowRejected as exc:
            await interaction.edit_original_response(content=texts.refused_text(exc), view=None)
            return
        await interaction.edit_original_response(
            content=f"✅ Workflow **{stored.name}** is ready: `/imagine workflow:{stored.name}`.",
            view=None,
        )

    @group.command(name="remove")
    @app_commands.describe(name="The workflow to remove")
    @app_commands.autocomplete(name=complete_workflow)
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        """Owners: remove a workflow."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not self._owner(interaction.user):
            await say(interaction, "⚠️ Only the bot's owners can remove workflows.")
            return
        try:
            await asyncio.to_thread(folder_of(self.bot).remove, name)
        except UnknownWorkflow as exc:
            await say(interaction, f"⚠️ {str(exc)[0].upper()}{str(exc)[1:]}.")
            return
        await say(interaction, f"🗑️ Removed workflow **{name}**.")

    @group.command(name="list")
    async def list_(self, interaction: discord.Interaction) -> None:
        """The workflows you can use with /imagine workflow:"""
        await interaction.response.defer(ephemeral=True, thinking=True)
        items = await asyncio.to_thread(folder_of(self.bot).list)
        owner = self._owner(interaction.user)
        shown = [
            i
            for i in items
            if owner or (hasattr(i, "bindings") and usable(self.bot, i, interaction.user))
        ]
        await say(interaction, texts.list_text(shown))

    # -- @easel run ----------------------------------------------------------------------
    @commands.command(name="run")
    async def run_png(self, ctx: commands.Context) -> None:
        """Reply ``@easel run`` to a message with a ComfyUI PNG: run its embedded graph."""
        message = ctx.message
        if message.author.bot:
            return
        try:
            status = await message.reply("⏳ Reading that image's workflow…", mention_author=False)
        except discord.HTTPException as exc:
            log.info("cannot reply in channel %s: %s", message.channel.id, exc)
            return
        guild_id = message.guild.id if message.guild else None
        async with reported(MessageStatus(status).close) as attempt:
            submission = await self._png_submission(message, guild_id)
        if attempt.failed:
            return
        dest = context.destination(message.author, message.channel, message.channel.id, guild_id)
        limit = message.guild.filesize_limit if message.guild else 10 * 1024 * 1024
        await self.bot.reporter.run(
            submission,
            dest,
            MessageStatus(status, self.bot.settings.progress_interval_s, request=message),
            upload_limit=limit,
        )

    async def _png_submission(self, message: discord.Message, guild_id: int | None) -> Submission:
        if not getattr(self.bot.settings, "allow_run_from_png", True):
            raise Refused("Running the workflow of an image is turned off on this bot.")
        limits = self.bot.requests.admit(message.author, guild_id)
        target = await replied_message(message)
        attachment = image_attachment(target) if target is not None else None
        if attachment is None:
            attachment = image_attachment(message)
        if attachment is None:
            raise Refused("Reply `@easel run` to a message with a ComfyUI PNG attached.")
        data = await self.bot.requests.read_attachment(attachment)
        try:
            workflow = await asyncio.to_thread(folder_of(self.bot).png_run, data)
        except WorkflowRejected as exc:
            raise Refused(
                f"That image's workflow cannot run here: {'; '.join(exc.problems)}."
            ) from None
        request = png_request(workflow, limits)
        self.bot.gate.check_prompt(request.prompt, request.negative)
        return Submission(request, kind="png-run")
