"""Opening the database for the settings in force: migrated at start, idempotently."""

from __future__ import annotations

import asyncio

from bot.services.database import database_url, open_database
from bot.settings import Settings
from db import migrate


def test_open_database_migrates_a_new_file(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    url = database_url(settings)
    assert url == f"sqlite:///{(tmp_path / 'data' / 'easel.sqlite3').resolve()}"
    with open_database(settings) as db:
        assert db.current() == migrate.head()
    assert (tmp_path / "data" / "easel.sqlite3").is_file()
    with open_database(settings) as db:  # already at head: nothing to do
        assert db.current() == migrate.head()
        assert migrate.schema_differences(db.engine) == []


def test_configured_url_and_no_upgrade(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/other.db")
    assert database_url(settings) == f"sqlite:///{tmp_path}/other.db"
    with open_database(settings, upgrade=False) as db:
        assert db.current() is None
    assert not (tmp_path / "data" / "easel.sqlite3").exists()


def test_open_database_from_the_event_loop(tmp_path):
    async def main():
        db = await asyncio.to_thread(open_database, Settings(data_dir=tmp_path))
        try:
            return db.current()
        finally:
            await db.aclose()

    assert asyncio.run(main()) == migrate.head()
