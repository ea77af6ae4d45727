"""The plugin lifecycle at run time: load, validate, guard, disable and unload plugins in a
running process, without a restart.

A :class:`PluginHost` sits beside an :class:`~runner.environment.Environment` and manages
its third-party plugins: distributions that declare ``easel`` entry points (installed in
the bot's own environment or, by the bot, in the plugin packages folder) and drop-in
modules or packages in the plugins folder (``DATA_DIR/plugins``, like ComfyUI's
``custom_nodes``). Built-in plugins stay as :func:`runner.plugin_manager.build_plugin_manager`
registered them.

Isolation. A third-party plugin is never registered as itself: the host registers a
stand-in whose hook implementations call the plugin's through a guard. The guard runs the
call on a helper thread and waits at most ``hook_timeout_s``; a hook that raises, or that
has not returned by then, gets its plugin disabled (unregistered, its node types and
templates gone) with the reason recorded and reported to listeners, and the call counts
as "no answer" (None), so the caller and every other plugin go on. Python cannot stop a
thread: a hung call is abandoned on its daemon thread and its plugin is never called
again. Node functions and template builders are guarded too, without a time limit (a
node may sample for minutes; cancellation is the job's business): an exception that is
not an :class:`~runner.errors.EaselError` (a deliberate, readable failure) or an
out-of-memory error disables the plugin, and the job fails as it would anyway.

Some callers handle a plugin's exception themselves and need to see it (the user-data
deletion must know which plugin failed; moderation fails closed). For the hooks in
:data:`PROPAGATING_HOOKS` the exception reaches the caller wrapped in
:class:`PluginHookError` (naming the plugin) and the plugin stays enabled; a time-out
still disables the plugin and raises :class:`HookTimeout`.

This module is runner-level: it knows nothing of the database or Discord. The bot's
plugin service (``bot.services.plugins``) keeps the state in the database and runs pip.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import logging
import os
import re
import sys
import sysconfig
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from runner.errors import EaselError, JobCancelled, is_out_of_memory
from runner.nodes import NodeType
from runner.plugin_manager import DEFAULT_PLUGINS, ENTRY_POINT_GROUP
from runner.templates import WorkflowTemplate

if TYPE_CHECKING:
    from runner.environment import Environment

log = logging.getLogger(__name__)

DROPIN_PACKAGE = "easel_dropins"
"""Drop-in plugins are imported as ``easel_dropins.<name>``."""

PROPAGATING_HOOKS: frozenset[str] = frozenset(
    {"easel_forget_user", "easel_check_prompt", "easel_check_output"}
)
"""Hooks whose callers handle a plugin's exception themselves: it reaches them as a
:class:`PluginHookError` and the plugin is not disabled for it (moderation fails closed
rather than being switched off; the deletion report names the plugin)."""

_PROTECTED_MODULES = frozenset({"runner", "plugins", "bot", "db", DROPIN_PACKAGE})

ENABLED = "enabled"
DISABLED = "disabled"
FAILED = "failed"
LOADING = "loading"


class PluginHostError(EaselError):
    """Base class of the plugin host's errors."""


class UnknownPlugin(PluginHostError):
    """No plugin of that name is installed or dropped in."""

    def __init__(self, name: str, known: list[str] | None = None):
        self.name = name
        self.known = sorted(known or [])
        hint = f"; known: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"no plugin named {name!r}{hint}")


class BuiltinPlugin(PluginHostError):
    """Built-in plugins are part of easel and cannot be disabled or removed."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"{name!r} is a built-in plugin; it cannot be disabled or removed")


class PluginHookError(PluginHostError):
    """A plugin's hook raised; ``plugin`` and ``hook`` say which, ``__cause__`` is the error."""

    def __init__(self, plugin: str, hook: str, message: str):
        self.plugin = plugin
        self.hook = hook
        self.message = message
        super().__init__(f"plugin {plugin!r} failed in {hook}: {message}")


class HookTimeout(PluginHookError):
    """A plugin's hook did not return within the configured time (it was abandoned)."""

    def __init__(self, plugin: str, hook: str, seconds: float):
        self.seconds = seconds
        super().__init__(plugin, hook, f"did not return within {seconds:g} s")


