"""``easel doctor``'s database check: the file is SQLite, whole, and passes SQLite's own
consistency check (``PRAGMA quick_check``); it says what is wrong and how to restore.

The check only reads: the file is opened read-only and nothing is migrated or created.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.services.database import (
    DatabaseFileError,
    check_sqlite_file,
    database_url,
    sqlite_file,
)

MAX_PROBLEMS_SHOWN = 3


def _restore_fix(path: Path) -> str:
    return (
        f"stop the bot and restore {path.name} from a backup (copy it over {path}); to save "
        f"what is still readable first: sqlite3 {path} .recover | sqlite3 recovered.sqlite3"
    )


def _quick_check(path: Path) -> list[str]:
    """SQLite's problems with the file (empty when it is consistent)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    problems = [str(row[0]) for row in rows]
    return [] if problems == ["ok"] else problems


def database_checks(settings) -> list:
    """The database of ``settings``: missing (made at the first start), or checked."""
    from bot.cli.doctor import Check  # doctor imports this module

    url = database_url(settings)
    path = sqlite_file(url)
    if path is None:
        return [Check("ok", "database", f"{url.split('://')[0]} (not a SQLite file: not checked)")]
    if not path.exists():
        return [Check("ok", f"database {path}", "none yet (created at the first start)")]
    try:
        check_sqlite_file(path)
        problems = _quick_check(path)
    except DatabaseFileError as exc:
        return [Check("fail", f"database {path}", exc.problem, _restore_fix(path))]
    except sqlite3.DatabaseError as exc:
        return [Check("fail", f"database {path}", f"is damaged ({exc})", _restore_fix(path))]
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        detail = f"is damaged: SQLite's check found {shown}" + (
            f" (and {more} more)" if more > 0 else ""
        )
        return [Check("fail", f"database {path}", detail, _restore_fix(path))]
    size = path.stat().st_size
    return [Check("ok", f"database {path}", f"consistent, {size / 1024**2:.1f} MiB")]


__all__ = ["database_checks"]
