"""The bot's settings: the engine's settings plus Discord, database and ownership.

Discord's own variables keep their common names (``DISCORD_TOKEN``, ``DISCORD_API_BASE``,
``DISCORD_GATEWAY_URL``); everything else is ``EASEL_<NAME>``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from runner.settings import EngineSettings


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
        default="local", description="Where jobs run: 'local' (a thread per GPU in this process) or 'ray'."
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster for the ray backend (auto, HOST:6379, ray://HOST:10001)."
    )
    ray_namespace: str = Field(default="easel", description="Ray namespace of easel's worker actors.")
    ray_workers: int = Field(
        default=-1,
        ge=-1,
        description="Worker actors the bot starts itself on Ray: -1 = one per cluster GPU when no "
        "`easel worker` is running, 0 = only those from `easel worker`.",
    )
    max_batch_jobs: int = Field(
        default=4, ge=1, description="Compatible waiting jobs (same model, size, steps...) run as one batch of up to this many."
    )
    role_priorities: dict[str, int] = Field(
        default_factory=dict,
        description="Queue priority by Discord role id or name (higher runs first; default 0).",
    )

    @field_validator("plugin_pip_args", mode="before")
    @classmethod
    def _split_pip_args(cls, value):
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @field_validator("owner_ids", "guild_ids", mode="before")
    @classmethod
    def _split_ids(cls, value):
        if isinstance(value, str):
            return [int(v) for v in value.replace(";", ",").split(",") if v.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @property
    def database_url_in_force(self) -> str:
        """The configured URL, or ``sqlite:///DATA_DIR/easel.sqlite3``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'easel.sqlite3').resolve()}"
