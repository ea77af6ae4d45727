"""The ``/imagine`` command: defer at once, build the submission, report until posted."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.cogs.imagine.complete import (
    complete_lora,
    complete_model,
    complete_sampler,
    complete_scheduler,
    complete_size,
)
from bot.discord.cogs.workflows.cog import complete_workflow
from bot.discord.cogs.workflows.requests import imagine_with_workflow
from bot.discord.errors import reported
from bot.discord.ranges import ceiling_limits, declare_max, offer_best_of
from bot.discord.status import InteractionStatus

ASPECTS = ["1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "21:9", "9:21"]


class ImagineCog(commands.Cog):
    """Make images from a prompt."""

    def __init__(self, bot):
        self.bot = bot
        ceiling = ceiling_limits(bot.settings)
        declare_max(self.imagine, steps=ceiling.max_steps, count=ceiling.max_count)
        offer_best_of(self.imagine, bot.settings, ceiling.max_count)

    @app_commands.command(name="imagine")
    @app_commands.describe(
        prompt="What to draw; inline options work too: <lora:name:0.8> --ar 16:9 --no text --seed 5",
        negative="What the image should not show",
        seed="Same seed + same settings = same image",
        steps="Sampling steps (more is slower, often finer)",
        cfg="How closely to follow the prompt",
        sampler="Sampler (ComfyUI name)",
        scheduler="Noise schedule",
        size="Width x height, e.g. 768x512",
        aspect="Aspect ratio, sized for the model",
        count="How many images",
        model="Checkpoint",
        lora="A LoRA from your library or a shared one (name or name:weight)",
        strength="img2img: how much to change the image (0-1)",
        image="An image to start from (img2img)",
        best_of="Make this many candidates and post the one CLIP finds closest to the prompt",
        keep="With best_of: how many of the best candidates to post",
        workflow="One of the server's ComfyUI workflows (your prompt and options go into it)",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    @app_commands.autocomplete(
        model=complete_model,
        sampler=complete_sampler,
        scheduler=complete_scheduler,
        lora=complete_lora,
        size=complete_size,
        workflow=complete_workflow,
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 4000],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        size: app_commands.Range[str, 3, 11] | None = None,
        aspect: str | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: str | None = None,
        lora: app_commands.Range[str, 1, 200] | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] | None = None,
        image: discord.Attachment | None = None,
        best_of: app_commands.Range[int, 2, 4] | None = None,
        keep: app_commands.Range[int, 1, 4] | None = None,
        workflow: app_commands.Range[str, 1, 64] | None = None,
    ) -> None:
        """Make an image from a prompt."""
        # The 3-second rule: acknowledge before anything else, whatever the queue holds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        options: dict[str, Any] = {
            "negative": negative,
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler": sampler,
            "scheduler": scheduler,
            "size": size,
            "aspect": aspect,
            "count": count,
            "model": model,
            "lora": lora,
            "strength": strength,
            "best_of": best_of,
            "keep": keep,
        }
        async with reported(interaction) as attempt:
            if workflow:  # an operator workflow (bot.discord.cogs.workflows)
                submission, dest = await imagine_with_workflow(
                    self.bot, interaction, workflow, prompt, options, image
                )
            else:
                submission, dest = await self.bot.requests.imagine(
                    interaction, prompt, options, image
                )
        if attempt.failed:
            return
        await self.bot.reporter.run(
            submission,
            dest,
            InteractionStatus(interaction, self.bot.settings.progress_interval_s),
            upload_limit=interaction.filesize_limit,
        )
