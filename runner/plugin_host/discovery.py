"""Finding plugins on disk and importing them: distributions with ``easel`` entry points
(in the bot's own environment or the plugin packages folder) and drop-in modules or
packages in the plugins folder, imported as ``easel_dropins.<name>``. Importing again
means forgetting the old modules first (:func:`purge_modules`), so edited files are read."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import logging
import os
import sys
import sysconfig
import types
from pathlib import Path

from runner.plugin_host.records import PluginRecord, PluginSource, normalize_name
from runner.plugin_manager import DEFAULT_PLUGINS, ENTRY_POINT_GROUP

log = logging.getLogger(__name__)

DROPIN_PACKAGE = "easel_dropins"
"""Drop-in plugins are imported as ``easel_dropins.<name>``."""

_PROTECTED_MODULES = frozenset({"runner", "plugins", "bot", "db", DROPIN_PACKAGE})


def plugin_site_dirs(prefix: Path) -> list[Path]:
    """The ``site-packages`` folders that ``pip install --prefix PREFIX`` writes to."""
    prefix = Path(prefix)
    try:  # what pip itself uses for --prefix
        scheme = sysconfig.get_preferred_scheme("prefix")
    except AttributeError:  # pragma: no cover - Python < 3.10
        scheme = "posix_prefix" if os.name == "posix" else "nt"
    base = {"base": str(prefix), "platbase": str(prefix)}
    base.update({"installed_base": str(prefix), "installed_platbase": str(prefix)})
    dirs: list[Path] = []
    for key in ("purelib", "platlib"):
        path = Path(sysconfig.get_path(key, scheme, vars=base))
        if path not in dirs:
            dirs.append(path)
    return dirs


def discover_plugins(
    paths: list[str], package_dirs: list[Path], dropin_dir: Path | None
) -> dict[str, PluginSource]:
    """Every plugin on disk by name: distributions on ``paths`` with ``easel`` entry points
    (``managed`` when they lie in one of ``package_dirs``, where the bot's installs go) and
    drop-ins in ``dropin_dir``. The first distribution of a name on ``paths`` wins, as for
    imports; a distribution wins over a drop-in of the same name."""
    importlib.invalidate_caches()
    found: dict[str, PluginSource] = {}
    builtins = set(DEFAULT_PLUGINS)
    site = {p.resolve() for p in package_dirs if p.exists()}
    search = list(dict.fromkeys([*paths, *(str(p) for p in package_dirs)]))
    for dist in importlib.metadata.distributions(path=search):
        try:
            eps = tuple(
                ep
                for ep in dist.entry_points
                if ep.group == ENTRY_POINT_GROUP and ep.module not in builtins
            )
            raw = dist.metadata["Name"]
        except Exception:  # unreadable metadata: not ours to judge
            continue
        if not eps or not raw:
            continue
        name = normalize_name(raw)
        if name in found:
            continue
        location = Path(str(dist.locate_file(""))).resolve()
        found[name] = PluginSource(
            name,
            "distribution",
            location,
            dist.version,
            eps,
            managed=location in site,
            files=tuple(sorted(_top_level_modules(dist, eps))),
        )
    for name, path in dropin_paths(dropin_dir).items():
        if name in found:
            log.warning("drop-in %s is shadowed by the installed distribution %s", path, name)
            continue
        found[name] = PluginSource(name, "dropin", path, None, managed=True)
    return found


def dropin_paths(root: Path | None) -> dict[str, Path]:
    """Drop-in plugins in ``root`` by normalised name: ``name.py`` modules and ``name/``
    packages; names starting with ``.`` or ``_`` and ``*.disabled`` entries are skipped."""
    if root is None or not root.is_dir():
        return {}
    out: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")) or entry.name.endswith(".disabled"):
            continue
        if entry.is_file() and entry.suffix == ".py":
            stem = entry.stem
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            stem = entry.name
        else:
            continue
        if not stem.isidentifier():
            log.warning("drop-in %s skipped: %r is not a Python module name", entry, stem)
            continue
        out[normalize_name(stem)] = entry
    return out


def _top_level_modules(
    dist: importlib.metadata.Distribution, eps: tuple[importlib.metadata.EntryPoint, ...]
) -> set[str]:
    """The top-level modules a distribution installs, from its files and entry points."""
    names = {ep.module.split(".")[0] for ep in eps}
    for file in dist.files or []:
        parts = file.parts
        if (
            not parts
            or parts[0] in ("..", "")
            or parts[0].endswith((".dist-info", ".data", ".egg-info"))
        ):
            continue
        if len(parts) == 1:
            if parts[0].endswith(".py"):
                names.add(parts[0][:-3])
            continue
        if parts[0] != "__pycache__":
            names.add(parts[0])
    return {n for n in names if n.isidentifier() and n not in _PROTECTED_MODULES}


def purge_modules(names: set[str]) -> None:
    """Forget imported modules (and their submodules) so the next import reads the files.
    easel's own packages and the standard library are never purged."""
    targets = tuple(n for n in names if n not in _PROTECTED_MODULES | set(sys.stdlib_module_names))
    if not targets:
        return
    prefixes = tuple(t + "." for t in targets)
    for module_name in list(sys.modules):
        if module_name in targets or module_name.startswith(prefixes):
            sys.modules.pop(module_name, None)


def import_plugin(
    source: PluginSource, record: PluginRecord, dropin_dir: Path | None
) -> list[tuple[str, object]]:
    """Import ``source`` fresh from disk: ``(label, plugin object)`` for each of its entry
    points, or the drop-in's module. Notes the modules in ``record`` (purged on unload)
    and a drop-in's ``__version__``; the plugin's own exception propagates."""
    importlib.invalidate_caches()
    if source.kind == "dropin":
        path = source.location
        stem = path.stem if path.is_file() else path.name
        ensure_dropin_package(dropin_dir)
        module_name = f"{DROPIN_PACKAGE}.{stem}"
        record._modules = {module_name}
        purge_modules({module_name})
        module = importlib.import_module(module_name)
        record.version = getattr(module, "__version__", None)
        return [(record.name, module)]
    record._modules = set(source.files)
    purge_modules(record._modules)
    targets = []
    for ep in source.entry_points:
        label = record.name if len(source.entry_points) == 1 else f"{record.name}:{ep.name}"
        targets.append((label, ep.load()))
    return targets


def ensure_dropin_package(dropin_dir: Path | None) -> None:
    """The ``easel_dropins`` namespace, searching ``dropin_dir`` (nothing when None)."""
    package = sys.modules.get(DROPIN_PACKAGE)
    path = [str(dropin_dir)] if dropin_dir else []
    if package is None:
        package = types.ModuleType(DROPIN_PACKAGE, "Drop-in plugins from easel's plugins folder.")
        package.__spec__ = importlib.machinery.ModuleSpec(DROPIN_PACKAGE, None, is_package=True)
        sys.modules[DROPIN_PACKAGE] = package
    package.__path__ = path  # type: ignore[attr-defined]
    if package.__spec__ is not None:
        package.__spec__.submodule_search_locations = path


def forget_dropin_folder() -> None:
    """Stop importing drop-ins from any folder (when the host closes)."""
    package = sys.modules.get(DROPIN_PACKAGE)
    if package is not None:
        package.__path__ = []  # type: ignore[attr-defined]


__all__ = [
    "DROPIN_PACKAGE",
    "discover_plugins",
    "dropin_paths",
    "ensure_dropin_package",
    "forget_dropin_folder",
    "import_plugin",
    "plugin_site_dirs",
    "purge_modules",
]
