"""Files under the data folder named by content hash: placing them, finding them from the
paths the database holds, and deleting the ones no row references any more.

Placing a file and inserting the row that points at it happen in one write unit of work,
and so do checking that nothing references a file and deleting it. On SQLite a write unit
of work holds the database's write lock (``BEGIN IMMEDIATE``, taken by its first
statement), so an upload of a file can never race with the deletion of the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bot.services.errors import ServiceError, UnsafeStoredPath
from db.generations import count_init_image_references, count_output_references
from db.loras import count_lora_file_references
from db.results import StoredFile
from db.userdata import referenced_file_hashes
from runner.files import UnsafePath, ordinary_mode, safe_relative_path, write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

IMAGES_FOLDER = "images"
"""Output images live in ``DATA_DIR/images/<sha256>.png``."""

LORA_STAGING_FOLDER = ".incoming"
"""LoRA uploads wait in ``lora-library/.incoming/`` (same file system: storing is a rename)."""

PENDING_FOLDER = ".pending-deletions"
"""``DATA_DIR/.pending-deletions/<id>.json``: files a committed deletion has yet to delete."""

STAGING_GRACE_S = 2.0
"""A staging file younger than this is left alone even when unlocked (it may be between
its creation and its lock)."""

TEMP_GRACE_S = 3600.0
"""``.tmp-*`` files (an atomic write in progress) older than this are left over by a crash."""

UNLOCKED_SWEEP_GRACE_S = 3600.0
"""Without SQLite's database-wide write lock (another backend), stored files younger than
this are not swept: their row may not be committed yet."""

_HASH_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]+$")


class DataFolderError(ServiceError):
    """The data folder (or a folder in it) cannot be created or written."""

    def __init__(self, path: Path, what: str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"cannot create {what} {self.path} ({reason}); set data_dir (EASEL_DATA_DIR) "
            "to a folder easel can write"
        )


def ensure_folder(path: Path, *, what: str = "the data folder") -> Path:
    """Create ``path`` (and its parents) or raise :class:`DataFolderError` saying why not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataFolderError(path, what, "a file of that name is in the way") from None
    except NotADirectoryError:
        raise DataFolderError(path, what, "a part of the path is a file, not a folder") from None
    except OSError as exc:
        raise DataFolderError(path, what, exc.strerror or str(exc)) from None
    if not path.is_dir():
        raise DataFolderError(path, what, "it is not a folder")
    return path


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


# ------------------------------------------------------------------ staging files


def lock_staging_file(path: Path) -> int | None:
    """Hold an ``fcntl`` lock on a staging file while its process works on it (so that
    :func:`remove_stale_staging` knows it is alive); returns the descriptor to pass to
    :func:`release_staging_file`."""
    if fcntl is None:  # pragma: no cover - not on Windows
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def release_staging_file(fd: int | None) -> None:
    """Let go of :func:`lock_staging_file`'s lock."""
    if fd is not None:
        os.close(fd)


def remove_stale_staging(folder: Path, *, grace_s: float = STAGING_GRACE_S) -> list[Path]:
    """Delete the files in a staging folder whose process is gone: no process holds their
    lock (:func:`lock_staging_file`). Returns the files deleted."""
    removed: list[Path] = []
    if fcntl is None or not Path(folder).is_dir():
        return removed
    now = time.time()
    for path in sorted(Path(folder).iterdir()):
        try:
            if not path.is_file() or path.is_symlink() or now - path.stat().st_mtime < grace_s:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: an upload in progress
            os.close(fd)
            continue
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _remove_old_temporaries(folder: Path, *, grace_s: float = TEMP_GRACE_S) -> list[Path]:
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.glob(".tmp-*"):
        try:
            if path.is_file() and now - path.stat().st_mtime > grace_s:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


# -------------------------------------------------------------- pending deletions


def record_pending_deletions(data_dir: Path, files: Iterable[StoredFile]) -> Path | None:
    """Write down (durably) the files a deletion is about to make unreferenced, before its
    transaction commits; :func:`finish_pending_deletions` deletes those no row references
    if the process dies before :func:`clear_pending_deletions`. None when ``files`` is
    empty."""
    entries = [{"kind": f.kind, "sha256": f.sha256, "path": f.path} for f in files]
    if not entries:
        return None
    folder = ensure_folder(Path(data_dir) / PENDING_FOLDER, what="the folder")
    target = folder / f"{uuid.uuid4().hex}.json"
    write_atomic(target, json.dumps(entries).encode("utf-8"))
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the new name is on disk before the rows go
    finally:
        os.close(fd)
    return target


