"""Files under the data folder named by content hash: placing them, finding them from the
paths the database holds, and deleting the ones no row references any more.

Placing a file and inserting the row that points at it happen in one write unit of work,
and so do checking that nothing references a file and deleting it. On SQLite a write unit
of work holds the database's write lock (``BEGIN IMMEDIATE``, taken by its first
statement), so an upload of a file can never race with the deletion of the same file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.orm import Session

from bot.services.errors import UnsafeStoredPath
from db.generations import count_init_image_references, count_output_references
from db.loras import count_lora_file_references
from db.results import StoredFile
from runner.files import UnsafePath, ordinary_mode, safe_relative_path, write_atomic

IMAGES_FOLDER = "images"
"""Output images live in ``DATA_DIR/images/<sha256>.png``."""


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stored_path(data_dir: Path, rel_path: str) -> Path:
    """The absolute path of a file the database records as ``rel_path`` (relative to the
    data folder). Raises :class:`UnsafeStoredPath` for anything leading outside it."""
    try:
        rel = safe_relative_path(rel_path, what="stored path", folder="the data folder")
    except UnsafePath:
        raise UnsafeStoredPath(rel_path) from None
    return Path(data_dir) / rel


def relative_to_data(data_dir: Path, path: Path) -> str:
    """``path`` as the database records it: relative to the data folder, with ``/``."""
    return Path(path).relative_to(Path(data_dir)).as_posix()


def place_file(source: Path, target: Path, *, move: bool) -> bool:
    """Put ``source``'s content at ``target`` (a content-hash name) atomically.

    When ``target`` already exists it holds the same bytes, so it is kept (and a moved
    ``source`` is removed). Returns True when ``target`` was created by this call.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if move:
            Path(source).unlink(missing_ok=True)
        return False
    if move:
        try:
            os.replace(source, target)
            return True
        except OSError:  # another file system: copy below, then remove the source
            pass
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if move:
        Path(source).unlink(missing_ok=True)
    return True


def count_references(session: Session, stored: StoredFile) -> int:
    """How many rows (of any user) point at this file."""
    if stored.kind == "lora":
        return count_lora_file_references(session, stored.sha256)
    if stored.kind == "input":
        return count_init_image_references(session, stored.sha256)
    return count_output_references(session, stored.sha256)


def delete_unreferenced(session: Session, data_dir: Path, files: Iterable[StoredFile]) -> list[str]:
    """Delete those of ``files`` that no row references, inside the caller's write unit of
    work (which serialises this against uploads of the same file). Returns the relative
    paths deleted."""
    deleted = []
    for stored in files:
        # The count is the unit of work's first statement: on SQLite it takes the write lock.
        if count_references(session, stored):
            continue
        path = stored_path(data_dir, stored.path)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        deleted.append(stored.path)
    return deleted


__all__ = [
    "IMAGES_FOLDER",
    "count_references",
    "delete_unreferenced",
    "place_file",
    "relative_to_data",
    "sha256_file",
    "stored_path",
    "write_atomic",
]
