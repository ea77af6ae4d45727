"""The bot's settings: the engine's settings plus Discord, database and ownership.

Discord's own variables keep their common names (``DISCORD_TOKEN``, ``DISCORD_API_BASE``,
``DISCORD_GATEWAY_URL``); everything else is ``EASEL_<NAME>``.
"""

from __future__ import annotations

from typing import Annotated

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
