"""The Discord bot's own settings, on top of :class:`bot.settings.Settings`.

Same sources and names as every other setting: ``EASEL_<NAME>`` in the environment or
``name = ...`` in the TOML file. Per-role limits are a table keyed by role id::

    [role_limits.123456789012345678]
    max_steps = 80
    max_width = 1536
    max_height = 1536
    max_count = 4
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from bot.settings import Settings


class RoleLimit(BaseModel):
    """Limits a Discord role unlocks; a member gets the most generous of their roles."""

    max_steps: int | None = Field(default=None, ge=1)
    max_width: int | None = Field(default=None, ge=64)
    max_height: int | None = Field(default=None, ge=64)
    max_count: int | None = Field(default=None, ge=1, le=4)


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return value


class BotSettings(Settings):
    """Everything ``easel bot`` reads: the engine's, the database's and the bot's own."""

    admin_role_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Roles whose members may delete anyone's results."
    )
    role_limits: dict[int, RoleLimit] = Field(
        default_factory=dict,
        description="Per-role limits (max_steps, max_width, max_height, max_count).",
    )
    default_steps: int = Field(
        default=20, ge=1, description="Steps when neither the user nor the prompt says."
    )
    default_width: int | None = Field(
        default=None, ge=64, description="Width when unset; None = the model's."
    )
    default_height: int | None = Field(
        default=None, ge=64, description="Height when unset; None = the model's."
    )
    default_cfg: float = Field(default=7.0, ge=0, le=30)
    default_sampler: str = "euler"
    default_scheduler: str = "normal"
    max_count: int = Field(
        default=4, ge=1, le=4, description="Images per /imagine for members without a role limit."
    )
    cooldown_s: float = Field(
        default=0.0, ge=0, description="Seconds a user waits between two requests."
    )
    banned_words: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Words or phrases refused in prompts (case-insensitive)."
    )
    banned_user_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Discord users the bot ignores."
    )
    allow_dms: bool = Field(default=True, description="Whether commands work in direct messages.")
    safety: Literal["off", "spoiler", "refuse"] = Field(
        default="spoiler",
        description="What happens to a flagged result outside age-restricted channels.",
    )
    safety_checker_dir: str | None = Field(
        default=None,
        description="A local diffusers StableDiffusionSafetyChecker folder; none = no checker.",
    )
    progress_interval_s: float = Field(
        default=1.5, ge=0.2, description="Least time between progress edits."
    )
    previews: bool = Field(default=False, description="Show a small preview image while sampling.")
    variation_strength: float = Field(default=0.55, gt=0, le=1)
    upscale_factor: float = Field(default=2.0, gt=1, le=4)
    upscale_strength: float = Field(default=0.35, gt=0, le=1)
    preload_model: bool = Field(
        default=True, description="Load the default model (off the event loop) at start."
    )
    guild_ready_timeout: float = Field(
        default=2.0, ge=0, description="discord.py's wait for guilds at start."
    )

    @field_validator("admin_role_ids", "banned_user_ids", mode="before")
    @classmethod
    def _split_more_ids(cls, value: object) -> object:
        value = _split(value)
        return [int(v) for v in value] if isinstance(value, list) else value

    @field_validator("banned_words", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        return _split(value)

    @property
    def owner_set(self) -> frozenset[int]:
        """The owners' ids as a set."""
        return frozenset(self.owner_ids)
