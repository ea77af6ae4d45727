"""Data rights: export everything easel stores about one user, and forget them.

An export is a folder holding ``easel-user-data.json`` (every row: user, settings,
LoRAs, generations with outputs, jobs, audit entries they made) and a copy of each file
those rows point at under ``files/loras/`` and ``files/images/``.

Forgetting deletes every row of the user, then the files no other row references (a
file another user also has stays), then calls each plugin's ``easel_forget_user`` hook.
A plugin that raises is reported by name; the others still run.

Forgetting is complete even across a crash: the user's files are written down
(:func:`bot.services.storage.record_pending_deletions`) in the transaction that deletes
the rows, before it commits, and the next start (or the next ``forget``) deletes those no
row references (:func:`bot.services.storage.finish_pending_deletions`). Forgetting a user
again is harmless: nothing is left to delete, and the plugins are asked again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bot.services.errors import ExportTargetNotEmpty
from bot.services.storage import (
    clear_pending_deletions,
    delete_unreferenced,
    finish_pending_deletions,
    place_file,
    record_pending_deletions,
    stored_path,
    write_atomic,
)
from db import userdata as db_userdata
from db.engine import Database
from db.results import StoredFile
from db.userdata import row_to_dict
from runner.settings import EngineSettings

EXPORT_DOCUMENT = "easel-user-data.json"
FILES_FOLDER = "files"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_user` wrote."""

    user_id: int
    folder: Path
    document: Path
    files: list[Path]
    """The copies made, under ``folder / "files"``."""
    missing: list[str] = field(default_factory=list)
    """Data-folder paths the rows point at that were not on disk."""


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget_user` deleted, and how the plugins fared."""

    user_id: int
    rows: dict[str, int]
    """Rows deleted, per table."""
    files_deleted: list[str]
    files_kept: list[str]
    """The user's files that other users' rows still reference."""
    plugins_called: list[str] = field(default_factory=list)
    plugin_errors: dict[str, str] = field(default_factory=dict)
    """Plugin name -> what it raised."""

    @property
    def complete(self) -> bool:
        """True when every plugin forgot the user too."""
        return not self.plugin_errors


# ---------------------------------------------------------------------------- export


def _export_document(session: Session, user_id: int) -> dict[str, Any]:
    return db_userdata.export_user_data(session, user_id)


def _copy_files(
    data_dir: Path, folder: Path, document: dict[str, Any]
) -> tuple[list[Path], list[str]]:
    copies, missing = [], []
    for entry in document.get("files", []):
        source = stored_path(data_dir, entry["path"])
        name = f"{entry['sha256']}{Path(entry['path']).suffix}"
        relative = Path(FILES_FOLDER) / f"{entry['kind']}s" / name
        if not source.is_file():
            missing.append(entry["path"])
            entry["export_path"] = None
            continue
        place_file(source, folder / relative, move=False)
        entry["export_path"] = relative.as_posix()
        copies.append(folder / relative)
    document["files_missing"] = missing
    return copies, missing


def _check_target(folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ExportTargetNotEmpty(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_export(
    settings: EngineSettings, user_id: int, folder: Path, document: dict[str, Any]
) -> ExportReport:
    copies, missing = _copy_files(settings.data_dir, folder, document)
    target = folder / EXPORT_DOCUMENT
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    write_atomic(target, text.encode("utf-8"))
    return ExportReport(user_id, folder, target, copies, missing)


def export_user(
    db: Database, settings: EngineSettings, user_id: int, out_dir: Path
) -> ExportReport:
    """Write everything stored about ``user_id`` into the new or empty folder
    ``out_dir``: the JSON document and copies of their files. Raises
    :class:`db.errors.NotFound` for an unknown user and
    :class:`~bot.services.errors.ExportTargetNotEmpty`."""
    document = db.read_sync(_export_document, user_id)
    folder = _check_target(out_dir)
    return _write_export(settings, user_id, folder, document)


def list_users(
    db: Database, *, page: int = 1, per_page: int = 50
) -> tuple[int, list[dict[str, Any]]]:
    """How many users are known, and page ``page`` (from 1) of them with how much each
    has stored (see :func:`db.userdata.user_summaries`)."""
    return db.read_sync(db_userdata.user_summaries, offset=(page - 1) * per_page, limit=per_page)


def stored_rows(db: Database, user_id: int) -> dict[str, int]:
    """How many rows of each table belong to ``user_id`` (all zeros once forgotten)."""
    return db.read_sync(db_userdata.user_row_counts, user_id)


# ---------------------------------------------------------------------------- forget


def default_forget_plugin_manager() -> Any:
    """A plugin manager with the hook specs and the installed (entry-point) plugins only.
    The built-in plugins store nothing about users, and leaving them out keeps torch
    unloaded. The bot passes its environment's manager; the command line loads the
    bot's whole plugin set (drop-ins included) through ``load_plugins``."""
    from runner.plugin_manager import build_plugin_manager

    return build_plugin_manager(builtins=(), entry_points=True)


def call_forget_hooks(pm: Any, user_id: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Call every plugin's ``easel_forget_user`` one by one, so that one that raises does
    not stop the others. Returns the plugin names called and, by name, the errors."""
    from runner.plugin_manager import plugin_name

    called: list[str] = []
    errors: dict[str, str] = {}
    arguments = {"user_id": user_id, "data_dir": Path(data_dir)}
    # pluggy calls the most recently registered first; keep its order.
    for impl in reversed(pm.hook.easel_forget_user.get_hookimpls()):
        if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
            continue
        name = plugin_name(pm, impl.plugin)
        called.append(name)
        try:
            impl.function(**{arg: arguments[arg] for arg in impl.argnames})
        except Exception as exc:  # reported by name; the other plugins still run
            # The plugin host wraps a guarded plugin's error in one naming the plugin.
            inner = exc.__cause__ if getattr(exc, "plugin", None) and exc.__cause__ else exc
            errors[name] = f"{type(inner).__name__}: {inner}"
    return called, errors


def _forget_tx(
    session: Session, user_id: int, data_dir: Path
) -> tuple[dict[str, int], list[StoredFile], list[StoredFile], Path | None]:
    rows = db_userdata.user_row_counts(session, user_id)
    files = db_userdata.user_files(session, user_id)
    orphans = db_userdata.delete_user_data(session, user_id)
    # Written before the commit: if the process dies after it, the next start deletes them.
    record = record_pending_deletions(data_dir, orphans)
    return rows, files, orphans, record


def _delete_files(db: Database, data_dir: Path, orphans: list[StoredFile]) -> list[str]:
    return db.run_sync(delete_unreferenced, data_dir, orphans) if orphans else []


def _report(
    user_id: int,
    rows: dict[str, int],
    files: list[StoredFile],
    deleted: list[str],
    called: list[str],
    errors: dict[str, str],
) -> ForgetReport:
    kept = [f.path for f in files if f.path not in deleted]
    return ForgetReport(user_id, rows, deleted, kept, called, errors)


def forget_user(
    db: Database,
    settings: EngineSettings,
    user_id: int,
    *,
    pm: Any = None,
    load_plugins: Callable[[], Any] | None = None,
) -> ForgetReport:
    """Delete every row of ``user_id`` and the files no other row references, then call
    the plugins' ``easel_forget_user`` hook.

    ``pm`` is the plugin manager in use (the bot passes its environment's); without one,
    ``load_plugins()`` builds one after the deletion (the command line loads the bot's
    plugins this way), else :func:`default_forget_plugin_manager`. A plugin that raises,
    or plugins that cannot be loaded, are reported in :attr:`ForgetReport.plugin_errors`;
    the deletion stands.
    """
    # A forget a crash interrupted is finished first (the start does it too).
    finish_pending_deletions(db, settings.data_dir)
    rows, files, orphans, record = db.run_sync(_forget_tx, user_id, settings.data_dir)
    deleted = _delete_files(db, settings.data_dir, orphans)
    clear_pending_deletions(record)
    called, errors = _plugins(pm, load_plugins, user_id, settings.data_dir)
    return _report(user_id, rows, files, deleted, called, errors)


def _plugins(
    pm: Any, load_plugins: Callable[[], Any] | None, user_id: int, data_dir: Path
) -> tuple[list[str], dict[str, str]]:
    if pm is None:
        try:
            pm = (load_plugins or default_forget_plugin_manager)()
        except Exception as exc:  # a broken plugin must not undo the deletion
            return [], {"(plugin loading)": f"{type(exc).__name__}: {exc}"}
    return call_forget_hooks(pm, user_id, data_dir)


__all__ = [
    "EXPORT_DOCUMENT",
    "ExportReport",
    "ForgetReport",
    "call_forget_hooks",
    "default_forget_plugin_manager",
    "export_user",
    "forget_user",
    "list_users",
    "row_to_dict",
    "stored_rows",
]
