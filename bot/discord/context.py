"""Facts about who asked and where, read from discord.py objects: the requester for
policy checks, the destination for results, and the user's defaults for parsing."""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bot.services.generation import Destination
from bot.services.moderation import Requester
from bot.services.parsing import Defaults


def role_ids(user: discord.abc.User) -> tuple[int, ...]:
    """The member's role ids (none in DMs)."""
    # Member.roles drops roles of guilds not in the cache (user-installed apps); the raw
    # ids from the interaction's member payload are what role limits need.
    raw = getattr(user, "_roles", None)
    if raw is not None:
        return tuple(int(r) for r in raw)
    return tuple(r.id for r in getattr(user, "roles", None) or [])


def is_nsfw_channel(channel: Any) -> bool:
    """Whether the channel is age-restricted (unknown channels are not)."""
    check = getattr(channel, "is_nsfw", None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:
        return False


def requester(bot, user: discord.abc.User, guild_id: int | None) -> Requester:
    """The policy view of ``user`` asking in a guild (or a DM when ``guild_id`` is None)."""
    return Requester(
        user_id=user.id,
        role_ids=role_ids(user),
        in_dm=guild_id is None,
        owner=user.id in bot.settings.owner_set,
    )


def is_admin(bot, user: discord.abc.User, permissions: discord.Permissions | None = None) -> bool:
    """Owners, members of an admin role, and members who may manage messages here."""
    if user.id in bot.settings.owner_set:
        return True
    if set(role_ids(user)) & set(bot.settings.admin_role_ids):
        return True
    return bool(permissions and (permissions.manage_messages or permissions.administrator))


def destination(
    user: discord.abc.User, channel: Any, channel_id: int | None, guild_id: int | None
) -> Destination:
    """Where a result for ``user`` goes."""
    return Destination(
        user_id=user.id,
        channel_id=channel_id,
        guild_id=guild_id,
        display_name=getattr(user, "display_name", None) or user.name,
        nsfw_allowed=is_nsfw_channel(channel),
        role_ids=role_ids(user) if guild_id is not None else (),
    )


def interaction_destination(interaction: discord.Interaction) -> Destination:
    """:func:`destination` for an interaction."""
    return destination(
        interaction.user, interaction.channel, interaction.channel_id, interaction.guild_id
    )


async def user_defaults(bot, user: discord.abc.User) -> Defaults:
    """The user's saved defaults over the bot's (creates the user on first use)."""
    name = getattr(user, "display_name", None) or user.name
    return await asyncio.to_thread(bot.preferences.defaults, user.id, name)


async def replied_message(message: discord.Message) -> discord.Message | None:
    """The message ``message`` replies to (from the cache, else fetched), or None when it
    replies to nothing or the original cannot be read (deleted, no access)."""
    ref = message.reference
    if ref is None or ref.message_id is None:
        return None
    if isinstance(ref.resolved, discord.Message):
        return ref.resolved
    try:
        return await message.channel.fetch_message(ref.message_id)
    except discord.HTTPException:
        return None
