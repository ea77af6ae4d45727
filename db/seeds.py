"""Seed policies: which seed a job gets, and remembering the last one used."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from db.base import MAX_SEED, utcnow
from db.errors import InvalidValue
from db.models import SeedPolicy
from db.users import get_settings

#: Random seeds are drawn below 2**53 so they survive any JSON reader (JavaScript
#: numbers are doubles). Stored and requested seeds may use ComfyUI's full range,
#: 0 .. 2**64-1 (:data:`db.base.MAX_SEED`).
RANDOM_SEED_LIMIT = 2**53


def random_seed() -> int:
    """A fresh random seed in ``0 .. 2**53-1``."""
    return secrets.randbelow(RANDOM_SEED_LIMIT)


def seed_for_job(session: Session, user_id: int, requested: int | None = None) -> int:
    """The seed a new job of this user runs with, stored as their last seed.

    An explicitly ``requested`` seed (typed by the user, or "reuse the seed of
    generation X") wins. Otherwise the user's policy decides: ``random`` draws a fresh
    one, ``fixed`` uses their fixed seed, ``increment`` uses last seed + 1 (wrapping
    after 2**64-1; a random start when there is no last seed).
    """
    settings = get_settings(session, user_id)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int):
            raise InvalidValue("seed", requested, "expected an integer")
        if not 0 <= requested <= MAX_SEED:
            raise InvalidValue("seed", requested, f"must be between 0 and {MAX_SEED}")
        seed = requested
    elif settings.seed_policy is SeedPolicy.FIXED and settings.fixed_seed is not None:
        seed = settings.fixed_seed
    elif settings.seed_policy is SeedPolicy.INCREMENT and settings.last_seed is not None:
        seed = (settings.last_seed + 1) % (MAX_SEED + 1)
    else:
        seed = random_seed()
    settings.last_seed = seed
    settings.updated_at = utcnow()
    session.flush()
    return seed
