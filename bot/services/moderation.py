"""Who may ask for what: per-role limits, the prompt ban list, per-user cooldowns, DMs and
banned users. Pure logic; the cogs call :class:`Gate` before submitting anything."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.services.parsing import Limits


class Refused(Exception):
    """A request refused by policy; ``str()`` is one sentence for the user."""


def limits_for(settings, role_ids: Iterable[int] = (), *, owner: bool = False) -> Limits:
    """A member's limits: the configured ones (``max_steps``, ``max_width``,
    ``max_height``, ``max_count``), raised by the most generous of their roles'
    ``role_limits``. Owners get the most generous of every configured role."""
    roles = (
        list(settings.role_limits.values())
        if owner
        else [settings.role_limits[int(r)] for r in role_ids if int(r) in settings.role_limits]
    )
    steps, width, height = settings.max_steps, settings.max_width, settings.max_height
    count = settings.max_count
    for role in roles:
        steps = max(steps, role.max_steps or 0)
        width = max(width, role.max_width or 0)
        height = max(height, role.max_height or 0)
        count = max(count, role.max_count or 0)
    return Limits(max_steps=steps, max_width=width, max_height=height, max_count=min(count, 4))


def banned_phrase(text: str, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase in ``text`` (whole words, any case), or None."""
    folded = text.casefold()
    for phrase in banned:
        needle = phrase.strip().casefold()
        if needle and re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", folded):
            return phrase.strip()
    return None


class Cooldowns:
    """Per-user cooldown: at most one request every ``seconds``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._last: dict[int, float] = {}

    def remaining(self, user_id: int) -> float:
        """Seconds the user still has to wait (0 when they may go)."""
        last = self._last.get(user_id)
        if last is None or self.seconds <= 0:
            return 0.0
        return max(0.0, last + self.seconds - self._clock())

    def hit(self, user_id: int) -> None:
        """Record a request now."""
        if self.seconds > 0:
            self._last[user_id] = self._clock()


@dataclass
class Requester:
    """Who is asking, as far as policy cares."""

    user_id: int
    role_ids: tuple[int, ...] = ()
    in_dm: bool = False
    owner: bool = False


class Gate:
    """Policy checks before a request is queued; each refusal is one sentence."""

    def __init__(self, settings):
        self.settings = settings
        self.cooldowns = Cooldowns(settings.cooldown_s)

    def limits(self, who: Requester) -> Limits:
        """The limits that apply to ``who``."""
        return limits_for(self.settings, who.role_ids, owner=who.owner)

    def check_user(self, who: Requester) -> None:
        """Refuse banned users and, when configured, direct messages."""
        if who.user_id in self.settings.banned_user_ids and not who.owner:
            raise Refused("You are not allowed to use this bot.")
        if who.in_dm and not self.settings.allow_dms and not who.owner:
            raise Refused("This bot does not take requests in direct messages; use it in a server.")

    def check_prompt(self, *texts: str) -> None:
        """Refuse a prompt containing a banned word or phrase."""
        for text in texts:
            phrase = banned_phrase(text or "", self.settings.banned_words)
            if phrase:
                raise Refused(f"Your prompt contains {phrase!r}, which is not allowed here.")

    def check_cooldown(self, who: Requester) -> None:
        """Refuse a request that comes too soon after the user's last one; else record it."""
        if who.owner:
            return
        wait = self.cooldowns.remaining(who.user_id)
        if wait > 0:
            raise Refused(
                f"Please wait {wait:.0f} more second{'s' if round(wait) != 1 else ''} before your next request."
            )
        self.cooldowns.hit(who.user_id)
