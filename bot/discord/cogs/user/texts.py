"""The texts of the per-user commands' answers."""

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


def lora_added(row) -> str:
    """``/lora add``: what was stored."""
    triggers = f"; trigger words: {', '.join(row.trigger_words)}" if row.trigger_words else ""
    family = getattr(row.family, "value", row.family)
    return (
        f"Added LoRA `{row.name}` ({family}, weight {row.default_weight:g}{triggers}). "
        f"Use it with `<lora:{row.name}>` in a prompt."
    )


def lora_list(rows, user_id: int) -> str:
    """``/lora list``: own LoRAs, then shared ones."""
    if not rows:
        return "No LoRAs yet: add one with /lora add."
    own = [r for r in rows if r.owner_id == user_id]
    shared = [r for r in rows if r.owner_id != user_id]
    lines = []
    if own:
        lines.append("**Yours**")
        lines += [
            f"`{r.name}` · {getattr(r.family, 'value', r.family)} · {r.default_weight:g}"
            + (" · shared" if r.shared else "")
            for r in own
        ]
    if shared:
        lines.append("**Shared**")
        lines += [f"`{r.name}` · {getattr(r.family, 'value', r.family)}" for r in shared]
    return "\n".join(lines)[:1900]


def history_text(page, query: str | None, number: int, guild_id: int | None) -> str:
    """``/history``: one line per generation with a link to its message."""
    if not page.items:
        return "No images found." if query else "No images yet: try /imagine."
    lines = [
        f"**Your images** (page {number}, {page.total} in all{f', matching {escape(query)!s}' if query else ''})"
    ]
    for g in page.items:
        prompt = escape(g.prompt if len(g.prompt) <= 80 else g.prompt[:79] + "…")
        link = ""
        if g.message_id and g.channel_id:
            link = f" · [message](https://discord.com/channels/{g.guild_id or guild_id or '@me'}/{g.channel_id}/{g.message_id})"
        status = getattr(g.status, "value", g.status)
        lines.append(f"`#{g.id}` {prompt} · seed {g.seed} · {status}{link}")
    return "\n".join(lines)[:1990]


def cancelled_text(ids: list[int]) -> str:
    """``/cancel``."""
    if not ids:
        return "You have nothing queued or running."
    return f"Cancelled {len(ids)} job(s): " + ", ".join(f"#{i}" for i in ids) + "."


def queue_text(entries, user_id: int, *, paused: bool = False, show_all: bool = False) -> str:
    """``/queue``: running, then waiting in running order, the user's own marked (and
    their prompts shown; everyone's for owners), with the estimated wait."""
    from bot.discord.render import wait_text

    lines = []
    if paused:
        lines.append("⏸️ The queue is paused: no new job starts until an owner resumes it.")
    if not entries:
        lines.append("The queue is empty.")
        return "\n".join(lines)
    for e in entries[:20]:
        mine = e.user_id == user_id
        where = "running" if e.status == "running" else f"{e.position}."
        prompt = e.prompt if len(e.prompt) <= 80 else e.prompt[:79] + "…"
        label = escape(prompt) if mine or show_all else "(someone's image)"
        line = f"{where} job {e.job_id}: {label}"
        wait = wait_text(e.estimated_wait_s) if e.status == "queued" else None
        if wait:
            line += f" · {wait}"
        if mine:
            line += " ← yours"
        lines.append(line)
    if len(entries) > 20:
        lines.append(f"… and {len(entries) - 20} more.")
    return "\n".join(lines)[:1990]


PAUSED = "⏸️ The queue is paused: running jobs finish, no new job starts until /queue resume."
RESUMED = "▶️ The queue is running again."


def clear_question(waiting: int) -> str:
    """``/queue clear``: the confirmation."""
    return (
        f"This cancels every waiting job ({waiting} now) for everyone; running jobs finish. "
        "Are you sure?"
    )


def cleared_text(count: int) -> str:
    """``/queue clear``: done."""
    return f"🧹 Cleared the queue: {count} waiting job(s) cancelled."


def forget_text(report) -> str:
    """``/forget-me``: what was deleted."""
    rows = sum(report.rows.values())
    text = f"Done: deleted {rows} record(s) and {len(report.files_deleted)} file(s)."
    if not report.complete:
        text += " Some plugins could not delete their data; the operator has been told in the log."
    return text
