"""``/seed`` and ``/settings``. Every reply is ephemeral: these are the user's own data."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.actions import say
from bot.discord.cogs.settings import texts
from bot.discord.errors import reported
from bot.discord.ranges import ceiling_limits, declare_max
from bot.services.parsing import ParseError, parse_size

MAX_SEED_OPTION = 2**53 - 1
"""The largest seed the Discord options declare (Discord's integers are doubles)."""

RESET_KEYS = (
    "default_model",
    "width",
    "height",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "negative_prompt",
)
"""The settings ``/settings reset:True`` forgets."""


def seed_changes(policy: str | None, value: int | None) -> dict:
    """``/seed``'s options as settings changes, checked in the command's own terms (its
    option names and the range it declares): every problem at once."""
    from bot.services.parsing import ParseErrors

    problems = []
    if policy is not None and policy not in ("random", "fixed", "increment"):
        problems.append(f"policy must be random, fixed or increment, not {policy!r}.")
    if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_SEED_OPTION):
        problems.append(f"value must be a whole number from 0 to {MAX_SEED_OPTION}, not {value}.")
    if value is not None and policy in ("random", "increment"):
        problems.append(f"value is the seed of the fixed policy; it does not go with {policy}.")
    if problems:
        raise ParseErrors(problems)
    changes = {k: v for k, v in (("seed_policy", policy), ("fixed_seed", value)) if v is not None}
    if value is not None and policy is None:
        changes["seed_policy"] = "fixed"
    return changes


class SettingsCog(commands.Cog):
    """A user's seed policy and their defaults for /imagine."""

    def __init__(self, bot):
        self.bot = bot
        declare_max(self.settings_command, steps=ceiling_limits(bot.settings).max_steps)

    async def _save(self, user_id: int, changes: dict):
        from bot.services.errors import InvalidValue

        preferences = self.bot.preferences
        if not changes:
            return await asyncio.to_thread(preferences.get, user_id)
        try:
            return await asyncio.to_thread(preferences.update, user_id, **changes)
        except InvalidValue as exc:
            if exc.field == "fixed_seed":  # the fixed policy without a seed stored
                raise ParseError(
                    "the fixed policy needs a seed: give value too, e.g. /seed policy:fixed value:1234."
                ) from None
            raise

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
        value: app_commands.Range[int, 0, MAX_SEED_OPTION] | None = None,
    ) -> None:
        """Show your seed policy, or set it: random, fixed N, or increment."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        async with reported(interaction) as attempt:
            changes = seed_changes(policy, value)
            settings = await self._save(interaction.user.id, changes)
        if attempt.failed:
            return
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
        async with reported(interaction) as attempt:
            changes = self._setting_changes(
                interaction, model, size, steps, cfg, sampler, scheduler, negative, reset
            )
        if attempt.failed:
            return
        settings = await self._save(interaction.user.id, changes)
        await say(interaction, texts.settings_text(settings, self.bot.settings))

    def _setting_changes(
        self, interaction, model, size, steps, cfg, sampler, scheduler, negative, reset
    ) -> dict:
        from bot.discord.context import requester
        from bot.discord.requests import sampler_names, scheduler_names
        from bot.services.parsing import Problems
        from bot.services.request_builder import names_hint, pair_problem

        if reset:
            return dict.fromkeys(RESET_KEYS)
        limits = self.bot.gate.limits(requester(self.bot, interaction.user, interaction.guild_id))
        env = self.bot.env
        problems = Problems()
        changes: dict = {}
        if model is not None:
            if model not in env.models.checkpoint_names():
                problems.add(f"there is no model named {model!r}.")
            changes["default_model"] = model
        if size is not None:
            with problems.check():
                width, height = parse_size(size)
                if width > limits.max_width or height > limits.max_height:
                    raise ParseError(
                        f"size {width}x{height} is larger than your limit of {limits.max_width}x{limits.max_height}."
                    )
                changes.update(width=width, height=height)
        if steps is not None:
            if not 1 <= steps <= limits.max_steps:
                problems.add(
                    f"steps must be from 1 to your limit of {limits.max_steps}, not {steps}."
                )
            changes["steps"] = steps
        if cfg is not None:
            changes["cfg"] = cfg
        samplers, schedulers = sampler_names(env), scheduler_names(env)
        if sampler is not None:
            if sampler not in samplers:
                problems.add(names_hint("sampler", sampler, samplers))
            changes["sampler"] = sampler
        if scheduler is not None:
            if scheduler not in schedulers:
                problems.add(names_hint("scheduler", scheduler, schedulers))
            changes["scheduler"] = scheduler
        if sampler in samplers and scheduler in schedulers:
            with problems.check():
                problem = pair_problem(sampler, scheduler)
                if problem:
                    raise ParseError(problem)
        if negative is not None:
            changes["negative_prompt"] = negative or None
        problems.raise_any()
        return changes
