"""The texts of ``/cancel`` and ``/queue``."""

from __future__ import annotations

from bot.discord.render import escape


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


def clear_question(waiting: int) -> str:
    """``/queue clear``: the confirmation."""
    return (
        f"This cancels every waiting job ({waiting} now) for everyone; running jobs finish. "
        "Are you sure?"
    )


def cleared_text(count: int) -> str:
    """``/queue clear``: done."""
    return f"🧹 Cleared the queue: {count} waiting job(s) cancelled."


PAUSED = "⏸️ The queue is paused: running jobs finish, no new job starts until /queue resume."
RESUMED = "▶️ The queue is running again."
