"""The texts of ``/history``."""

from __future__ import annotations

from bot.discord.render import escape


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
