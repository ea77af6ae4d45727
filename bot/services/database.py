"""Opening the database for the settings in force, migrated to the newest schema.

Opening is safe from many threads and processes at once: migrations run one at a time
(:func:`db.migrate.migration_lock`), and a new SQLite database is built under a temporary
name and renamed into place, so a crash while creating it leaves no half-made file. An
existing file that is empty, not SQLite, truncated or damaged is refused with a sentence
naming it and how to restore it (:class:`db.engine.DatabaseFileError`); only a missing
file becomes a new database.

Once migrated, the data folder is tidied (:func:`bot.services.storage.tidy_data_folder`):
file deletions left pending by a crash are finished and stale uploads removed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from bot.services.storage import DataFolderError, ensure_folder, tidy_data_folder
from db import migrate
from db.engine import (
    Database,
    DatabaseFileError,
    check_sqlite_file,
    damaged_database,
    sqlite_file,
)

log = logging.getLogger(__name__)

_checked: set[Path] = set()
"""Database files this process has checked (and may hold connections to)."""


def database_url(settings: Any) -> str:
    """The SQLAlchemy URL in force: ``database_url`` from the configuration, else the
    SQLite file ``DATA_DIR/easel.sqlite3``."""
    url = getattr(settings, "database_url_in_force", None)
    if url:
        return str(url)
    return f"sqlite:///{(settings.data_dir / 'easel.sqlite3').resolve()}"


def _create_sqlite(path: Path) -> None:
    """Build a new database at ``path`` (missing) under a temporary name, migrated, then
    rename it into place."""
    tmp = path.with_name(f".{path.name}.new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    migrate.upgrade(f"sqlite:///{tmp}")  # its engine is disposed: the WAL is checkpointed
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _open(url: str, path: Path | None, upgrade: bool, kwargs: dict[str, Any]) -> Database:
    with migrate.migration_lock(url):
        if path is not None and path not in _checked:
            # Reading the file directly is safe only while this process has no SQLite
            # connection to it: closing any descriptor of a file drops every POSIX lock
            # the process holds on it, SQLite's included. So once per process, first.
            check_sqlite_file(path)
            _checked.add(path)
            if upgrade and not path.exists():
                _create_sqlite(path)
        db = Database(url, **kwargs)
        try:
            if upgrade:
                db.upgrade()
            elif path is not None and path.exists():
                db.current()  # reads the file: a damaged one is refused here
        except BaseException as exc:
            db.close()
            damaged = damaged_database(path, exc) if isinstance(exc, DBAPIError) else None
            if damaged is not None:
                raise damaged from exc
            raise
    return db


def open_database(settings: Any, *, upgrade: bool = True, **kwargs: Any) -> Database:
    """A :class:`db.engine.Database` for ``settings`` (:class:`bot.settings.Settings`),
    with Alembic migrations applied up to the newest unless ``upgrade`` is False, and the
    data folder tidied after a crash. The caller closes it (``with open_database(s) as
    db: ...``).

    Raises :class:`db.engine.DatabaseFileError` for an existing database file that is
    empty, not SQLite, truncated or damaged, and
    :class:`bot.services.storage.DataFolderError` when the data folder (or the database's
    folder) cannot be created.
    """
    url = database_url(settings)
    path = sqlite_file(url)
    if path is not None:
        path = path.resolve()
        ensure_folder(path.parent, what="the database's folder")
    db = _open(url, path, upgrade, kwargs)
    if upgrade:
        try:
            tidy_data_folder(db, settings)
        except DataFolderError:
            db.close()
            raise
        except OSError as exc:  # tidying is best effort; the next start tries again
            log.warning("could not tidy the data folder: %s", exc)
    return db


__all__ = [
    "DatabaseFileError",
    "check_sqlite_file",
    "database_url",
    "open_database",
    "sqlite_file",
]
