"""A user's saved preferences: their defaults for ``/imagine`` and their seed policy.

The bot's commands read and change them here instead of calling ``db.users`` themselves.
The methods block (database work): call them with ``asyncio.to_thread`` from the event
loop.
"""

from __future__ import annotations

from typing import Any

from bot.services.parsing import Defaults
from db import users as db_users


class Preferences:
    """Users' preferences on one database, with the bot's ``settings`` as the fallback
    defaults (``default_model``, ``default_steps``, ...)."""

    def __init__(self, database, settings):
        self.db = database
        self.settings = settings

    def get(self, user_id: int):
        """The user's settings row (:class:`db.models.UserSettings`), creating the user on
        first use."""
        return self.db.run_sync(db_users.get_settings, user_id)

    def update(self, user_id: int, **changes: Any):
        """Change some of the user's settings (``None`` resets one to the bot's default);
        returns the settings row. Raises the data layer's errors for a bad value."""
        return self.db.run_sync(db_users.update_settings, user_id, **changes)

    def defaults(self, user_id: int, display_name: str | None = None) -> Defaults:
        """The user's saved defaults over the bot's, for the parser (creates the user on
        first use and remembers ``display_name``)."""
        return self.db.run_sync(self._defaults_tx, user_id, display_name)

    def _defaults_tx(self, session, user_id: int, display_name: str | None) -> Defaults:
        user = db_users.get_or_create_user(session, user_id, display_name=display_name)
        s, bot = user.settings, self.settings
        return Defaults(
            model=s.default_model or bot.default_model,
            width=s.width or bot.default_width,
            height=s.height or bot.default_height,
            steps=s.steps or bot.default_steps,
            cfg=bot.default_cfg if s.cfg is None else s.cfg,
            sampler=s.sampler or bot.default_sampler,
            scheduler=s.scheduler or bot.default_scheduler,
            negative=s.negative_prompt or "",
        )
