"""Every table's round trip through a real SQLite file, and the custom column types."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError

from db.base import MAX_SEED
from db.engine import Database
from db.models import (
    ALL_MODELS,
    AuditEntry,
    Generation,
    GenerationOutput,
    InstalledPlugin,
    Job,
    JobStatus,
    Lora,
    LoraFamily,
    QueueState,
    SeedPolicy,
    User,
    UserSettings,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _columns(row: object) -> dict[str, object]:
    return {a.key: getattr(row, a.key) for a in row.__mapper__.column_attrs}  # type: ignore[attr-defined]


def test_every_table_round_trips(database: Database, make_sha) -> None:
    with database.begin() as s:
        user = User(id=2**62 + 5, display_name="Ada", created_at=T0, last_seen_at=T0)
        user.settings = UserSettings(
            default_model="tiny",
            width=512,
            height=768,
            steps=20,
            cfg=6.5,
            sampler="euler",
            scheduler="karras",
            negative_prompt="blurry",
            seed_policy=SeedPolicy.INCREMENT,
            fixed_seed=MAX_SEED,
            last_seed=2**63,
            updated_at=T0,
        )
        s.add(user)
        s.flush()
        lora = Lora(
            owner_id=user.id,
            name="ink",
            sha256=make_sha("ink"),
            path="loras/ab/ink.safetensors",
            size_bytes=3 * 2**30,
            family=LoraFamily.SDXL,
            key_format="kohya",
            trigger_words=["inky", "sketch"],
            default_weight=0.75,
            shared=True,
            original_filename="ink v2.safetensors",
            created_at=T0,
            updated_at=T0,
        )
        parent = Generation(user_id=user.id, prompt="parent", workflow={}, parameters={})
        s.add_all([lora, parent])
        s.flush()
        generation = Generation(
            user_id=user.id,
            parent_id=parent.id,
            status=JobStatus.DONE,
            template="img2img",
            model="tiny",
            prompt="a fox",
            negative_prompt="cat",
            seed=2**64 - 2,
            workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 2**64 - 2}}},
            parameters={"steps": 4, "loras": [["ink", 0.5]]},
            error=None,
            guild_id=2**60,
            channel_id=2**61,
            message_id=2**62,
            queued_at=T0,
            started_at=T0 + timedelta(seconds=1),
            finished_at=T0 + timedelta(seconds=3),
            created_at=T0,
        )
        s.add(generation)
        s.flush()
        output = GenerationOutput(
            generation_id=generation.id,
            index=0,
            path="images/cd/x.png",
            sha256=make_sha("img"),
            width=64,
            height=32,
            size_bytes=1234,
        )
        job = Job(
            user_id=user.id,
            generation_id=generation.id,
            status=JobStatus.RUNNING,
            priority=3,
            request={"prompt": "a fox"},
            attempts=2,
            worker="gpu0",
            error="oom once",
            posted=True,
            posted_message_id=2**62 + 1,
            created_at=T0,
            queued_at=T0,
            started_at=T0,
            finished_at=None,
            updated_at=T0,
        )
        plugin = InstalledPlugin(
            distribution="easel-upscale",
            version="1.2.3",
            enabled=False,
            source="easel-upscale==1.2.3",
            wheel_sha256=make_sha("wheel"),
            error="ImportError: x",
            installed_at=T0,
            updated_at=T0,
        )
        entry = AuditEntry(
            actor_id=2**62 + 9,
            action="plugin.install",
            target="easel-upscale",
            details={"confirmed": True, "pip": ["install", "easel-upscale"]},
            created_at=T0,
        )
        queue_state = QueueState(id=1, paused=True, changed_by=2**62 + 9, updated_at=T0)
        s.add_all([output, job, plugin, entry, queue_state])
        s.flush()
        written = [
            user,
            user.settings,
            lora,
            parent,
            generation,
            output,
            job,
            plugin,
            entry,
            queue_state,
        ]
        expected = [
            (type(r), r.__mapper__.primary_key_from_instance(r), _columns(r)) for r in written
        ]

    assert {type(r) for r in written} == set(ALL_MODELS)
    with database.session() as s:
        for model, pk, columns in expected:
            loaded = s.get(model, pk)
            assert loaded is not None, model
            assert _columns(loaded) == columns, model
        generation = s.scalars(select(Generation).where(Generation.prompt == "a fox")).one()
        assert generation.parent is not None and generation.parent.prompt == "parent"
        assert [o.index for o in generation.outputs] == [0]
        assert generation.duration_s == 2.0
        assert generation.started_at is not None and generation.started_at.tzinfo is UTC
        assert "Generation" in repr(generation) and "seed=" in repr(generation)


def test_timestamps_are_stored_in_utc(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    with database.begin() as s:
        s.add(User(id=1, created_at=datetime(2025, 6, 1, 12, 0, tzinfo=plus_two)))
    with database.session() as s:
        user = s.get(User, 1)
        assert user is not None
        assert user.created_at == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
        raw = s.execute(text("SELECT created_at FROM users WHERE id = 1")).scalar()
        assert str(raw).startswith("2025-06-01 10:00:00")


def test_seeds_use_comfyui_full_range(database: Database) -> None:
    with database.begin() as s:
        s.add(User(id=1))
        s.flush()
        for seed in (0, 1, 2**53 + 1, 2**63 - 1, 2**63, MAX_SEED):
            s.add(Generation(user_id=1, prompt=str(seed), seed=seed, workflow={}, parameters={}))
    with database.session() as s:
        got = {g.prompt: g.seed for g in s.scalars(select(Generation))}
    assert got == {str(v): v for v in (0, 1, 2**53 + 1, 2**63 - 1, 2**63, MAX_SEED)}
    with pytest.raises(StatementError), database.begin() as s:
        s.add(Generation(user_id=1, prompt="x", seed=MAX_SEED + 1, workflow={}, parameters={}))


def test_enums_are_checked_by_the_database(db_path: Path, database: Database) -> None:
    with database.begin() as s:
        s.add(User(id=1))
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO jobs (user_id, status, priority, request, attempts, posted,"
                " created_at, updated_at) VALUES (1, 'exploded', 0, '{}', 0, 0, '2025-01-01',"
                " '2025-01-01')"
            )
    finally:
        conn.close()


def test_server_defaults_fill_raw_inserts(db_path: Path, database: Database) -> None:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("INSERT INTO users (id, created_at, last_seen_at) VALUES (1, 'x', 'x')")
        conn.execute("INSERT INTO user_settings (user_id, updated_at) VALUES (1, 'x')")
        row = conn.execute("SELECT seed_policy FROM user_settings").fetchone()
        assert row == ("random",)
    finally:
        conn.close()


def test_unique_constraints(database: Database, make_sha) -> None:
    with database.begin() as s:
        s.add(User(id=1))
    lora = dict(sha256=make_sha("a"), path="p", size_bytes=1, family=LoraFamily.SD1, key_format="k")
    with pytest.raises(IntegrityError), database.begin() as s:
        s.add_all([Lora(owner_id=1, name="a", **lora), Lora(owner_id=1, name="a", **lora)])
    with pytest.raises(IntegrityError), database.begin() as s:
        s.add_all(
            [
                InstalledPlugin(distribution="x", source="x"),
                InstalledPlugin(distribution="x", source="y"),
            ]
        )


def test_on_delete_rules(database: Database, make_sha) -> None:
    with database.begin() as s:
        s.add_all([User(id=1), User(id=2)])
        s.flush()
        parent = Generation(user_id=1, prompt="p", workflow={}, parameters={})
        s.add(parent)
        s.flush()
        child = Generation(user_id=2, prompt="c", workflow={}, parameters={}, parent_id=parent.id)
        s.add(child)
        s.flush()
        s.add(
            GenerationOutput(
                generation_id=parent.id,
                index=0,
                path="x",
                sha256=make_sha("x"),
                width=1,
                height=1,
                size_bytes=1,
            )
        )
        s.add(Job(user_id=2, generation_id=parent.id, request={}))
        child_id = child.id
    with database.begin() as s:
        # Core DELETE: only the database's ON DELETE rules act here.
        s.execute(text("DELETE FROM users WHERE id = 1"))
    with database.session() as s:
        assert s.get(UserSettings, 1) is None
        assert s.scalars(select(GenerationOutput)).all() == []
        assert s.get(Generation, child_id).parent_id is None  # type: ignore[union-attr]
        assert s.scalars(select(Job)).one().generation_id is None


def test_generation_ids_are_never_reused(database: Database) -> None:
    with database.begin() as s:
        s.add(User(id=1))
        s.flush()
        g = Generation(user_id=1, prompt="p", workflow={}, parameters={})
        s.add(g)
        s.flush()
        first = g.id
        s.delete(g)
    with database.begin() as s:
        g = Generation(user_id=1, prompt="p", workflow={}, parameters={})
        s.add(g)
        s.flush()
        assert g.id > first
