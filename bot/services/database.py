"""Opening the database for the settings in force, migrated to the newest schema."""

from __future__ import annotations

from typing import Any

from db.engine import Database


def database_url(settings: Any) -> str:
    """The SQLAlchemy URL in force: ``database_url`` from the configuration, else the
    SQLite file ``DATA_DIR/easel.sqlite3``."""
    url = getattr(settings, "database_url_in_force", None)
    if url:
        return str(url)
    return f"sqlite:///{(settings.data_dir / 'easel.sqlite3').resolve()}"


def open_database(settings: Any, *, upgrade: bool = True, **kwargs: Any) -> Database:
    """A :class:`db.engine.Database` for ``settings`` (:class:`bot.settings.Settings`),
    with Alembic migrations applied up to the newest unless ``upgrade`` is False. The
    caller closes it (``with open_database(s) as db: ...``)."""
    db = Database(database_url(settings), **kwargs)
    if upgrade:
        try:
            db.upgrade()
        except BaseException:
            db.close()
            raise
    return db


__all__ = ["database_url", "open_database"]
