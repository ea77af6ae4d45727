"""Buttons under each result. Each button's custom_id carries the action and the generation
id (``easel:var:42:1``), and the bot registers :class:`ResultButton` as a dynamic item, so
buttons keep working after a restart: nothing is kept in memory between clicks."""

from __future__ import annotations

import discord

ACTIONS = ("reroll", "rerun", "var", "up", "seed", "info", "del", "full")
CUSTOM_ID = r"easel:(?P<action>reroll|rerun|var|up|seed|info|del|full):(?P<gid>[0-9]{1,19})(?::(?P<idx>[0-9]))?"

_LOOK: dict[str, tuple[str, str | None, discord.ButtonStyle]] = {
    "reroll": ("Reroll", "🔄", discord.ButtonStyle.secondary),
    "rerun": ("Rerun #{g}", "🔁", discord.ButtonStyle.secondary),
    "var": ("V{n}", None, discord.ButtonStyle.secondary),
    "up": ("U{n}", None, discord.ButtonStyle.secondary),
    "seed": ("Reuse seed", "🌱", discord.ButtonStyle.secondary),
    "info": ("Details", "ℹ️", discord.ButtonStyle.secondary),
    "del": ("Delete", "🗑️", discord.ButtonStyle.danger),
    "full": ("Full size", "📥", discord.ButtonStyle.secondary),
}


def custom_id(action: str, generation_id: int, index: int | None = None) -> str:
    """The custom_id of a result button."""
    if action not in ACTIONS:
        raise ValueError(f"unknown result action {action!r}")
    return f"easel:{action}:{generation_id}" + ("" if index is None else f":{index}")


class ResultButton(discord.ui.DynamicItem[discord.ui.Button], template=CUSTOM_ID):
    """One result button; its callback hands the click to the bot's result actions."""

    def __init__(
        self, action: str, generation_id: int, index: int | None = None, *, row: int | None = None
    ):
        label, emoji, style = _LOOK[action]
        if action in ("var", "up"):
            single = "Variation" if action == "var" else "Upscale"
            label = single if index is None else label.format(n=index + 1)
        label = label.replace("{g}", str(generation_id))
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                row=row,
                custom_id=custom_id(action, generation_id, index),
            )
        )
        self.action = action
        self.generation_id = generation_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match, /
    ) -> ResultButton:
        """Rebuild the button from a click's custom_id (after a restart too)."""
        index = match["idx"]
        return cls(match["action"], int(match["gid"]), None if index is None else int(index))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Dispatch the click to ``bot.actions``."""
        await interaction.client.actions.handle(
            interaction, self.action, self.generation_id, self.index or 0
        )


def result_view(generation_id: int, count: int, *, full: bool = False) -> discord.ui.View:
    """The buttons for a result of ``count`` images (V and U buttons for each image);
    ``full`` adds "Full size" (the images were sent smaller than they are)."""
    view = discord.ui.View(timeout=None)
    if count <= 1:
        for action in ("reroll", "var", "up", "seed", "info"):
            view.add_item(ResultButton(action, generation_id, row=0))
        if full:
            view.add_item(ResultButton("full", generation_id, row=1))
        view.add_item(ResultButton("del", generation_id, row=1))
        return view
    for i in range(min(count, 5)):
        view.add_item(ResultButton("var", generation_id, i, row=0))
    for i in range(min(count, 5)):
        view.add_item(ResultButton("up", generation_id, i, row=1))
    for action in ("reroll", "seed", "info", "del"):
        view.add_item(ResultButton(action, generation_id, row=2))
    if full:
        view.add_item(ResultButton("full", generation_id, row=3))
    return view


class ReuseSeedModal(discord.ui.Modal, title="Reuse this seed"):
    """Edit the prompt (and negative) of a result and run it again with the same seed."""

    prompt = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=4000
    )
    negative = discord.ui.TextInput(label="Negative prompt", required=False, max_length=1000)

    def __init__(self, generation_id: int, prompt: str, negative: str = ""):
        super().__init__(timeout=900)
        self.generation_id = generation_id
        self.prompt.default = prompt[:4000]
        self.negative.default = (negative or "")[:1000]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.client.actions.reuse_seed_submitted(
            interaction, self.generation_id, self.prompt.value, self.negative.value
        )


class RemixModal(discord.ui.Modal, title="Remix this image"):
    """The "Remix" context menu: a prompt and a strength for img2img on a message's image."""

    prompt = discord.ui.TextInput(
        label="Prompt (inline options work: --ar, --steps...)",
        style=discord.TextStyle.paragraph,
        max_length=4000,
    )
    strength = discord.ui.TextInput(
        label="Strength (0-1, how much to change)", required=False, max_length=5, placeholder="0.6"
    )

    def __init__(self, message: discord.Message, prompt: str = ""):
        super().__init__(timeout=900)
        self.message = message
        self.prompt.default = prompt[:4000] or None

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.client.actions.remix_submitted(
            interaction, self.message, self.prompt.value, self.strength.value
        )


class ConfirmView(discord.ui.View):
    """Yes / Cancel buttons for one user (``/forget-me``, ``/queue clear``); ``value`` is
    True, False or None."""

    def __init__(
        self, user_id: int, *, timeout: float = 120, label: str = "Yes, delete everything"
    ):
        super().__init__(timeout=timeout)
        self.user_id = user_id
        self.value: bool | None = None
        self.confirm.label = label

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Yes, delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.value = True
        await interaction.response.defer()
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.value = False
        await interaction.response.defer()
        self.stop()
