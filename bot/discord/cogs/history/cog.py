"""``/history`` and ``/show``. Every reply is ephemeral: these are the user's own data."""

from __future__ import annotations

import asyncio
import functools

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord import render
from bot.discord.cogs.history import texts
from bot.discord.errors import reported
from bot.discord.views import ResultButton

PAGE_SIZE = 5


class HistoryCog(commands.Cog):
    """A user's past images: a page of them, or one with all its parameters."""

    def __init__(self, bot):
        self.bot = bot

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
        await self.show_page(interaction, query, page)

    async def show_page(
        self, interaction: discord.Interaction, query: str | None, page: int
    ) -> None:
        """Show page ``page`` of the user's history (also the page buttons' action)."""
        read = functools.partial(
            self.bot.generations.history.history,
            interaction.user.id,
            query=query,
            page=page,
            per_page=PAGE_SIZE,
        )
        result = await asyncio.to_thread(read)
        notice = None
        last = texts.last_page(result.total, PAGE_SIZE)
        if not result.items and result.total and page > last:
            # Past the end: say so, and show the last page with its buttons.
            notice = texts.past_the_end(page, last)
            page = last
            read = functools.partial(read.func, *read.args, **{**read.keywords, "page": page})
            result = await asyncio.to_thread(read)
        view = discord.ui.View(timeout=600)
        for generation in result.items:
            view.add_item(ResultButton("rerun", generation.id, row=0))
        if page > 1 or result.has_more:
            view.add_item(_PageButton(self, query, page - 1, "◀ Newer", disabled=page <= 1))
            view.add_item(
                _PageButton(self, query, page + 1, "Older ▶", disabled=not result.has_more)
            )
        text = texts.history_text(result, query, page, interaction.guild_id, per_page=PAGE_SIZE)
        if notice:
            text = f"{notice}\n{text}"
        await interaction.edit_original_response(content=text[:2000], view=view)

    @app_commands.command(name="show")
    @app_commands.describe(id="The generation number (#id)")
    async def show(
        self, interaction: discord.Interaction, id: app_commands.Range[int, 1, 2**53]
    ) -> None:
        """Show one of your generations with all its parameters."""
        from bot.services.errors import NotFound
        from bot.services.moderation import Refused

        await interaction.response.defer(ephemeral=True, thinking=True)
        history = self.bot.generations.history
        async with reported(interaction) as attempt:
            if id < 1:
                raise Refused(texts.bad_number(id))
            try:
                generation = await asyncio.to_thread(history.get, interaction.user.id, id)
            except NotFound:
                raise Refused(texts.not_yours(id)) from None
        if attempt.failed:
            return
        paths = history.output_paths(generation)
        prepared = render.fit_images(
            [p for p in paths if p.is_file()], interaction.filesize_limit, stem=f"easel_{id}"
        )
        await interaction.edit_original_response(
            embed=render.details_embed(generation), attachments=render.to_discord_files(prepared)
        )


class _PageButton(discord.ui.Button):
    def __init__(
        self, cog: HistoryCog, query: str | None, page: int, label: str, *, disabled: bool
    ):
        super().__init__(label=label, style=discord.ButtonStyle.secondary, disabled=disabled, row=1)
        self.cog, self.query, self.page = cog, query, page

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await self.cog.show_page(interaction, self.query, self.page)
