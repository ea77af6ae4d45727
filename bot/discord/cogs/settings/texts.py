"""The texts of ``/seed`` and ``/settings``."""

from __future__ import annotations

from bot.discord.render import escape


def seed_text(settings) -> str:
    """``/seed``: the policy, the fixed seed and the last seed used."""
    policy = getattr(settings.seed_policy, "value", settings.seed_policy)
    lines = [f"Seed policy: **{policy}**"]
    if policy == "fixed":
        lines.append(f"Fixed seed: `{settings.fixed_seed}`")
    lines.append(
        f"Last seed used: `{settings.last_seed}`"
        if settings.last_seed is not None
        else "No seed used yet."
    )
    return "\n".join(lines)


def settings_text(settings, bot_settings) -> str:
    """``/settings``: each default, yours or the bot's."""

    def show(value, fallback) -> str:
        return f"`{value}`" if value not in (None, "") else f"`{fallback}` (bot default)"

    size = f"{settings.width}x{settings.height}" if settings.width and settings.height else None
    bot_size = (
        f"{bot_settings.default_width}x{bot_settings.default_height}"
        if bot_settings.default_width and bot_settings.default_height
        else "the model's"
    )
    return "\n".join(
        [
            f"Model: {show(settings.default_model, bot_settings.default_model)}",
            f"Size: {show(size, bot_size)}",
            f"Steps: {show(settings.steps, bot_settings.default_steps)}",
            f"CFG: {show(settings.cfg, bot_settings.default_cfg)}",
            f"Sampler: {show(settings.sampler, bot_settings.default_sampler)}",
            f"Scheduler: {show(settings.scheduler, bot_settings.default_scheduler)}",
            f"Negative: {show(escape(settings.negative_prompt or ''), '(none)')}",
        ]
    )
