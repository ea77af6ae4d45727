"""Pointing discord.py at another REST base and gateway (a REST proxy, or a local stand-in
server in tests): ``DISCORD_API_BASE`` and ``DISCORD_GATEWAY_URL``.

discord.py reads both from class attributes (``discord.http.Route.BASE`` for REST and the
interaction webhooks, ``DiscordWebSocket.DEFAULT_GATEWAY`` for the gateway), so they are
set once before the client starts. ``discord.http._set_api_version`` resets Route.BASE:
call :func:`apply_discord_urls` after it, never before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

API_VERSION = 10


class BadDiscordUrl(ValueError):
    """A configured Discord URL that discord.py cannot use."""


@dataclass(frozen=True)
class DiscordUrls:
    """The REST base (with its ``/api/vN`` suffix) and the gateway URL in force."""

    api_base: str
    gateway: str


def normalise_api_base(url: str) -> str:
    """``http://host:port`` or ``.../api`` or ``.../api/v10`` -> ``.../api/v10``."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise BadDiscordUrl(f"DISCORD_API_BASE must be an http(s) URL, not {url!r}")
    if re.search(r"/api/v\d+$", url):
        return url
    if url.endswith("/api"):
        return f"{url}/v{API_VERSION}"
    return f"{url}/api/v{API_VERSION}"


def normalise_gateway(url: str) -> str:
    """A ``ws://`` or ``wss://`` URL ending in ``/`` (discord.py adds the query string)."""
    url = url.strip()
    if not re.match(r"^wss?://[^/\s]+", url):
        raise BadDiscordUrl(f"DISCORD_GATEWAY_URL must be a ws(s) URL, not {url!r}")
    return url if url.endswith("/") else url + "/"


def apply_discord_urls(api_base: str | None, gateway_url: str | None) -> DiscordUrls:
    """Set discord.py's REST base and gateway URL (None keeps Discord's own)."""
    import discord.gateway
    import discord.http
    import yarl

    if api_base:
        discord.http.Route.BASE = normalise_api_base(api_base)
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(normalise_gateway(gateway_url))
    return DiscordUrls(
        discord.http.Route.BASE, str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    )
