"""The service layer's exception tree. Each error names the offending value; the bot and
the command line turn them into friendly sentences (``str(exc)`` already is one)."""

from __future__ import annotations

from pathlib import Path

from db.errors import DbError, NotFound  # the data layer's errors, for the bot's edges


class ServiceError(Exception):
    """Base class of every error the service layer raises on purpose."""


class ExportTargetNotEmpty(ServiceError):
    """An export was asked to write into a folder that already holds files."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"export folder {str(path)!r} is not empty; choose a new or empty folder")


class MissingFile(ServiceError):
    """A file the database points at is not on disk (deleted by hand, or a broken copy)."""

    def __init__(self, kind: str, path: Path):
        self.kind = kind
        self.path = path
        super().__init__(f"the {kind} file {str(path)!r} is missing from the data folder")


class UnsafeStoredPath(ServiceError):
    """A path from the database that would lead outside the data folder."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"stored path {path!r} points outside the data folder; refusing to use it")


__all__ = [
    "DbError",
    "ExportTargetNotEmpty",
    "MissingFile",
    "NotFound",
    "ServiceError",
    "UnsafeStoredPath",
]
