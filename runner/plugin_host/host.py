"""The plugin lifecycle at run time: :class:`PluginHost` loads, guards, disables and
unloads the third-party plugins of a running process, without a restart.

Its helpers live beside it: :mod:`~runner.plugin_host.discovery` finds and imports
plugins, :mod:`~runner.plugin_host.guard` isolates them, :mod:`~runner.plugin_host.records`
holds what is known of each. This module is the lifecycle: the host's lock, loading (with
validation and clash checks), disabling, unloading, reloading and the failures the guard
reports. It is longer than most modules because the lifecycle is one state machine under
one lock (:meth:`PluginHost._operation`): loading, failing and unloading change the same
records and the plugin manager together, and each relies on the others' invariants.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from runner.files import write_atomic
from runner.plugin_host.breadcrumbs import FOLDER as CRUMB_FOLDER
from runner.plugin_host.breadcrumbs import Breadcrumbs
from runner.plugin_host.breadcrumbs import forget as forget_crumb
from runner.plugin_host.discovery import (
    discover_plugins,
    forget_dropin_folder,
    import_plugin,
    plugin_site_dirs,
    purge_modules,
)
from runner.plugin_host.errors import BuiltinPlugin, UnknownPlugin, describe_error
from runner.plugin_host.guard import Guard
from runner.plugin_host.records import (
    DISABLED,
    ENABLED,
    FAILED,
    LOADING,
    RAISED,
    PluginEvent,
    PluginRecord,
    PluginSource,
    builtin_records,
    normalize_name,
    provided_names,
)

if TYPE_CHECKING:
    from runner.environment import Environment

log = logging.getLogger(__name__)

PROVIDED_FILE = "plugin-node-types.json"
"""In the data folder: the node types each plugin provided when it was last enabled."""


class PluginHost:
    """Loads, guards, disables and unloads the third-party plugins of one environment.

    ``package_dirs``: folders besides ``sys.path`` holding plugin distributions (default:
    the site folders of ``settings.plugin_packages_root``; appended to ``sys.path``).
    ``dropin_dir``: the drop-in folder (default ``settings.plugins_root``).
    ``hook_timeout_s``: the longest a guarded hook may run (default
    ``settings.plugin_hook_timeout_s``; 0 = no limit). Plugins that the environment's plugin
    manager loaded from entry points before the host existed are adopted: put behind
    guards, without being imported again.

    Every public method is safe to call from any thread; listeners are called after the
    host's lock is released.
    """

    def __init__(
        self,
        env: Environment,
        *,
        package_dirs: list[Path] | None = None,
        dropin_dir: Path | None = None,
        hook_timeout_s: float | None = None,
        adopt: bool = True,
    ):
        self.env = env
        self.pm: pluggy.PluginManager = env.pm
        settings = env.settings
        if package_dirs is None:
            root = getattr(settings, "plugin_packages_root", None)
            package_dirs = plugin_site_dirs(root) if root is not None else []
        self.package_dirs = [Path(p) for p in package_dirs]
        self.dropin_dir = (
            Path(dropin_dir) if dropin_dir else getattr(settings, "plugins_root", None)
        )
        timeout = (
            float(hook_timeout_s)
            if hook_timeout_s is not None
            else float(getattr(settings, "plugin_hook_timeout_s", 30.0))
        )
        data_dir = getattr(settings, "data_dir", None)
        self.crumbs = Breadcrumbs(Path(data_dir) / CRUMB_FOLDER) if data_dir else None
        """Breadcrumbs in the data folder around imports and hook calls (None without one)."""
        self.guard = Guard(
            self._report,
            timeout,
            f"{self.pm.project_name}_impl",
            notice=self._notice,
            crumbs=self.crumbs,
        )
        self._records: dict[str, PluginRecord] = {}
        self._lock = threading.RLock()
        self._depth = 0
        self._pending: dict[str, str] = {}
        self._events: list[PluginEvent] = []
        self._listeners: list[Callable[[PluginEvent], None]] = []
        self._added_paths: list[str] = []
        self._loaded_before: set[str] = set()
        self._provided_file = Path(data_dir) / PROVIDED_FILE if data_dir else None
        self._provided_by: dict[str, set[str]] = self._read_provided()
        """The node types each plugin provided when it was last enabled (kept in the data
        folder, so that after a restart a disabled plugin's nodes still name it)."""
        for path in self.package_dirs:
            if str(path) not in sys.path:
                sys.path.append(str(path))
                self._added_paths.append(str(path))
        importlib.invalidate_caches()
        if adopt:
            with self._operation():
                self._adopt_entry_point_plugins()

    @property
    def hook_timeout_s(self) -> float:
        """The longest a guarded hook may run (0 = no limit)."""
        return self.guard.timeout_s

    @hook_timeout_s.setter
    def hook_timeout_s(self, seconds: float) -> None:
        self.guard.timeout_s = float(seconds)

    @property
    def abandoned_calls(self) -> int:
        """How many hung hook calls were left running on their threads."""
        return self.guard.abandoned_calls

    # -- listeners and reports ---------------------------------------------------------

    def add_listener(self, listener: Callable[[PluginEvent], None]) -> None:
        """Call ``listener(event)`` whenever a plugin is loaded, fails, is disabled or
        unloaded (from whichever thread noticed it)."""
        self._listeners.append(listener)

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """The host's lock, with failures noticed meanwhile handled once the outermost
        operation ends and events sent after the lock is released."""
        outermost = False
        try:
            with self._lock:
                self._depth += 1
                try:
                    yield
                finally:
                    try:
                        if self._depth == 1:  # failures noticed while handling these queue up
                            self._process_pending()
                    finally:
                        self._depth -= 1
                        outermost = self._depth == 0
        finally:
            if outermost:
                self._dispatch()

    def _dispatch(self) -> None:
        with self._lock:
            events, self._events = self._events, []
        for event in events:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # a listener must not break the host
                    log.exception("plugin event listener failed on %s", event)

    def _report(self, record: PluginRecord, reason: str) -> None:
        """A guard noticed a failure: disable the plugin now, or when the current
        operation ends."""
        with self._operation():
            if record.status not in (ENABLED, LOADING) or record.name in self._pending:
                return
            log.warning("plugin %s failed: %s", record.name, reason)
            self._pending[record.name] = reason

    def _notice(self, record: PluginRecord, details: str) -> None:
        """A propagating hook raised (its caller handles it; the plugin stays on): tell the
        listeners (``raised``) so that owners learn the details users are not shown."""
        with self._operation():
            self._events.append(PluginEvent(record.name, RAISED, details))

    def _process_pending(self) -> None:
        while self._pending:
            name, reason = next(iter(self._pending.items()))
            record = self._records.get(name)
            self._pending.pop(name, None)
            if record is not None and record.status in (ENABLED, LOADING):
                self._fail(record, reason)

    # -- discovery ---------------------------------------------------------------------

    def discover(self) -> dict[str, PluginSource]:
        """Every plugin on disk by name; see :func:`discover_plugins`."""
        return discover_plugins(sys.path, self.package_dirs, self.dropin_dir)

    def _adopt_entry_point_plugins(self) -> None:
        """Put plugins that the plugin manager loaded from entry points behind guards."""
        for plugin, dist in list(self.pm.list_plugin_distinfo()):
            name = normalize_name(dist.project_name)
            pm_name = self.pm.get_name(plugin) or name
            record = self._records.get(name) or PluginRecord(
                name, "distribution", version=dist.version, managed=False
            )
            self._records[name] = record
            record.status = LOADING
            record.entry_points.append(pm_name)
            self.pm.unregister(plugin)
            stand_in = self.guard.stand_in(record, plugin, pm_name)
            record._registered.append(stand_in)
            self.pm.register(stand_in, name=f"{name}:{pm_name}")
            record.status = ENABLED
            try:
                found = importlib.metadata.distribution(dist.project_name)
                location = Path(str(found.locate_file(""))).resolve()
            except Exception:  # metadata gone since it was loaded: keep what we know
                continue
            record.location = location
            record.managed = location in {p.resolve() for p in self.package_dirs if p.exists()}
        if self._records:
            self._refresh_env()
            self._collect_names()

    # -- loading -----------------------------------------------------------------------

    def _source(self, name: str) -> PluginSource:
        key = normalize_name(name)
        sources = self.discover()
        if key not in sources:
            raise UnknownPlugin(name, list(sources) + list(self._records))
        return sources[key]

    def load(self, name: str) -> PluginRecord:
        """Load (or load again, with fresh code) the plugin called ``name`` and enable it.

        Returns its record: ``enabled``, or ``failed`` with ``error`` saying why (it could
        not be imported, failed validation, clashed with another plugin's node type or
        template, or raised or hung in a hook). Raises :class:`UnknownPlugin` when nothing
        of that name is on disk."""
        with self._operation():
            source = self._source(name)
            record = self._records.get(source.name)
            if record is not None and record.kind == "builtin":
                raise BuiltinPlugin(name)
            if record is not None and record.status == ENABLED:
                self._unload(record, call_shutdown=True)
            record = self._load(source, record)
        return record

    def load_all(self, disabled: Mapping[str, str | None] | None = None) -> list[PluginRecord]:
        """Load every plugin on disk that is not loaded yet, except those named in
        ``disabled`` (name -> reason), which are recorded as disabled. Returns the records."""
        disabled = {normalize_name(k): v for k, v in (disabled or {}).items()}
        with self._operation():
            crashed = self._crashed()
            for name, source in sorted(self.discover().items()):
                record = self._records.get(name)
                if name in crashed and name not in disabled and record is None:
                    # It ended a previous process: not imported again until an owner says so.
                    record = self._record_for(source, record)
                    record.status = FAILED
                    record.error = crashed[name]
                    self._events.append(PluginEvent(name, FAILED, crashed[name]))
                    log.error("plugin %s disabled: %s", name, crashed[name])
                    continue
                if name in disabled:
                    if record is not None and record.status == ENABLED:
                        self._unload(record, call_shutdown=True)
                        self._events.append(PluginEvent(name, DISABLED, disabled[name]))
                    record = self._record_for(source, record)
                    # A reason means the host switched it off (it failed), not an owner.
                    record.status = FAILED if disabled[name] else DISABLED
                    record.error = disabled[name]
                    continue
                if record is not None and record.status in (ENABLED, FAILED):
                    continue
                self._load(source, record)
        return self.records(builtins=False)

    def _record_for(self, source: PluginSource, record: PluginRecord | None) -> PluginRecord:
        if record is None:
            record = PluginRecord(source.name, source.kind)
            self._records[source.name] = record
        record.kind = source.kind
        record.version = source.version
        record.location = source.location
        record.managed = source.managed
        record.entry_points = [f"{ep.name} = {ep.value}" for ep in source.entry_points]
        return record

    def _load(self, source: PluginSource, record: PluginRecord | None) -> PluginRecord:
        record = self._record_for(source, record)
        self._pending.pop(record.name, None)  # about the code being replaced
        record.status = LOADING
        record.error = None
        record.hooks = []
        record.node_types, record.templates = [], []
        log.info("importing plugin %s from %s", record.name, source.location)
        try:
            if self.crumbs is None:
                targets = import_plugin(source, record, self.dropin_dir)
            else:
                with self.crumbs.leave(record.name, "import"):
                    targets = import_plugin(source, record, self.dropin_dir)
        except Exception as exc:
            return self._fail(record, f"could not be imported: {describe_error(exc)}")
        try:
            for label, target in targets:
                stand_in = self.guard.stand_in(record, target, label)
                record._registered.append(stand_in)  # before: a failed register leaves traces
                self.pm.register(stand_in, name=label)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            return self._fail(record, f"failed validation: {message}")
        except Exception as exc:
            return self._fail(record, f"could not be registered: {describe_error(exc)}")
        clash = self._clashes(record)
        if record.name in self._pending:
            return self._fail(record, self._pending.pop(record.name))
        if clash:
            return self._fail(record, clash)
        self._refresh_env()
        self._call_each(record, "easel_startup")
        if record.name in self._pending:
            return self._fail(record, self._pending.pop(record.name))
        record.status = ENABLED
        self._collect_names()
        if record.name in self._loaded_before and record.node_types:
            # Fresh code under the same node names: cached outputs of the old code must go.
            self.env.node_cache.clear()
        self._loaded_before.add(record.name)
        self._events.append(PluginEvent(record.name, "loaded"))
        log.info("plugin %s %s loaded", record.name, record.version or "")
        return record

    def _crashed(self) -> dict[str, str]:
        """Plugins that a previous process never came back from (their breadcrumbs are
        stale), with the reason; the breadcrumbs are removed."""
        if self.crumbs is None:
            return {}
        out: dict[str, str] = {}
        for crumb in self.crumbs.stale():
            out.setdefault(normalize_name(crumb.plugin), crumb.reason())
            forget_crumb(crumb)
        return out

    def _clashes(self, record: PluginRecord) -> str | None:
        """A node type or template name that another plugin already provides."""
        for stand_in in record._registered:
            for hook, existing, kind in (
                ("easel_node_types", self.env.node_types, "node type"),
                ("easel_workflow_templates", self.env.templates, "template"),
            ):
                fn = getattr(stand_in, hook, None)
                if fn is None:
                    continue
                for item in fn() or []:
                    if item.name in existing and existing[item.name].plugin != record.name:
                        return f"its {kind} {item.name!r} is already provided by {existing[item.name].plugin}"
        return None

    def _call_each(self, record: PluginRecord, hook: str) -> None:
        """``easel_startup`` or ``easel_shutdown`` of each of the plugin's stand-ins."""
        for stand_in in list(record._registered):
            fn = getattr(stand_in, hook, None)
            if fn is not None:
                fn(env=self.env)

    def _fail(self, record: PluginRecord, reason: str) -> PluginRecord:
        """Switch ``record`` off as failed, for ``reason``."""
        self._pending.pop(record.name, None)
        self._unregister(record)
        record.status = FAILED
        record.error = reason
        self._refresh_env()
        self._events.append(PluginEvent(record.name, FAILED, reason))
        log.warning("plugin %s disabled: %s", record.name, reason)
        return record

    # -- unloading ---------------------------------------------------------------------

    def _unregister(self, record: PluginRecord) -> None:
        for plugin in record._registered:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
        record._registered = []
        purge_modules(record._modules)
        importlib.invalidate_caches()

    def _unload(self, record: PluginRecord, *, call_shutdown: bool) -> None:
        if call_shutdown and record.status == ENABLED:
            self._call_each(record, "easel_shutdown")
        self._unregister(record)
        self._refresh_env()

    def disable(self, name: str, reason: str | None = None) -> PluginRecord:
        """Switch a plugin off: its ``easel_shutdown`` runs, it is unregistered and its node
        types and templates disappear. A no-op for a plugin already off."""
        with self._operation():
            record = self.get(name)
            if record.kind == "builtin":
                raise BuiltinPlugin(record.name)
            if record.status == ENABLED:
                self._unload(record, call_shutdown=True)
                self._events.append(PluginEvent(record.name, DISABLED, reason))
            record.status = DISABLED
            record.error = reason
            self._collect_names()
        return record

    def enable(self, name: str) -> PluginRecord:
        """Load a disabled or failed plugin again (fresh from disk); see :meth:`load`."""
        record = self._records.get(normalize_name(name))
        if record is not None and record.status == ENABLED:
            return record
        return self.load(name)

    def unload(self, name: str) -> PluginRecord:
        """Disable a plugin and forget it (before its files are removed)."""
        with self._operation():
            record = self.get(name)
            if record.kind == "builtin":
                raise BuiltinPlugin(record.name)
            if record.status == ENABLED:
                self._unload(record, call_shutdown=True)
            self._unregister(record)
            record.status = DISABLED
            self._records.pop(record.name, None)
            self._provided_by.pop(record.name, None)  # its files go: nothing to enable
            self._save_provided()
            self._note_switched_off_nodes()
            self._events.append(PluginEvent(record.name, "unloaded"))
        return record

    def reload(self, disabled: Mapping[str, str | None] | None = None) -> list[PluginRecord]:
        """Unload every third-party plugin and load what is on disk now, fresh (new drop-ins,
        edited files, upgraded distributions); ``disabled`` as for :meth:`load_all`."""
        with self._operation():
            for record in list(self._records.values()):
                self._unload(record, call_shutdown=True)
                self._records.pop(record.name, None)
            return self.load_all(disabled)

    def close(self) -> None:
        """Unload every third-party plugin (their ``easel_shutdown`` runs) and take the
        plugin packages folders off ``sys.path``."""
        with self._operation():
            for record in list(self._records.values()):
                if record.status == ENABLED:
                    self._unload(record, call_shutdown=True)
                else:
                    self._unregister(record)
            self._records.clear()
        for path in self._added_paths:
            if path in sys.path:
                sys.path.remove(path)
        self._added_paths = []
        forget_dropin_folder()

    # -- state -------------------------------------------------------------------------

    def _refresh_env(self) -> None:
        try:
            self.env.refresh()
        except Exception:  # only unguarded (built-in) plugins can get here
            log.exception("refreshing the node types and templates failed")
        self._note_switched_off_nodes()

    def _note_switched_off_nodes(self) -> None:
        """``env.disabled_node_types``: node type -> the plugin that provided it and is off
        now (disabled or failed), so that a workflow using it says which plugin to enable.
        A plain dict: validation reads it without calling any plugin."""
        gone = {}
        for name, node_types in self._provided_by.items():
            record = self._records.get(name)
            if record is None or record.status == ENABLED:  # not on disk, or on: no hint
                continue
            for node_type in node_types:
                if node_type not in self.env.node_types:
                    gone[node_type] = name
        self.env.disabled_node_types = gone

    def _collect_names(self) -> None:
        for record in self._records.values():
            record.node_types, record.templates = provided_names(self.env, record.name)
            if record.status == ENABLED and record.node_types:
                self._provided_by[record.name] = set(record.node_types)
        self._save_provided()
        self._note_switched_off_nodes()

    def _read_provided(self) -> dict[str, set[str]]:
        """What :meth:`_save_provided` wrote; an unreadable file is ignored (it is a hint)."""
        if self._provided_file is None or not self._provided_file.is_file():
            return {}
        try:
            data = json.loads(self._provided_file.read_text(encoding="utf-8"))
            return {str(k): {str(t) for t in v} for k, v in dict(data).items()}
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", self._provided_file, exc)
            return {}

    def _save_provided(self) -> None:
        if self._provided_file is None:
            return
        data = {k: sorted(v) for k, v in sorted(self._provided_by.items())}
        try:
            write_atomic(self._provided_file, json.dumps(data, indent=1).encode("utf-8"))
        except OSError as exc:  # a read-only data folder must not stop plugins loading
            log.warning("could not write %s: %s", self._provided_file, exc)

    def refresh(self) -> None:
        """Collect node types and templates again from every registered plugin."""
        with self._operation():
            self._refresh_env()
            self._collect_names()

    def get(self, name: str) -> PluginRecord:
        """The record of a third-party or built-in plugin; :class:`UnknownPlugin` if none."""
        key = normalize_name(name)
        with self._lock:
            if key in self._records:
                return self._records[key]
            for record in self._builtin_records():
                if name in (record.name, record.name.rsplit(".", 1)[-1]):
                    return record
            raise UnknownPlugin(name, list(self._records))

    def records(self, *, builtins: bool = True) -> list[PluginRecord]:
        """Every plugin this host knows: built-ins first, then third-party ones by name."""
        with self._lock:
            self._collect_names()
            third = [self._records[k] for k in sorted(self._records)]
            return (self._builtin_records() if builtins else []) + third

    def _builtin_records(self) -> list[PluginRecord]:
        ours = {id(p) for r in self._records.values() for p in r._registered}
        return builtin_records(self.pm, self.env, ours)


__all__ = ["PluginHost"]
