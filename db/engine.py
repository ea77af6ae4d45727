"""Engines, sessions and the :class:`Database` that owns them.

SQLite connections get WAL mode, foreign keys and a busy timeout. SQLAlchemy emits
``BEGIN`` itself (the ``sqlite3`` module's own transaction handling is turned off), so
write units of work can start with ``BEGIN IMMEDIATE``: they take SQLite's write lock
up front and wait for it under the busy timeout, instead of failing with "database is
locked" when a read transaction later tries to become a write transaction.

The asyncio API runs plain, synchronous unit-of-work functions in worker threads, so
no database call ever blocks the event loop; on SQLite, writes are also serialised
inside the process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from db.errors import DbError
from db.functions import SQLITE_CASEFOLD, py_casefold

P = ParamSpec("P")
T = TypeVar("T")

#: Execution option read by the SQLite ``begin`` hook: "DEFERRED" or "IMMEDIATE".
SQLITE_BEGIN_OPTION = "easel_sqlite_begin"

DEFAULT_BUSY_TIMEOUT_S = 30.0


def is_sqlite(url: str | URL) -> bool:
    """Whether ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def is_sqlite_memory(url: str | URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return False
    database = u.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL, or None for another database or an in-memory one."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or is_sqlite_memory(u) or u.query.get("uri"):
        return None
    return Path(u.database).expanduser() if u.database else None


SQLITE_HEADER = b"SQLite format 3\x00"

_RESTORE = (
    "restore it from a backup (copy the backup over this file, with the bot stopped), or "
    "move it away to start with an empty database"
)


class DatabaseFileError(DbError):
    """An existing database file that easel will not open: empty, not SQLite, truncated or
    damaged. The message names the file and how to restore it."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"the database file {self.path} {problem}; {_RESTORE}")


def check_sqlite_file(path: Path) -> None:
    """Refuse an existing file that cannot be easel's SQLite database: empty (a new database
    is created only where no file exists), without the SQLite header, or shorter than its
    header says (truncated). Raises :class:`DatabaseFileError`; a missing file passes.

    Call it only before this process connects to the file: closing a descriptor of a
    file releases all of the process's POSIX locks on it, SQLite's among them."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = fh.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise DatabaseFileError(path, "is empty (0 bytes), so it holds none of easel's data")
    if not header.startswith(SQLITE_HEADER) or len(header) < 100:
        raise DatabaseFileError(path, "is not a SQLite database (it lacks the SQLite header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid when its change counters agree.
    if pages and header[24:28] == header[92:96] and size < pages * page_size:
        raise DatabaseFileError(
            path,
            f"is truncated (its header says {pages * page_size} bytes, the file has {size})",
        )


def damaged_database(path: Path | None, exc: BaseException) -> DatabaseFileError | None:
    """The :class:`DatabaseFileError` for a SQLite error that means the file is damaged
    ("database disk image is malformed", "file is not a database"), else None."""
    text = str(getattr(exc, "orig", None) or exc)
    markers = ("malformed", "not a database", "file is encrypted", "disk image")
    if path is None or not any(m in text for m in markers):
        return None
    return DatabaseFileError(path, f"is damaged (SQLite says: {text})")


def _sync_url(url: str | URL) -> URL:
    """The URL with an async SQLite driver swapped for the standard one."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.get_driver_name() != "pysqlite":
        u = u.set(drivername="sqlite")
    return u


def make_engine(
    url: str | URL,
    *,
    echo: bool = False,
    foreign_keys: bool = True,
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    **kwargs: Any,
) -> Engine:
    """Create an engine for ``url``.

    For SQLite: creates the parent folder of the database file, and every connection
    gets ``journal_mode=WAL``, ``foreign_keys=ON`` (unless ``foreign_keys`` is False, as
    migrations need), ``busy_timeout`` and the ``easel_casefold`` function. In-memory
    databases share one connection (for tests and tools; not for concurrent use).
    Other URLs are passed to :func:`sqlalchemy.create_engine` unchanged.
    """
    u = _sync_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, echo=echo, **kwargs)

    memory = is_sqlite_memory(u)
    if memory:
        kwargs.setdefault("poolclass", StaticPool)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        kwargs["connect_args"] = connect_args
    elif u.database and not u.query.get("uri"):
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    engine = create_engine(u, echo=echo, **kwargs)
    timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (see _on_begin); sqlite3 must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL is durable across application crashes and much faster.
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()
        dbapi_connection.create_function(SQLITE_CASEFOLD, 1, py_casefold, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_session_factory(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    Sessions keep loaded attributes after commit (``expire_on_commit=False``), so rows
    returned from a unit of work stay readable once it has closed. With ``write=True``
    on SQLite, transactions start with ``BEGIN IMMEDIATE``.
    """
    bind: Engine = engine
    if write and engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    return sessionmaker(bind=bind, expire_on_commit=False)


class Database:
    """Owns the engine, the session factories and the worker threads.

    Synchronous use::

        db = Database("sqlite:///data/easel.sqlite3")
        db.upgrade()
        with db.begin() as session:          # one write unit of work
            users.get_or_create_user(session, 1234)
        with db.session() as session:        # reads
            users.get_user(session, 1234)

    From asyncio, pass a function that takes the session first::

        user = await db.run(users.get_or_create_user, 1234)    # write, in a thread
        page = await db.read(generations.history, 1234, limit=10)

    Rows returned this way are detached: attributes that were loaded stay readable,
    relationships that were not loaded raise. Query functions load what they return.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        echo: bool = False,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        read_workers: int = 4,
        **engine_kwargs: Any,
    ):
        self.url: URL = _sync_url(url)
        self.engine: Engine = make_engine(
            self.url, echo=echo, busy_timeout_s=busy_timeout_s, **engine_kwargs
        )
        self.session_factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.write_session_factory: sessionmaker[Session] = make_session_factory(
            self.engine, write=True
        )
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # One SQLite file has one writer at a time anyway; queueing writers here rather
        # than in SQLite's busy handler keeps them in order and off the busy timeout.
        self._write_lock: threading.RLock | None = threading.RLock() if self.is_sqlite else None
        # An in-memory database is one shared connection: everything goes through the lock.
        self._serialize_reads = is_sqlite_memory(self.url)
        self._write_pool = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else read_workers,
            thread_name_prefix="easel-db-write",
        )
        self._read_pool = ThreadPoolExecutor(
            max_workers=max(1, read_workers), thread_name_prefix="easel-db-read"
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"<Database {self.url.render_as_string(hide_password=True)}>"

    # -- synchronous API -------------------------------------------------------------

    def _lock(self) -> AbstractContextManager[Any]:
        return self._write_lock if self._write_lock is not None else nullcontext()

    def session(self) -> Session:
        """A new session for reading (use as a context manager; it never commits on
        its own). Write through :meth:`begin`."""
        return self.session_factory()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One write unit of work: commits when the block ends, rolls back if it raises.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE`` and writers inside
        this process take turns.
        """
        with self._lock(), self.write_session_factory.begin() as session:
            yield session

    def run_sync(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``fn(session, *args, **kwargs)`` in one write unit of work and return
        its result."""
        with self.begin() as session:
            return fn(session, *args, **kwargs)

    def read_sync(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``fn(session, *args, **kwargs)`` in a read-only session (anything it
        writes is rolled back) and return its result."""
        guard = self._lock() if self._serialize_reads else nullcontext()
        # Closing (not rolling back) ends the transaction without expiring the rows
        # that are handed back.
        with guard, self.session_factory() as session:
            return fn(session, *args, **kwargs)

    def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision`` (the application does this at
        start)."""
        from db import migrate

        with self._lock():
            migrate.upgrade(self.engine, revision)

    def current(self) -> str | None:
        """The database's current Alembic revision, or None when it has none."""
        from db import migrate

        return migrate.current(self.engine)

    def close(self) -> None:
        """Wait for queued work, stop the worker threads and close all connections."""
        if self._closed:
            return
        self._closed = True
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asyncio API -----------------------------------------------------------------

    async def _in_thread(self, pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(pool, ctx.run, call)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(session, *args, **kwargs)`` run in one write unit of work on a
        worker thread. The event loop is never blocked."""
        call = functools.partial(self.run_sync, fn, *args, **kwargs)
        return await self._in_thread(self._write_pool, call)

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(session, *args, **kwargs)`` run in a read-only session on a worker
        thread; reads run concurrently with each other and with writes (WAL)."""
        call = functools.partial(self.read_sync, fn, *args, **kwargs)
        pool = self._write_pool if self._serialize_reads else self._read_pool
        return await self._in_thread(pool, call)

    async def aupgrade(self, revision: str = "head") -> None:
        """:meth:`upgrade` on a worker thread."""
        await self._in_thread(self._write_pool, functools.partial(self.upgrade, revision))

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
