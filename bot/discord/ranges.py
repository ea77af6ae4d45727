"""Option ranges declared to Discord from the settings in force: ``/imagine steps`` may
go up to the highest ``max_steps`` any member can have (the configured one, raised by a
role's ``role_limits``), not a number written in the code. The ranges are set when the
cog is built, so a sync (``easel bot --sync``) declares them; each member's own limit is
checked when they ask (:class:`bot.services.moderation.Gate`).
"""

from __future__ import annotations

import dataclasses

from discord import app_commands

from bot.services.moderation import limits_for
from bot.services.parsing import Limits


def ceiling_limits(settings) -> Limits:
    """The most generous limits anyone can have: the configured ones raised by every
    role's (what an owner gets)."""
    return limits_for(settings, owner=True)


def declare_max(command: app_commands.Command, **maxima: int) -> None:
    """Set the declared ``max_value`` of ``command``'s options (by name). Raises
    ValueError naming an option the command does not have."""
    params = command._params  # discord.py keeps the declared parameters here
    for name, value in maxima.items():
        if name not in params:
            raise ValueError(f"/{command.name} has no option {name!r}")
        # A copy: the parameter objects are shared with the class's command.
        params[name] = dataclasses.replace(params[name], max_value=int(value))
