"""``/workflow add|remove|list``, ``/imagine workflow:NAME`` (see :mod:`.requests`) and
``@easel run`` replied to a ComfyUI PNG: the operator's ComfyUI workflows on Discord."""

from __future__ import annotations

from bot.discord.cogs.workflows.cog import WorkflowsCog, install_builder


async def setup(bot) -> None:
    """Load the cog (discord.py extension entry point), and let the job service build
    operator workflows (``workflow:NAME`` and ``png-run:SHA`` templates)."""
    install_builder(bot)
    await bot.add_cog(WorkflowsCog(bot))
