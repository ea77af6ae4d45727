"""The bot's settings: the engine's settings plus Discord, database, ownership, jobs, and
the Discord bot's own limits and behaviour.

Discord's own variables keep their common names (``DISCORD_TOKEN``, ``DISCORD_API_BASE``,
``DISCORD_GATEWAY_URL``); everything else is ``EASEL_<NAME>``. Per-role limits are a
table keyed by role id::

    [role_limits.123456789012345678]
    max_steps = 80
    max_width = 1536
    max_height = 1536
    max_count = 4
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from runner.settings import EngineSettings
from runner.templates import DEFAULTS


class RoleLimit(BaseModel):
    """Limits a Discord role unlocks; a member gets the most generous of their roles."""

    max_steps: int | None = Field(default=None, ge=1)
    max_width: int | None = Field(default=None, ge=64)
    max_height: int | None = Field(default=None, ge=64)
    max_count: int | None = Field(default=None, ge=1, le=4)


class WorkflowLimit(BaseModel):
    """Limits of one operator workflow (``[workflow_limits.NAME]``), over its sidecar's."""

    max_steps: int | None = Field(default=None, ge=1)
    max_size: int | None = Field(default=None, ge=64)
    roles: list[int] = Field(default_factory=list)


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return value


class Settings(EngineSettings):
    """All of easel's configuration in one object."""

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file in the data folder."
    )
    owner_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Discord user ids of the bot's owners."
    )
    discord_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("discord_token", "DISCORD_TOKEN", "EASEL_DISCORD_TOKEN"),
    )
    discord_api_base: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "discord_api_base", "DISCORD_API_BASE", "EASEL_DISCORD_API_BASE"
        ),
    )
    discord_gateway_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "discord_gateway_url", "DISCORD_GATEWAY_URL", "EASEL_DISCORD_GATEWAY_URL"
        ),
    )
    guild_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Guilds to sync commands to."
    )
    max_queued_per_user: int = Field(default=5, ge=1)
    plugin_installs_enabled: bool = Field(
        default=True, description="Whether owners may install plugins with pip (/plugin install)."
    )
    plugin_allow_urls: bool = Field(
        default=False,
        description="Allow plugin specs that are URLs or local paths, not only PyPI requirements.",
    )
    plugin_pip_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a pip run for a plugin may take."
    )
    plugin_pip_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra pip arguments for plugin installs (e.g. --no-index --find-links /wheels).",
    )
    plugin_dropin_requirements: bool = Field(
        default=False,
        description="Install a drop-in plugin's requirements.txt with pip (needs plugin_installs_enabled).",
    )
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="Where jobs run: 'local' (a thread per GPU in this process) or 'ray'.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster for the ray backend (auto, HOST:6379, ray://HOST:10001).",
    )
    ray_namespace: str = Field(
        default="easel", description="Ray namespace of easel's worker actors."
    )
    ray_workers: int = Field(
        default=-1,
        ge=-1,
        description="Worker actors the bot starts itself on Ray: -1 = one per cluster GPU when no "
        "`easel worker` is running, 0 = only those from `easel worker`.",
    )
    max_batch_jobs: int = Field(
        default=4,
        ge=1,
        description="Compatible waiting jobs (same model, size, steps...) run as one batch of up to this many.",
    )
    role_priorities: dict[str, int] = Field(
        default_factory=dict,
        description="Queue priority by Discord role id or name (higher runs first; default 0).",
    )

    # The Discord bot ---------------------------------------------------------------------
    admin_role_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Roles whose members may delete anyone's results."
    )
    role_limits: dict[int, RoleLimit] = Field(
        default_factory=dict,
        description="Per-role limits (max_steps, max_width, max_height, max_count).",
    )
    workflow_limits: dict[str, WorkflowLimit] = Field(
        default_factory=dict,
        description="Per operator workflow (by name): max_steps, max_size, roles that may use it.",
    )
    allow_run_from_png: bool = Field(
        default=True,
        description="Whether members may rerun a ComfyUI PNG's workflow by replying '@easel run'.",
    )
    default_steps: int = Field(
        default=DEFAULTS.steps, ge=1, description="Steps when neither the user nor the prompt says."
    )
    default_width: int | None = Field(
        default=None, ge=64, description="Width when unset; None = the model's."
    )
    default_height: int | None = Field(
        default=None, ge=64, description="Height when unset; None = the model's."
    )
    default_cfg: float = Field(default=DEFAULTS.cfg, ge=0, le=30)
    default_sampler: str = DEFAULTS.sampler
    default_scheduler: str = DEFAULTS.scheduler
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
    clip_model: str | None = Field(
        default=None,
        description="CLIP image-text model that ranks /imagine best_of candidates (a folder "
        "in models/clip, or tiny-random for tests); none = best_of is not offered.",
    )
    progress_interval_s: float = Field(
        default=1.5, ge=0.2, description="Least time between progress edits."
    )
    previews: bool = Field(default=False, description="Show a small preview image while sampling.")
    variation_strength: float = Field(default=0.55, gt=0, le=1)
    upscale_factor: float = Field(default=2.0, gt=1, le=4)
    upscale_strength: float = Field(default=0.35, gt=0, le=1)
    preload_model: bool = Field(
        default=True,
        description="Load the default model (off the event loop) at start (local backend).",
    )
    guild_ready_timeout: float = Field(
        default=2.0, ge=0, description="discord.py's wait for guilds at start."
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="At stop, how long a running job may take to finish before the bot exits "
        "anyway (it then runs again at the next start).",
    )
    # jobs (issue 10) -------------------------------------------------------------------
    max_job_attempts: int = Field(
        default=3,
        ge=1,
        description="How many times a job may start: one whose worker (or the whole bot) "
        "dies this often while it runs fails, and its user is told, instead of running again.",
    )

    @field_validator("owner_ids", "guild_ids", "admin_role_ids", "banned_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        """Id lists from the environment: ``"1, 2;3"`` or one id."""
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

    @field_validator("plugin_pip_args", mode="before")
    @classmethod
    def _split_pip_args(cls, value):
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @property
    def database_url_in_force(self) -> str:
        """The configured URL, or ``sqlite:///DATA_DIR/easel.sqlite3``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'easel.sqlite3').resolve()}"
