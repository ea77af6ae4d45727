"""Engines, sessions and the Database's asyncio API on real SQLite files."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import audit, generations, users
from db.engine import Database, is_sqlite_memory, make_engine, make_session_factory
from db.models import AuditEntry, Generation, User


def test_sqlite_connections_get_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "easel.sqlite3"
    engine = make_engine(f"sqlite:///{path}", busy_timeout_s=12.5)
    try:
        with engine.connect() as conn:
            assert path.parent.is_dir()
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 12500
            assert conn.exec_driver_sql("SELECT easel_casefold('ÄBC')").scalar() == "äbc"
    finally:
        engine.dispose()


def test_foreign_keys_can_be_switched_off_for_migrations(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}", foreign_keys=False)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    finally:
        engine.dispose()


def test_async_driver_url_is_accepted(tmp_path: Path) -> None:
    with Database(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}") as db:
        assert db.url.get_driver_name() == "pysqlite"


def test_memory_url_detection() -> None:
    assert is_sqlite_memory("sqlite://")
    assert is_sqlite_memory("sqlite:///:memory:")
    assert not is_sqlite_memory("sqlite:///x.sqlite3")
    assert not is_sqlite_memory("postgresql://u@h/db")


def test_write_sessions_begin_immediate(database: Database) -> None:
    statements: list[str] = []

    from sqlalchemy import event

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        with database.begin() as s:
            s.execute(select(1))
        with database.session() as s:
            s.execute(select(1))
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]


def test_begin_commits_and_rolls_back(database: Database) -> None:
    with database.begin() as s:
        users.get_or_create_user(s, 1)
    with pytest.raises(RuntimeError), database.begin() as s:
        users.get_or_create_user(s, 2)
        raise RuntimeError("boom")
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 1


def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError), database.begin() as s:
        s.add(Generation(user_id=999, prompt="x", workflow={}, parameters={}))
        s.flush()


def test_session_factory_keeps_rows_readable_after_commit(database: Database) -> None:
    factory = make_session_factory(database.engine, write=True)
    with factory.begin() as s:
        user = users.get_or_create_user(s, 5, display_name="five")
    assert user.display_name == "five"
    assert user.settings.seed_policy.value == "random"


def _write_one(session: Session, user_id: int, n: int) -> int:
    users.get_or_create_user(session, user_id)
    generation = generations.record_generation(
        session, user_id, prompt=f"prompt {n}", workflow={"n": n}, seed=n
    )
    audit.log_action(session, user_id, "test.write", target=str(generation.id))
    return generation.id


def test_fifty_concurrent_asyncio_writers(db_url: str) -> None:
    """50 tasks write at once through two Database objects on one file (as the bot
    and a second process would): no "database is locked", nothing lost."""

    async def main() -> list[int]:
        async with Database(db_url) as first, Database(db_url) as second:
            tasks = [
                (first if n % 2 else second).run(_write_one, 100 + n % 7, n) for n in range(50)
            ]
            reads = [first.read(generations.history, 100, limit=5) for _ in range(10)]
            results = await asyncio.gather(*tasks, *reads)
            return [r for r in results if isinstance(r, int)]

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    with Database(db_url) as db, db.session() as s:
        assert s.scalar(select(func.count()).select_from(Generation)) == 50
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 50
        assert s.scalar(select(func.count()).select_from(User)) == 7


def test_threads_writing_directly_are_serialised(database: Database) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for n in range(5):
                with database.begin() as s:
                    _write_one(s, 7, k * 10 + n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert database.read_sync(lambda s: generations.history(s, 7, limit=100).total) == 40


def test_database_calls_do_not_block_the_event_loop(database: Database) -> None:
    def slow_write(session: Session) -> str:
        users.get_or_create_user(session, 1)
        time.sleep(0.3)
        return "done"

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        result = await database.run(slow_write)
        tick_task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "done"
    assert ticks >= 10  # the loop kept running while the write slept in its thread


def test_reads_see_committed_data_and_roll_back_their_own_writes(database: Database) -> None:
    async def main() -> None:
        await database.run(users.get_or_create_user, 42, display_name="x")
        user = await database.read(users.get_user, 42)
        assert user is not None and user.display_name == "x"
        await database.read(users.get_or_create_user, 43)  # rolled back
        assert await database.read(users.get_user, 43) is None

    asyncio.run(main())


def test_in_memory_database_works_from_threads() -> None:
    async def main() -> None:
        async with Database("sqlite://") as db:
            await db.aupgrade()
            await asyncio.gather(*(db.run(users.get_or_create_user, n) for n in range(20)))
            assert await db.read(users.count_users) == 20

    asyncio.run(main())


def test_close_is_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    db.close()
    db.close()
    assert "x.sqlite3" in repr(db)