@dataclass
class PluginRecord:
    """What the host knows of one plugin in this process."""

    name: str
    """The PEP 503 name of the distribution, the drop-in's normalised name, or a built-in's
    module name."""
    kind: str
    """``builtin``, ``distribution`` or ``dropin``."""
    status: str = DISABLED
    """``enabled`` (registered and serving), ``disabled`` (switched off) or ``failed``
    (switched off by the host; ``error`` says why)."""
    version: str | None = None
    location: Path | None = None
    """The folder a distribution is installed in, or the drop-in's file or folder."""
    managed: bool = True
    """False for a distribution installed in the bot's own environment (pip there removes it)."""
    error: str | None = None
    entry_points: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    node_types: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    guarded: bool = True
    _registered: list[object] = field(default_factory=list, repr=False)
    _modules: set[str] = field(default_factory=set, repr=False)

    @property
    def enabled(self) -> bool:
        """Whether the plugin is registered and serving."""
        return self.status == ENABLED


@dataclass(frozen=True)
class PluginEvent:
    """Sent to listeners: ``action`` is ``loaded``, ``failed``, ``disabled`` or ``unloaded``."""

    name: str
    action: str
    reason: str | None = None


@dataclass(frozen=True)
class PluginSource:
    """A plugin found on disk and not loaded yet: a distribution or a drop-in."""

    name: str
    kind: str
    location: Path
    version: str | None = None
    entry_points: tuple[importlib.metadata.EntryPoint, ...] = ()
    managed: bool = True
    files: tuple[str, ...] = ()
    """Top-level module names the distribution installs (purged on unload)."""


def normalize_name(name: str) -> str:
    """The PEP 503 form of a plugin name (``My_Plugin`` -> ``my-plugin``)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip("-")


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


def describe_error(exc: BaseException) -> str:
    """``Type: message (at file.py:12)``: one line for an owner, pointing at the plugin's code."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    frames = [f for f in frames if not f.filename.startswith("<")] or frames
    if frames:
        last = frames[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno})"
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


