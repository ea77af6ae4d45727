"""Fixtures for the data layer's tests: real SQLite files under tmp_path."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# When the project is not installed and pytest is not started as `python -m pytest`,
# the repository root is not on sys.path and this very folder (tests/db) would be
# imported as a namespace package called `db`. Put the real package first.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if "db" in sys.modules and getattr(sys.modules["db"], "__file__", None) is None:
    del sys.modules["db"]

from sqlalchemy.orm import Session  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import Database  # noqa: E402


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file migrated to head once per run; tests get copies of it."""
    path = tmp_path_factory.mktemp("template") / "easel.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_path(tmp_path: Path, migrated_template: Path) -> Path:
    """A fresh database file at head, in a folder of its own."""
    path = tmp_path / "data" / "easel.sqlite3"
    path.parent.mkdir()
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    """One write unit of work for the whole test (committed at the end)."""
    with database.begin() as s:
        yield s


def sha(text: str) -> str:
    """A sha256 hex digest, for fake file hashes."""
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def make_sha():
    return sha
