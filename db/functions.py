"""SQL functions the queries need that not every backend spells the same way."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction

#: Name under which :func:`py_casefold` is registered on every SQLite connection.
SQLITE_CASEFOLD = "easel_casefold"


def py_casefold(value: str | None) -> str | None:
    """Python's Unicode case folding, registered as a SQLite function."""
    return None if value is None else value.casefold()


class casefold(GenericFunction[str]):  # noqa: N801 - SQL function names are lowercase
    """Case-folded text, for case-insensitive comparisons that work beyond ASCII.

    SQLite's own ``lower()`` and ``LIKE`` only fold ASCII letters, so on SQLite this
    calls a Python function registered by :func:`db.engine.make_engine`; elsewhere it
    is ``lower()``.
    """

    type = Text()
    inherit_cache = True


@compiles(casefold)
def _casefold_default(element: casefold, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(casefold, "sqlite")
def _casefold_sqlite(element: casefold, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{SQLITE_CASEFOLD}({compiler.process(element.clauses, **kw)})"