class _GuardedPlugin:
    """What the host registers in place of a third-party plugin: the same hook
    implementations, each behind the host's guard."""

    def __init__(self, name: str, target: object):
        self._easel_name = name
        self._easel_target = target

    def __repr__(self) -> str:
        target = getattr(self._easel_target, "__name__", type(self._easel_target).__name__)
        return f"<plugin {self._easel_name} ({target})>"


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
        self.hook_timeout_s = (
            float(hook_timeout_s)
            if hook_timeout_s is not None
            else float(getattr(settings, "plugin_hook_timeout_s", 30.0))
        )
        self._records: dict[str, PluginRecord] = {}
        self._lock = threading.RLock()
        self._depth = 0
        self._pending: dict[str, str] = {}
        self._events: list[PluginEvent] = []
        self._listeners: list[Callable[[PluginEvent], None]] = []
        self._added_paths: list[str] = []
        self._loaded_before: set[str] = set()
        self.abandoned_calls = 0
        """How many hung hook calls were left running on their threads."""
        for path in self.package_dirs:
            if str(path) not in sys.path:
                sys.path.append(str(path))
                self._added_paths.append(str(path))
        importlib.invalidate_caches()
        if adopt:
            with self._operation():
                self._adopt_entry_point_plugins()

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

    def _process_pending(self) -> None:
        while self._pending:
            name, reason = next(iter(self._pending.items()))
            record = self._records.get(name)
            if record is not None and record.status in (ENABLED, LOADING):
                self._unregister(record)
                record.status = FAILED
                record.error = reason
                self._events.append(PluginEvent(name, FAILED, reason))
                self._refresh_env()
            self._pending.pop(name, None)

    # -- guards ------------------------------------------------------------------------

    def _call(
        self, record: PluginRecord, hook: str, fn: Callable, args: tuple, kwargs: dict
    ) -> Any:
        timeout = self.hook_timeout_s
        if not timeout or timeout <= 0:
            return fn(*args, **kwargs)
        box: dict[str, Any] = {}
        done = threading.Event()
        context = contextvars.copy_context()

        def target() -> None:
            try:
                box["result"] = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(
            target=target, name=f"easel-hook-{record.name}-{hook}", daemon=True
        )
        thread.start()
        if not done.wait(timeout):
            self.abandoned_calls += 1
            raise HookTimeout(record.name, hook, timeout)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _guard(self, record: PluginRecord, hook: str, fn: Callable) -> Callable:
        host = self

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if record.status not in (ENABLED, LOADING):
                return None
            try:
                result = host._call(record, hook, fn, args, kwargs)
            except HookTimeout as exc:
                host._report(record, f"{hook} {exc.message}")
                if hook in PROPAGATING_HOOKS:
                    raise
                return None
            except Exception as exc:
                message = describe_error(exc)
                if hook in PROPAGATING_HOOKS:
                    raise PluginHookError(record.name, hook, message) from exc
                host._report(record, f"raised in {hook}: {message}")
                return None
            if hook == "easel_node_types":
                return host._adopt_node_types(record, result)
            if hook == "easel_workflow_templates":
                return host._adopt_templates(record, result)
            return result

        return guarded

    def _adopt_node_types(self, record: PluginRecord, result: Any) -> list[NodeType] | None:
        if result is None:
            return None
        items = list(result) if isinstance(result, (list, tuple)) else None
        if items is None or not all(isinstance(i, NodeType) for i in items):
            self._report(
                record, f"easel_node_types returned {type(result).__name__}, not a list of NodeType"
            )
            return None
        return [
            replace(
                i,
                plugin=record.name,
                function=self._guard_callable(record, f"node {i.name}", i.function),
            )
            for i in items
        ]

    def _adopt_templates(self, record: PluginRecord, result: Any) -> list[WorkflowTemplate] | None:
        if result is None:
            return None
        items = list(result) if isinstance(result, (list, tuple)) else None
        if items is None or not all(isinstance(i, WorkflowTemplate) for i in items):
            self._report(
                record,
                f"easel_workflow_templates returned {type(result).__name__}, not a list of WorkflowTemplate",
            )
            return None
        return [
            replace(
                i,
                plugin=record.name,
                build=self._guard_callable(record, f"template {i.name}", i.build),
            )
            for i in items
        ]

    def _guard_callable(self, record: PluginRecord, what: str, fn: Callable) -> Callable:
        """A node function or template builder: no time limit; a bug disables the plugin,
        the exception still fails the job or the request."""
        host = self

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (JobCancelled, EaselError):
                raise
            except Exception as exc:
                if not is_out_of_memory(exc):
                    host._report(record, f"{what} raised {describe_error(exc)}")
                raise

        return guarded

    def _make_stand_in(self, record: PluginRecord, target: object, label: str) -> _GuardedPlugin:
        stand_in = _GuardedPlugin(label, target)
        marker = f"{self.pm.project_name}_impl"
        for attr in dir(target):
            if attr.startswith("__"):
                continue
            try:
                value = getattr(target, attr)
            except Exception:
                continue
            if not inspect.isroutine(value):
                continue
            opts = getattr(value, marker, None)
            if not isinstance(opts, dict):
                continue
            hook = opts.get("specname") or attr
            if opts.get("hookwrapper") or opts.get("wrapper"):
                setattr(stand_in, attr, value)  # wrappers must stay generators; not guarded
            else:
                setattr(stand_in, attr, self._guard(record, hook, value))
            if hook not in record.hooks:
                record.hooks.append(hook)
        return stand_in

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
            stand_in = self._make_stand_in(record, plugin, pm_name)
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
            for name, source in sorted(self.discover().items()):
                record = self._records.get(name)
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
        try:
            targets = self._import(source, record)
        except Exception as exc:
            return self._fail(record, f"could not be imported: {describe_error(exc)}")
        try:
            for label, target in targets:
                stand_in = self._make_stand_in(record, target, label)
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
        self._startup(record)
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

    def _import(self, source: PluginSource, record: PluginRecord) -> list[tuple[str, object]]:
        importlib.invalidate_caches()
        if source.kind == "dropin":
            path = source.location
            stem = path.stem if path.is_file() else path.name
            self._ensure_dropin_package()
            module_name = f"{DROPIN_PACKAGE}.{stem}"
            record._modules = {module_name}
            _purge_modules({module_name})
            module = importlib.import_module(module_name)
            record.version = getattr(module, "__version__", None)
            return [(record.name, module)]
        record._modules = set(source.files)
        _purge_modules(record._modules)
        targets = []
        for ep in source.entry_points:
            label = record.name if len(source.entry_points) == 1 else f"{record.name}:{ep.name}"
            targets.append((label, ep.load()))
        return targets

    def _ensure_dropin_package(self) -> None:
        package = sys.modules.get(DROPIN_PACKAGE)
        path = [str(self.dropin_dir)] if self.dropin_dir else []
        if package is None:
            package = types.ModuleType(
                DROPIN_PACKAGE, "Drop-in plugins from easel's plugins folder."
            )
            package.__spec__ = importlib.machinery.ModuleSpec(DROPIN_PACKAGE, None, is_package=True)
            sys.modules[DROPIN_PACKAGE] = package
        package.__path__ = path  # type: ignore[attr-defined]
        if package.__spec__ is not None:
            package.__spec__.submodule_search_locations = path

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

    def _startup(self, record: PluginRecord) -> None:
        for stand_in in record._registered:
            fn = getattr(stand_in, "easel_startup", None)
            if fn is not None:
                fn(env=self.env)

    def _fail(self, record: PluginRecord, reason: str) -> PluginRecord:
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
        _purge_modules(record._modules)
        importlib.invalidate_caches()

    def _unload(self, record: PluginRecord, *, call_shutdown: bool) -> None:
        if call_shutdown and record.status == ENABLED:
            for stand_in in list(record._registered):
                fn = getattr(stand_in, "easel_shutdown", None)
                if fn is not None:
                    fn(env=self.env)
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
        package = sys.modules.get(DROPIN_PACKAGE)
        if package is not None:
            package.__path__ = []  # type: ignore[attr-defined]

    # -- state -------------------------------------------------------------------------

    def _refresh_env(self) -> None:
        try:
            self.env.refresh()
        except Exception:  # only unguarded (built-in) plugins can get here
            log.exception("refreshing the node types and templates failed")

    def _collect_names(self) -> None:
        for record in self._records.values():
            record.node_types = sorted(
                n for n, t in self.env.node_types.items() if t.plugin == record.name
            )
            record.templates = sorted(
                n for n, t in self.env.templates.items() if t.plugin == record.name
            )

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
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None or id(plugin) in ours:
                continue
            record = PluginRecord(name, "builtin", status=ENABLED, managed=False, guarded=False)
            record.hooks = sorted(
                h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name.startswith("easel_")
            )
            record.node_types = sorted(
                n for n, t in self.env.node_types.items() if t.plugin == name
            )
            record.templates = sorted(n for n, t in self.env.templates.items() if t.plugin == name)
            out.append(record)
        return out


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


def _purge_modules(names: set[str]) -> None:
    """Forget imported modules (and their submodules) so the next import reads the files.
    easel's own packages and the standard library are never purged."""
    targets = tuple(n for n in names if n not in _PROTECTED_MODULES | set(sys.stdlib_module_names))
    if not targets:
        return
    prefixes = tuple(t + "." for t in targets)
    for module_name in list(sys.modules):
        if module_name in targets or module_name.startswith(prefixes):
            sys.modules.pop(module_name, None)


__all__ = [
    "BuiltinPlugin",
    "HookTimeout",
    "PROPAGATING_HOOKS",
    "PluginEvent",
    "PluginHookError",
    "PluginHost",
    "PluginHostError",
    "PluginRecord",
    "PluginSource",
    "UnknownPlugin",
    "describe_error",
    "discover_plugins",
    "dropin_paths",
    "normalize_name",
    "plugin_site_dirs",
]
