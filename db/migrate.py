"""Run Alembic migrations programmatically.

The migration scripts live inside the package (``db/migrations``) and are found as
the package resource ``db:migrations``, so they work from an installed wheel as well
as from the repository. Each function takes a database URL or an existing
:class:`~sqlalchemy.Engine`.

On SQLite, foreign keys are switched off while migrations run (batch migrations
recreate tables, and dropping a table with foreign keys on would cascade deletes into
its children) and ``PRAGMA foreign_key_check`` must come back clean afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from db.engine import make_engine, sqlite_file
from db.errors import DbError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

#: Where Alembic finds the scripts: a package resource, not a path in the repository.
SCRIPT_LOCATION = "db:migrations"


class MigrationError(DbError):
    """Migrations left the database inconsistent (e.g. broken foreign keys)."""


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic :class:`~alembic.config.Config` for easel's migrations, built in code
    (no ini file needed). ``url`` becomes ``sqlalchemy.url`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", str(rendered).replace("%", "%%"))
    return cfg


@contextmanager
def _connection(target: str | URL | Engine, *, foreign_keys: bool = True) -> Iterator[Connection]:
    """A connection to ``target``; an engine made here is disposed afterwards."""
    engine = target if isinstance(target, Engine) else make_engine(target)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        if engine is not target:
            engine.dispose()


_PROCESS_LOCK = threading.RLock()
_depth = 0  # how deeply the thread holding _PROCESS_LOCK has entered migration_lock


def lock_file(target: str | URL | Engine) -> Any:
    """The lock file beside a SQLite database file (``<file>.lock``), or None."""
    url = target.url if isinstance(target, Engine) else target
    path = sqlite_file(url)
    return None if path is None else path.with_name(path.name + ".lock")


@contextmanager
def migration_lock(target: str | URL | Engine) -> Iterator[None]:
    """Migrations one at a time: threads of this process take turns (Alembic's
    ``context`` is global to the process), and processes take turns under an ``fcntl``
    lock on :func:`lock_file` for a SQLite file. Re-entrant within a thread."""
    global _depth
    with _PROCESS_LOCK:
        path = lock_file(target) if _depth == 0 and fcntl is not None else None
        fd = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _depth += 1
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            _depth -= 1
            if fd is not None:
                os.close(fd)  # releases the flock


def _sqlite_foreign_keys(conn: Connection, on: bool) -> None:
    # PRAGMA foreign_keys is ignored inside a transaction, so it goes straight to the
    # driver's connection (SQLAlchemy's BEGIN has not been emitted yet, or was ended).
    conn.connection.driver_connection.execute(  # type: ignore[union-attr]
        f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}"
    )


def _run(target: str | URL | Engine, fn: Any, *args: Any) -> None:
    with migration_lock(target), _connection(target) as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(conn, False)
        try:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            fn(cfg, *args)
            if conn.in_transaction():
                conn.commit()
            if sqlite:
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                conn.rollback()
                if problems:
                    raise MigrationError(f"foreign key violations after migrating: {problems!r}")
        finally:
            if sqlite:
                conn.rollback()
                _sqlite_foreign_keys(conn, True)


def upgrade(target: str | URL | Engine, revision: str = "head") -> None:
    """Migrate the database at ``target`` up to ``revision`` (default: the newest)."""
    _run(target, command.upgrade, revision)


def downgrade(target: str | URL | Engine, revision: str) -> None:
    """Migrate the database at ``target`` down to ``revision`` (``"base"`` empties it)."""
    _run(target, command.downgrade, revision)


def current(target: str | URL | Engine) -> str | None:
    """The revision the database at ``target`` is at, or None for an unmigrated one."""
    with _connection(target) as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
        return revision


def head() -> str:
    """The newest revision among the migration scripts."""
    head_revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head_revision is not None, "no migration scripts found"
    return head_revision


def is_up_to_date(target: str | URL | Engine) -> bool:
    """Whether the database at ``target`` is at the newest revision."""
    return current(target) == head()


def schema_differences(target: str | URL | Engine) -> list[Any]:
    """Alembic's autogenerate comparison of the live schema with the models' metadata:
    an empty list when migrations and models agree."""
    from db import models  # noqa: F401  (registers the tables on Base.metadata)
    from db.base import Base

    with _connection(target) as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, Base.metadata)
        conn.rollback()
        return list(diffs)
