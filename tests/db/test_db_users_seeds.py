"""Users, their settings and the seed policies."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from db import generations, seeds, users
from db.base import MAX_SEED
from db.engine import Database
from db.errors import InvalidValue, NotFound
from db.models import SeedPolicy


def test_get_or_create_user(session: Session) -> None:
    assert users.get_user(session, 10) is None
    user = users.get_or_create_user(session, 10, display_name="ten")
    assert user.settings.seed_policy is SeedPolicy.RANDOM
    again = users.get_or_create_user(session, 10, display_name="TEN")
    assert again is user and again.display_name == "TEN"
    assert users.get_or_create_user(session, 10).display_name == "TEN"
    assert users.count_users(session) == 1
    with pytest.raises(NotFound) as err:
        users.require_user(session, 11)
    assert err.value.value == 11


def test_list_users(session: Session) -> None:
    for uid in (30, 10, 20):
        users.get_or_create_user(session, uid)
    assert [u.id for u in users.list_users(session)] == [10, 20, 30]
    assert [u.id for u in users.list_users(session, offset=1, limit=1)] == [20]


def test_update_settings(session: Session) -> None:
    settings = users.update_settings(
        session, 1, width=768, height=512, steps=30, cfg=7, sampler="euler", default_model="tiny"
    )
    assert (settings.width, settings.height, settings.steps, settings.cfg) == (768, 512, 30, 7.0)
    assert isinstance(settings.cfg, float)
    settings = users.update_settings(session, 1, width=None, negative_prompt="blurry")
    assert settings.width is None and settings.height == 512
    assert users.get_settings(session, 1).negative_prompt == "blurry"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"width": "512"}, "width"),
        ({"width": True}, "width"),
        ({"steps": 0}, "steps"),
        ({"seed_policy": "sometimes"}, "seed_policy"),
        ({"fixed_seed": -1}, "fixed_seed"),
        ({"fixed_seed": MAX_SEED + 1}, "fixed_seed"),
        ({"seed_policy": "fixed"}, "fixed_seed"),
    ],
)
def test_update_settings_rejects_bad_values(session: Session, changes: dict, field: str) -> None:
    with pytest.raises(InvalidValue) as err:
        users.update_settings(session, 1, **changes)
    assert err.value.field == field


def test_random_policy(session: Session) -> None:
    drawn = {seeds.seed_for_job(session, 1) for _ in range(20)}
    assert len(drawn) > 15
    assert all(0 <= s < seeds.RANDOM_SEED_LIMIT for s in drawn)
    last = seeds.seed_for_job(session, 1)
    assert users.get_settings(session, 1).last_seed == last


def test_fixed_policy(session: Session) -> None:
    users.update_settings(session, 1, seed_policy="fixed", fixed_seed=MAX_SEED)
    assert [seeds.seed_for_job(session, 1) for _ in range(3)] == [MAX_SEED] * 3
    assert users.get_settings(session, 1).last_seed == MAX_SEED


def test_increment_policy_counts_on_from_the_last_seed_and_wraps(session: Session) -> None:
    users.update_settings(session, 1, seed_policy=SeedPolicy.INCREMENT)
    first = seeds.seed_for_job(session, 1)  # no last seed yet: a random start
    assert [seeds.seed_for_job(session, 1) for _ in range(3)] == [first + 1, first + 2, first + 3]
    # A requested seed is used as is and moves the counter.
    assert seeds.seed_for_job(session, 1, requested=MAX_SEED) == MAX_SEED
    assert seeds.seed_for_job(session, 1) == 0


def test_requested_seed_wins_and_is_checked(session: Session) -> None:
    users.update_settings(session, 1, seed_policy="fixed", fixed_seed=5)
    assert seeds.seed_for_job(session, 1, requested=77) == 77
    assert users.get_settings(session, 1).last_seed == 77
    for bad in (-1, MAX_SEED + 1, "12", True):
        with pytest.raises(InvalidValue):
            seeds.seed_for_job(session, 1, requested=bad)  # type: ignore[arg-type]


def test_reuse_the_seed_of_a_generation(session: Session) -> None:
    g = generations.record_generation(
        session, 1, prompt="x", workflow={}, seed=seeds.seed_for_job(session, 1)
    )
    reused = generations.get_generation(session, g.id, user_id=1).seed
    assert seeds.seed_for_job(session, 1, requested=reused) == g.seed


def test_last_seed_survives_a_restart(database: Database) -> None:
    database.run_sync(users.update_settings, 1, seed_policy="increment")
    seed = database.run_sync(seeds.seed_for_job, 1)
    database.close()
    with Database(database.url) as again:
        assert again.run_sync(seeds.seed_for_job, 1) == seed + 1