def clear_pending_deletions(record: Path | None) -> None:
    """The deletion recorded in ``record`` is done."""
    if record is not None:
        record.unlink(missing_ok=True)


def _read_record(record: Path) -> list[StoredFile] | None:
    try:
        entries = json.loads(record.read_text("utf-8"))
        return [StoredFile(e["kind"], e["sha256"], e["path"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finish_pending_deletions(db: Any, data_dir: Path) -> list[str]:
    """Delete the files that deletions interrupted by a crash recorded and that no row
    references (a deletion whose transaction never committed leaves its rows, so its
    files stay). Returns the relative paths deleted."""
    folder = Path(data_dir) / PENDING_FOLDER
    if not folder.is_dir():
        return []
    deleted: list[str] = []
    for record in sorted(folder.glob("*.json")):
        files = _read_record(record)
        if files is None:
            log.warning("unreadable pending-deletion record %s left in place", record)
            continue
        deleted += db.run_sync(delete_unreferenced, data_dir, files)
        record.unlink(missing_ok=True)
    return deleted


# ------------------------------------------------------------------------- sweep


def _unreferenced_in(folder: Path, referenced: set[str], *, min_age_s: float) -> list[Path]:
    if not folder.is_dir():
        return []
    now = time.time()
    found = []
    for path in folder.iterdir():
        if not _HASH_NAME.match(path.name) or path.name.split(".")[0] in referenced:
            continue
        try:
            if not path.is_file() or (min_age_s and now - path.stat().st_mtime < min_age_s):
                continue
        except OSError:
            continue
        found.append(path)
    return found


def sweep_unreferenced(
    session: Session, data_dir: Path, lora_dir: Path, *, min_age_s: float = 0.0
) -> list[str]:
    """Delete stored files (result images, LoRA files: content-hash names) that no row
    references, inside the caller's write unit of work. Returns the relative paths."""
    # The first statement takes SQLite's write lock: no file is placed meanwhile.
    images, loras = referenced_file_hashes(session)
    doomed = _unreferenced_in(Path(data_dir) / IMAGES_FOLDER, images, min_age_s=min_age_s)
    doomed += _unreferenced_in(Path(lora_dir), loras, min_age_s=min_age_s)
    deleted = []
    for path in doomed:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        try:
            deleted.append(relative_to_data(data_dir, path))
        except ValueError:
            deleted.append(str(path))
    return deleted


def tidy_data_folder(db: Any, settings: Any) -> dict[str, list[str]]:
    """What every start does once the database is migrated: finish deletions a crash
    interrupted, delete stored files no row references, and remove staging and temporary
    files left by killed processes. Returns what was removed, by kind."""
    data_dir = Path(settings.data_dir)
    lora_dir = Path(settings.lora_library_dir)
    pending = finish_pending_deletions(db, data_dir)
    grace = 0.0 if db.is_sqlite else UNLOCKED_SWEEP_GRACE_S
    swept = db.run_sync(sweep_unreferenced, data_dir, lora_dir, min_age_s=grace)
    staging = remove_stale_staging(lora_dir / LORA_STAGING_FOLDER)
    temporaries: list[Path] = []
    for folder in (data_dir / IMAGES_FOLDER, lora_dir):
        temporaries += _remove_old_temporaries(folder)
    report = {
        "pending": pending,
        "swept": swept,
        "staging": [str(p) for p in staging],
        "temporary": [str(p) for p in temporaries],
    }
    if any(report.values()):
        log.info("tidied the data folder after a crash: %s", report)
    return report


__all__ = [
    "IMAGES_FOLDER",
    "LORA_STAGING_FOLDER",
    "PENDING_FOLDER",
    "DataFolderError",
    "clear_pending_deletions",
    "ensure_folder",
    "finish_pending_deletions",
    "lock_staging_file",
    "record_pending_deletions",
    "release_staging_file",
    "remove_stale_staging",
    "sweep_unreferenced",
    "tidy_data_folder",
    "count_references",
    "delete_unreferenced",
    "place_file",
    "relative_to_data",
    "sha256_file",
    "stored_path",
    "write_atomic",
]
