"""The texts of ``/lora``."""

from __future__ import annotations


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
