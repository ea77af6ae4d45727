"""Alembic environment for easel.

Normally run through :mod:`db.migrate`, which hands over an open connection in
``config.attributes["connection"]``. Run by the ``alembic`` command instead, the URL
comes from ``-x url=...``, then ``sqlalchemy.url``, then ``EASEL_DATABASE_URL``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from db import models  # noqa: F401  (registers every table on Base.metadata)
from db.base import Base
from db.engine import make_engine

config = context.config
target_metadata = Base.metadata

# Only the `alembic` command comes with an ini file; the application keeps its logging.
if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("EASEL_DATABASE_URL")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set EASEL_DATABASE_URL")
    return url


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    # db.engine makes SQLAlchemy emit BEGIN on SQLite, so DDL there is transactional
    # too: a migration that fails is rolled back whole.
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    # Foreign keys off while tables are rebuilt; see db/migrate.py.
    engine = make_engine(_url(), foreign_keys=False, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            _run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
