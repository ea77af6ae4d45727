"""Deleting plugin files: a distribution in the plugin packages folder by its RECORD (as
``pip uninstall`` would, which does not work outside pip's own environment), the files an
upgrade left behind, a drop-in's file or folder. Nothing outside the folder given is ever
touched."""

from __future__ import annotations

import shutil
from pathlib import Path

from runner.plugin_host import normalize_name, plugin_site_dirs


def _dist_infos(site_dirs: list[Path], name: str) -> list[Path]:
    key = normalize_name(name)
    found = []
    for site in site_dirs:
        if not site.is_dir():
            continue
        for entry in site.glob("*.dist-info"):
            dist_name = entry.name[: -len(".dist-info")].rsplit("-", 1)[0]
            if normalize_name(dist_name) == key:
                found.append(entry)
    return found


def _record_files(dist_info: Path) -> list[Path]:
    record = dist_info / "RECORD"
    site = dist_info.parent
    files = []
    if record.is_file():
        for line in record.read_text(errors="replace").splitlines():
            path = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line.split(",")[0]
            if path:
                files.append((site / path).resolve())
    return files


def _delete_files(files: list[Path], root: Path, keep: set[Path] = frozenset()) -> list[str]:
    """Delete ``files`` that lie inside ``root`` (never outside), then folders left empty."""
    root = root.resolve()
    removed: list[str] = []
    folders: set[Path] = set()
    for path in files:
        if path in keep or root not in path.parents:
            continue
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(str(path))
            folders.add(path.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        current = folder
        while current != root and root in current.parents and current.is_dir():
            cache = current / "__pycache__"
            if cache.is_dir() and {p.name for p in current.iterdir()} == {"__pycache__"}:
                shutil.rmtree(cache, ignore_errors=True)
            try:
                current.rmdir()
            except OSError:
                break
            current = current.parent
    return removed


def remove_distribution(prefix: Path, name: str) -> list[str]:
    """Delete every installed version of distribution ``name`` from the plugin packages
    folder ``prefix``, by its RECORD (as pip uninstall would); nothing outside ``prefix`` is
    touched. Returns the files deleted."""
    removed: list[str] = []
    for dist_info in _dist_infos(plugin_site_dirs(prefix), name):
        removed += _delete_files(_record_files(dist_info), prefix)
        shutil.rmtree(dist_info, ignore_errors=True)
    return removed


def remove_stale_versions(prefix: Path, name: str, version: str) -> list[str]:
    """After pip installed ``name`` ``version`` over an older one in ``prefix`` (pip does
    not uninstall outside its own environment, so the old metadata stays), delete the old
    version's files that the new one does not use."""
    infos = _dist_infos(plugin_site_dirs(prefix), name)
    current = [d for d in infos if d.name[: -len(".dist-info")].rsplit("-", 1)[-1] == version]
    keep = {p for d in current for p in _record_files(d)}
    removed: list[str] = []
    for dist_info in infos:
        if dist_info in current:
            continue
        removed += _delete_files(_record_files(dist_info), prefix, keep)
        shutil.rmtree(dist_info, ignore_errors=True)
    return removed


def remove_dropin(dropin_dir: Path, path: Path) -> list[str]:
    """Delete the drop-in file or folder ``path`` if it lies inside ``dropin_dir``."""
    if dropin_dir.resolve() not in path.resolve().parents:
        return []
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return [str(path)]


__all__ = ["remove_distribution", "remove_dropin", "remove_stale_versions"]
