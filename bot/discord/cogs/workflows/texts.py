"""What the workflow commands say."""

from __future__ import annotations

MAX_LINES = 30


def clip(lines: list[str], limit: int = 1800) -> str:
    """Lines joined, cut to fit a Discord message (with a note of what was left out)."""
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        if size + len(line) + 1 > limit or i >= MAX_LINES:
            out.append(f"… and {len(lines) - i} more line(s)")
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def confirm_text(workflow, replacing: bool, *, sidecar: str | None = None) -> str:
    """The question before storing a workflow: what it binds (with ``sidecar``'s
    settings applied, when one came with it) and needs."""
    head = (
        f"Replace workflow **{workflow.name}** with this one?"
        if replacing
        else f"Add workflow **{workflow.name}**?"
    )
    if sidecar:
        head += f" (with the settings of {sidecar})"
    if workflow.description:
        head += f"\n{workflow.description}"
    body = workflow.describe()[1:]
    return head + "\n```\n" + clip(body) + "\n```"


def refused_text(exc) -> str:
    """A refused workflow, with every problem."""
    lines = [f"⚠️ Workflow **{exc.name}** was not added: {len(exc.problems)} problem(s)."]
    lines += [f"• {p}" for p in exc.problems]
    return clip(lines)


def list_text(items) -> str:
    """Every workflow with its description."""
    if not items:
        return "No workflows yet. Owners add one with `/workflow add`."
    lines = ["**Workflows** (use with `/imagine workflow:`)"]
    for item in items:
        description = getattr(item, "description", "") or ""
        problems = getattr(item, "problems", None)
        if problems is not None:
            lines.append(f"• `{item.name}`: ⚠️ cannot be read ({'; '.join(problems)[:150]})")
        else:
            lines.append(f"• `{item.name}`" + (f": {description}" if description else ""))
    return clip(lines)
