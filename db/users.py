"""Users (by Discord id) and their settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from db.base import MAX_SEED, utcnow
from db.errors import InvalidValue, NotFound
from db.models import SeedPolicy, User, UserSettings

#: Settings a user may change, with the Python types each accepts (None resets a
#: setting to the bot's configured default).
SETTINGS_FIELDS: dict[str, tuple[type, ...]] = {
    "default_model": (str,),
    "width": (int,),
    "height": (int,),
    "steps": (int,),
    "cfg": (int, float),
    "sampler": (str,),
    "scheduler": (str,),
    "negative_prompt": (str,),
    "seed_policy": (str, SeedPolicy),
    "fixed_seed": (int,),
}

_POSITIVE_INTS = ("width", "height", "steps")


def get_user(session: Session, user_id: int) -> User | None:
    """The user with this Discord id (settings loaded), or None."""
    return session.scalars(
        select(User).where(User.id == user_id).options(selectinload(User.settings))
    ).one_or_none()


def require_user(session: Session, user_id: int) -> User:
    """The user with this Discord id; raises :class:`NotFound` when there is none."""
    user = get_user(session, user_id)
    if user is None:
        raise NotFound("user", user_id)
    return user


def get_or_create_user(session: Session, user_id: int, *, display_name: str | None = None) -> User:
    """The user with this Discord id, created (with default settings) if new.

    ``display_name``, when given, is stored as the user's latest known name. Safe
    against a concurrent creation of the same user by another process.
    """
    user = get_user(session, user_id)
    if user is None:
        try:
            with session.begin_nested():
                user = User(id=user_id, display_name=display_name)
                user.settings = UserSettings()
                session.add(user)
        except IntegrityError:
            # Someone else created it between our SELECT and INSERT.
            user = require_user(session, user_id)
    elif display_name is not None and user.display_name != display_name:
        user.display_name = display_name
        user.last_seen_at = utcnow()
    if user.settings is None:  # a row created outside these functions
        user.settings = UserSettings()
    session.flush()
    return user


def list_users(session: Session, *, offset: int = 0, limit: int = 100) -> list[User]:
    """Users by Discord id, with their settings, one page at a time."""
    return list(
        session.scalars(
            select(User)
            .options(selectinload(User.settings))
            .order_by(User.id)
            .offset(offset)
            .limit(limit)
        )
    )


def count_users(session: Session) -> int:
    """How many users are known."""
    return session.scalar(select(func.count()).select_from(User)) or 0


def get_settings(session: Session, user_id: int) -> UserSettings:
    """The user's settings, creating the user on first use."""
    return get_or_create_user(session, user_id).settings


def _check_setting(name: str, value: Any) -> Any:
    if name not in SETTINGS_FIELDS:
        raise InvalidValue(name, value, f"unknown setting; known: {', '.join(SETTINGS_FIELDS)}")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, SETTINGS_FIELDS[name]):
        raise InvalidValue(name, value, f"expected {SETTINGS_FIELDS[name][0].__name__}")
    if name == "seed_policy":
        try:
            return SeedPolicy(value)
        except ValueError:
            choices = ", ".join(p.value for p in SeedPolicy)
            raise InvalidValue(name, value, f"must be one of {choices}") from None
    if name == "fixed_seed" and not 0 <= value <= MAX_SEED:
        raise InvalidValue(name, value, f"must be between 0 and {MAX_SEED}")
    if name in _POSITIVE_INTS and value <= 0:
        raise InvalidValue(name, value, "must be positive")
    if name == "cfg":
        return float(value)
    return value


def update_settings(session: Session, user_id: int, **changes: Any) -> UserSettings:
    """Change some of a user's settings; ``None`` resets one to the bot's default.

    Only the data's shape is checked here (known field, type, seed range); limits such
    as the largest size come from configuration and are the caller's to enforce.
    ``seed_policy="fixed"`` needs a fixed seed, given now or stored before.
    Raises :class:`InvalidValue` naming the offending field and value.
    """
    checked = {name: _check_setting(name, value) for name, value in changes.items()}
    settings = get_settings(session, user_id)
    if "seed_policy" in checked and checked["seed_policy"] is None:
        checked["seed_policy"] = SeedPolicy.RANDOM
    policy = checked.get("seed_policy", settings.seed_policy)
    fixed_seed = checked.get("fixed_seed", settings.fixed_seed)
    if policy is SeedPolicy.FIXED and fixed_seed is None:
        raise InvalidValue("fixed_seed", None, "the fixed seed policy needs a seed")
    for name, value in checked.items():
        setattr(settings, name, value)
    settings.updated_at = utcnow()
    session.flush()
    return settings
