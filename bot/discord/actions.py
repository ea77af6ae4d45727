"""What the result buttons, the reuse-seed modal and the Remix modal do. Buttons reach
this through ``bot.actions`` (see :mod:`bot.discord.views`), so they work after a restart."""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.discord import context, render
from bot.discord.errors import reported, sentence
from bot.discord.status import InteractionStatus
from bot.discord.views import RemixModal, ReuseSeedModal
from bot.services.parsing import ParseError, parse_prompt

log = logging.getLogger(__name__)


async def say(interaction: discord.Interaction, text: str, **kwargs) -> None:
    """Answer an interaction with ``text`` (ephemeral), whether or not it was deferred."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text, **kwargs)
        else:
            await interaction.response.send_message(text, ephemeral=True, **kwargs)
    except discord.HTTPException as exc:
        log.info("could not answer an interaction: %s", exc)


class ResultActions:
    """The handlers behind every result button and modal."""

    def __init__(self, bot):
        self.bot = bot

    async def handle(
        self, interaction: discord.Interaction, action: str, generation_id: int, index: int
    ) -> None:
        """A result button was clicked."""
        if action == "seed":
            await self._open_reuse_seed(interaction, generation_id)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            generation = await self.bot.generations.generation(generation_id)
            if action == "info":
                await interaction.edit_original_response(embed=render.details_embed(generation))
                return
            if action == "del":
                await self._delete(interaction, generation)
                return
            if action == "full":
                await self._send_full_size(interaction, generation)
                return
            submission = await self.bot.requests.from_result(interaction, action, generation, index)
        if attempt.failed:
            return
        await self.bot.reporter.run(
            submission,
            context.interaction_destination(interaction),
            InteractionStatus(interaction, self.bot.settings.progress_interval_s),
            upload_limit=interaction.filesize_limit,
        )

    async def _open_reuse_seed(self, interaction: discord.Interaction, generation_id: int) -> None:
        # A modal must be the first response, so no defer here; the read is short and bounded.
        async with reported(interaction) as attempt:
            try:
                generation = await asyncio.wait_for(
                    self.bot.generations.generation(generation_id), timeout=2.0
                )
            except TimeoutError:
                await say(interaction, "⚠️ The database is busy; try again in a moment.")
                return
        if attempt.failed:
            return
        await interaction.response.send_modal(
            ReuseSeedModal(generation.id, generation.prompt, generation.negative_prompt or "")
        )

    async def reuse_seed_submitted(
        self, interaction: discord.Interaction, generation_id: int, prompt: str, negative: str
    ) -> None:
        """The reuse-seed modal was submitted: same seed and settings, new prompt."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            generation = await self.bot.generations.generation(generation_id)
            parsed = parse_prompt(prompt)
            if not parsed.text.strip():
                raise ParseError("the prompt is empty; describe the image you want.")
            submission = await self.bot.requests.from_result(
                interaction, "seed", generation, prompt=parsed.text, negative=negative.strip()
            )
        if attempt.failed:
            return
        await self.bot.reporter.run(
            submission,
            context.interaction_destination(interaction),
            InteractionStatus(interaction, self.bot.settings.progress_interval_s),
            upload_limit=interaction.filesize_limit,
        )

    async def _send_full_size(self, interaction: discord.Interaction, generation) -> None:
        """The stored PNGs, sent privately: whole when they fit this upload limit, else
        in tiles that do (the result message had to show a smaller copy)."""
        paths = [p for p in self.bot.generations.history.output_paths(generation) if p.is_file()]
        if not paths:
            await say(interaction, f"⚠️ The images of #{generation.id} are no longer stored.")
            return
        limit = interaction.filesize_limit
        try:
            messages = await asyncio.to_thread(
                render.full_size_parts, paths, limit, stem=f"easel_{generation.id}_full"
            )
        except ValueError as exc:
            await say(interaction, f"⚠️ {sentence(str(exc))}")
            return
        parts = sum(len(m) for m in messages)
        whole = parts == len(paths)
        await say(
            interaction,
            f"📥 The full-size PNG of #{generation.id}"
            + ("" if whole else f", in {parts} parts (row by row, left to right)")
            + ":",
        )
        for files in messages:
            await interaction.followup.send(
                files=render.to_discord_files(render.Prepared(files)), ephemeral=True
            )

    async def _delete(self, interaction: discord.Interaction, generation) -> None:
        admin = context.is_admin(self.bot, interaction.user, interaction.permissions)
        if generation.user_id != interaction.user.id and not admin:
            await say(
                interaction, "⚠️ Only the person who made this image, or an admin, can delete it."
            )
            return
        message_id = await self.bot.generations.delete(
            generation.id, user_id=interaction.user.id, admin=admin
        )
        target = (
            interaction.message
            if interaction.message and interaction.message.id == message_id
            else None
        )
        try:
            if target is not None:
                await target.delete()
            elif message_id and interaction.channel_id:
                await (
                    self.bot.get_partial_messageable(interaction.channel_id)
                    .get_partial_message(message_id)
                    .delete()
                )
        except discord.HTTPException as exc:
            log.info("could not delete the message of generation %s: %s", generation.id, exc)
        await say(interaction, f"🗑️ Deleted #{generation.id}.")

    # -- Remix --------------------------------------------------------------------------
    async def open_remix(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The "Remix" message command: ask for a prompt and a strength in a modal."""
        from bot.discord.requests import image_attachment

        if image_attachment(message) is None:
            await say(interaction, "⚠️ That message has no image to remix.")
            return
        await interaction.response.send_modal(RemixModal(message))

    async def remix_submitted(
        self, interaction: discord.Interaction, message: discord.Message, prompt: str, strength: str
    ) -> None:
        """The Remix modal was submitted: img2img on the message's image."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        options = {"strength": strength.strip() or None}
        async with reported(interaction) as attempt:
            submission = await self.bot.requests.img2img(
                interaction.user, interaction.guild_id, message, prompt, options
            )
        if attempt.failed:
            return
        await self.bot.reporter.run(
            submission,
            context.interaction_destination(interaction),
            InteractionStatus(interaction, self.bot.settings.progress_interval_s),
            upload_limit=interaction.filesize_limit,
        )
