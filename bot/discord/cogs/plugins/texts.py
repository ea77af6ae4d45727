"""What the /plugin commands say: short, plain sentences and lists that fit a message."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 1900


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to fit one Discord message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plan_text(plan: Any) -> str:
    """The confirmation prompt: what pip would install."""
    lines = [f"**Install `{plan.spec}`?** pip would install:"]
    for package in plan.packages:
        mark = " ← the plugin" if package.requested else ""
        lines.append(f"• `{package.describe()}`{mark}")
    if not plan.packages:
        lines.append("• nothing new")
    if plan.warnings:
        lines.append(f"```\n{plan.warnings}\n```")
    return clip("\n".join(lines))


def status_line(status: Any) -> str:
    """One plugin on one line, with a mark for its state."""
    mark = {"enabled": "🟢", "disabled": "⚪", "failed": "🔴", "missing": "❔", "removed": "🗑️"}
    return f"{mark.get(status.status, '•')} {status.line()}"


def list_text(statuses: list[Any]) -> str:
    """/plugin list."""
    if not statuses:
        return "No plugins."
    return clip("\n".join(status_line(s) for s in statuses))


def info_text(status: Any) -> str:
    """/plugin info: every field that has a value."""
    lines = [f"**{status.name}** ({status.kind}) — {status.status}"]
    for key, shown in status.shown_fields():
        if key not in ("name", "kind", "status"):
            lines.append(f"{key.replace('_', ' ')}: {shown}")
    return clip("\n".join(lines))


def install_text(result: Any) -> str:
    """The answer after an install."""
    status = result.plugin
    if status.status == "enabled":
        head = f"Installed and enabled **{status.name} {status.version or ''}** in {result.seconds:.0f} s."
        provides = [*status.node_types, *(f"template {t}" for t in status.templates)]
        if provides:
            head += f" It provides: {', '.join(provides)}."
        return clip(head)
    return clip(
        f"Installed **{status.name}**, but it was switched off: {status.error}. "
        "Fix it and `/plugin enable` it, or `/plugin remove` it."
    )


def failure_text(event: Any) -> str:
    """The message owners get when easel switches a plugin off by itself, or when a
    moderation or deletion hook raised (the plugin stays on; users saw a neutral sentence)."""
    if event.action == "raised":
        return clip(
            f"⚠️ Plugin **{event.name}** {event.reason}. The request it was checking was "
            "refused or withheld; the plugin stays enabled (/plugin disable switches it off)."
        )
    return clip(f"⚠️ Plugin **{event.name}** was disabled: {event.reason}. Jobs go on without it.")
