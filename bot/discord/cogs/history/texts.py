"""The texts of ``/history``."""

from __future__ import annotations

from bot.discord.render import escape


def last_page(total: int, per_page: int) -> int:
    """The number of the last page (1 when there is nothing)."""
    return max(1, -(-total // per_page))


def past_the_end(page: int, last: int) -> str:
    """``/history page:99`` with 3 pages."""
    return f"Page {page} is past the last page ({last}); here is page {last}."


def bad_number(value: int) -> str:
    """``/show`` of a number that no result can have."""
    return f"Results are numbered from 1; {value} is not a result number."


def not_yours(number: int) -> str:
    """``/show`` of a result that is not the member's (or does not exist)."""
    return (
        f"#{number} is not one of your results: /show shows your own "
        "(the Details button under any result shows its settings)."
    )


def history_text(
    page, query: str | None, number: int, guild_id: int | None, per_page: int | None = None
) -> str:
    """``/history``: one line per generation with a link to its message."""
    if not page.items:
        return "No images found." if query else "No images yet: try /imagine."
    pages = f" of {last_page(page.total, per_page)}" if per_page else ""
    matching = f", matching {escape(query)!s}" if query else ""
    lines = [f"**Your images** (page {number}{pages}, {page.total} in all{matching})"]
    for g in page.items:
        prompt = escape(g.prompt if len(g.prompt) <= 80 else g.prompt[:79] + "…")
        link = ""
        if g.message_id and g.channel_id:
            link = f" · [message](https://discord.com/channels/{g.guild_id or guild_id or '@me'}/{g.channel_id}/{g.message_id})"
        status = getattr(g.status, "value", g.status)
        lines.append(f"`#{g.id}` {prompt} · seed {g.seed} · {status}{link}")
    return "\n".join(lines)[:1990]
