"""Alembic migrations: empty database to head and back, and agreement with the models."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from db import migrate
from db.base import Base
from db.engine import Database

REPO = Path(__file__).resolve().parents[2]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_from_empty_to_head_and_back_down(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "easel.sqlite3"
    url = f"sqlite:///{path}"

    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
    assert migrate.is_up_to_date(url)
    assert _tables(path) == set(Base.metadata.tables) | {"alembic_version"}
    assert migrate.schema_differences(url) == []

    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert _tables(path) == {"alembic_version"}

    migrate.upgrade(url)
    assert migrate.schema_differences(url) == []


def test_schema_comparison_notices_drift(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'drift.sqlite3'}"
    migrate.upgrade(url)
    with sqlite3.connect(tmp_path / "drift.sqlite3") as conn:
        conn.execute("DROP INDEX ix_generation_outputs_sha256")
    diffs = migrate.schema_differences(url)
    assert any("ix_generation_outputs_sha256" in repr(d) for d in diffs)


def test_database_upgrade_is_idempotent_and_keeps_foreign_keys_on(tmp_path: Path) -> None:
    with Database(f"sqlite:///{tmp_path / 'app.sqlite3'}") as db:
        assert db.current() is None
        db.upgrade()
        db.upgrade()
        assert db.current() == migrate.head()
        with db.session() as s:
            # Migrations switch foreign keys off; the pooled connection gets them back.
            assert s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_async_upgrade(tmp_path: Path) -> None:
    async def main() -> None:
        async with Database(f"sqlite:///{tmp_path / 'app.sqlite3'}") as db:
            await db.aupgrade()
            assert db.current() == migrate.head()

    asyncio.run(main())


def test_in_memory_database_can_be_migrated() -> None:
    with Database("sqlite://") as db:
        db.upgrade()
        assert db.current() == migrate.head()
        assert migrate.schema_differences(db.engine) == []


def test_scripts_found_as_package_resource_from_any_directory(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        script = ScriptDirectory.from_config(migrate.alembic_config())
        assert script.get_current_head() == migrate.head()
        assert Path(script.dir).resolve() == (REPO / "db" / "migrations").resolve()
    finally:
        os.chdir(cwd)


def test_alembic_ini_points_at_the_same_scripts() -> None:
    cfg = Config(str(REPO / "db" / "alembic.ini"))
    assert ScriptDirectory.from_config(cfg).get_current_head() == migrate.head()


def test_offline_sql_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alembic import command

    cfg = migrate.alembic_config(f"sqlite:///{tmp_path / 'offline.sqlite3'}")
    command.upgrade(cfg, "head", sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE generations" in out
    assert not (tmp_path / "offline.sqlite3").exists()


BROKEN_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("users", sa.Column("oops", sa.Integer))
    raise RuntimeError("migration failed halfway")


def downgrade():
    pass
"""


def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    from alembic import command

    path = tmp_path / "easel.sqlite3"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    extra = tmp_path / "versions"
    extra.mkdir()
    (extra / "9999_broken.py").write_text(BROKEN_MIGRATION.replace("{head}", migrate.head()))
    cfg = migrate.alembic_config(url)
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option(
        "version_locations",
        os.pathsep.join([str(REPO / "db" / "migrations" / "versions"), str(extra)]),
    )
    with pytest.raises(RuntimeError, match="halfway"):
        command.upgrade(cfg, "head")
    assert migrate.current(url) == migrate.head()
    assert "half_done" not in _tables(path)
    assert migrate.schema_differences(url) == []


@pytest.mark.parametrize(
    ("actions", "paused"),
    [
        ((), False),
        (("queue.pause",), True),
        (("queue.pause", "queue.resume"), False),
        (("queue.pause", "queue.resume", "queue.clear", "queue.pause"), True),
    ],
)
def test_queue_state_migration_keeps_a_paused_queue_paused(
    tmp_path: Path, actions: tuple[str, ...], paused: bool
) -> None:
    from db.queue import queue_paused

    path = tmp_path / "easel.sqlite3"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, "0001")
    with sqlite3.connect(path) as conn:
        for second, action in enumerate(actions):
            conn.execute(
                "INSERT INTO audit_log (actor_id, action, details, created_at) "
                "VALUES (?, ?, '{}', ?)",
                (42, action, f"2026-11-30 12:00:{second:02d}"),
            )
    migrate.upgrade(url)
    with Database(url) as db:
        assert db.read_sync(queue_paused) is paused
