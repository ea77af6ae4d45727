"""The service layer's exception tree. Each error names the offending value; the bot and
the command line turn them into friendly sentences (``str(exc)`` already is one)."""

from __future__ import annotations

from pathlib import Path

# The data layer's errors reach the service's callers unchanged; the edges (bot, command
# line) import them from here rather than from ``db``.
from db.errors import (
    DbError,
    FamilyMismatch,
    Forbidden,
    InvalidName,
    InvalidTransition,
    InvalidValue,
    NameTaken,
    NotFound,
)


class ServiceError(Exception):
    """Base class of every error the service layer raises on purpose."""


class ExportTargetNotEmpty(ServiceError):
    """An export was asked to write into a folder that already holds files."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"export folder {str(path)!r} is not empty; choose a new or empty folder")


class UnsafeStoredPath(ServiceError):
    """A path from the database that would lead outside the data folder."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"stored path {path!r} points outside the data folder; refusing to use it")


__all__ = [
    "DbError",
    "ExportTargetNotEmpty",
    "FamilyMismatch",
    "Forbidden",
    "InvalidName",
    "InvalidTransition",
    "InvalidValue",
    "NameTaken",
    "NotFound",
    "ServiceError",
    "UnsafeStoredPath",
]
