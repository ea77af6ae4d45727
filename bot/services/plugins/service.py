"""The plugin service: owners install, list, enable, disable, remove and reload plugins in
a running bot, without a restart.

Before an install, :meth:`PluginService.plan_install` shows what pip would install for the
owner to confirm; pip itself is :class:`~bot.services.plugins.installer.PipInstaller`'s.
The installed version and the wheel's sha256 are recorded in the database, with the
enabled/disabled state and the reason a plugin was switched off;
:meth:`PluginService.start` restores that state.

The runner's :class:`~runner.plugin_host.PluginHost` loads, guards and unloads the plugins;
a plugin that it switches off (it failed to import, failed validation, raised or hung in a
hook) is recorded here and reported to this service's listeners (the bot tells the owners).

Only owners (``owner_ids``) may act; the command line acts as :data:`LOCAL_OPERATOR`, who
has the machine's shell anyway. Every action, refusals included, is written to the audit
log. Every method blocks (pip, imports): the bot calls them with ``asyncio.to_thread``.

(Longer than most modules on purpose: it is the one place where an owner's action, its
audit entry, the database row and the host's state change together; pip, RECORD removal,
errors and result types already live in sibling modules.)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.services.plugins.errors import (
    CannotChange,
    InstallBusy,
    InstallsDisabled,
    NotAPlugin,
    NotOwner,
    PipFailed,
    PipTimedOut,
    PluginNotFound,
    ShadowsEasel,
    SpecRefused,
)
from bot.services.plugins.installer import PipInstaller
from bot.services.plugins.removal import remove_distribution, remove_dropin
from bot.services.plugins.results import InstallPlan, InstallResult, PluginStatus
from db import audit as db_audit
from db import plugins as db_plugins
from runner.plugin_host import (
    FAILED,
    RAISED,
    PluginEvent,
    PluginHost,
    PluginHostError,
    PluginRecord,
    PluginSource,
    discover_plugins,
    normalize_name,
)

if TYPE_CHECKING:
    from db.engine import Database
    from db.models import AuditEntry, InstalledPlugin

log = logging.getLogger(__name__)

LOCAL_OPERATOR = 0
"""The actor id of the command line's operator (Discord ids are never 0)."""

AUDIT_PREFIX = "plugin."

RAISED_QUIET_S = 600.0
"""After telling the owners that a plugin's hook raised, the same plugin and hook raising
again is not told again for this long (it is logged every time)."""


class PluginService:
    """Plugin management for one process: the bot (with a :class:`PluginHost`, so changes
    apply at once) or the command line (``host=None``: changes go to disk and the database,
    and the running bot applies them at ``/plugin reload`` or its next start)."""

    def __init__(self, settings: Any, db: Database, host: PluginHost | None = None):
        self.settings = settings
        self.db = db
        self.host = host
        self.installer = PipInstaller(settings)
        self.prefix: Path = self.installer.prefix
        self.site_dirs = self.installer.site_dirs
        self.dropin_dir: Path = Path(settings.plugins_root)
        self._listeners: list[Callable[[PluginEvent], None]] = []
        self._undelivered: list[PluginEvent] = []
        """Events noticed before anyone listened (at start, before the bot's cogs exist)."""
        self._last_raised: dict[str, float] = {}
        if host is not None:
            host.add_listener(self._on_host_event)

    # -- permissions and the audit log ------------------------------------------------

    def is_owner(self, actor_id: int) -> bool:
        """Whether ``actor_id`` may manage plugins (an owner, or the local operator)."""
        return actor_id == LOCAL_OPERATOR or actor_id in set(self.settings.owner_ids or [])

    def _require_owner(self, actor_id: int, action: str, target: str | None) -> None:
        if self.is_owner(actor_id):
            return
        self._audit(actor_id, "denied", target, {"action": action})
        raise NotOwner(actor_id, action)

    def _audit(
        self, actor_id: int, action: str, target: str | None, details: dict[str, Any] | None = None
    ) -> None:
        try:
            self.db.run_sync(
                db_audit.log_action,
                actor_id,
                AUDIT_PREFIX + action,
                target=target[:255] if target else None,
                details=details or {},
            )
        except Exception:  # the action happened; a failed audit write must be loud, not fatal
            log.exception("could not write the audit entry %s %s", action, target)

    def audit(self, actor_id: int, *, limit: int = 20) -> list[AuditEntry]:
        """The newest plugin entries of the audit log (owners only)."""
        self._require_owner(actor_id, "read the audit log of", None)
        entries = self.db.read_sync(db_audit.list_audit, limit=max(limit * 4, 50))
        return [e for e in entries if e.action.startswith(AUDIT_PREFIX)][:limit]

    # -- listeners ----------------------------------------------------------------------

    def add_listener(self, listener: Callable[[PluginEvent], None]) -> None:
        """Call ``listener(event)`` when the host switches a plugin off by itself
        (``event.action == "failed"``) or a moderation or deletion hook raises
        (``"raised"``, at most once per plugin and hook in :data:`RAISED_QUIET_S`), e.g. to
        tell the owners. Events noticed before the first listener (at start) go to it."""
        self._listeners.append(listener)
        pending, self._undelivered = self._undelivered, []
        for event in pending:
            self._deliver(event)

    def _deliver(self, event: PluginEvent) -> None:
        if not self._listeners:
            self._undelivered.append(event)
            return
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("plugin listener failed on %s", event)

    def _on_raised(self, event: PluginEvent) -> None:
        """A propagating hook raised: the caller refused or withheld; owners get the details,
        once per plugin and hook in a while (a broken checker raises on every request)."""
        key = f"{event.name} {(event.reason or '').split(':', 1)[0]}"
        now = time.monotonic()
        last = self._last_raised.get(key)
        if last is not None and now - last < RAISED_QUIET_S:
            return
        self._last_raised[key] = now
        self._audit(LOCAL_OPERATOR, "raised", event.name, {"reason": event.reason, "by": "easel"})
        self._deliver(event)

    def _on_host_event(self, event: PluginEvent) -> None:
        if event.action == RAISED:
            self._on_raised(event)
            return
        if event.action != FAILED:
            return
        try:
            self._ensure_row(event.name, self._source_or_record(event.name))
            self.db.run_sync(db_plugins.set_plugin_enabled, event.name, False, error=event.reason)
        except Exception:
            log.exception("could not record that plugin %s failed", event.name)
        self._audit(LOCAL_OPERATOR, "failed", event.name, {"reason": event.reason, "by": "easel"})
        self._deliver(event)

    def _ensure_row(self, name: str, record: PluginRecord | PluginSource | None) -> None:
        if self.db.read_sync(db_plugins.get_plugin, name) is not None:
            return
        kind = getattr(record, "kind", "distribution")
        location = getattr(record, "location", None)
        if kind == "dropin" and location:
            source = f"dropin:{location.name}"
        else:  # put there by hand: with pip into the plugin packages folder, or the bot's own
            source = "plugin-packages" if getattr(record, "managed", False) else "environment"
        self.db.run_sync(
            db_plugins.record_plugin_install,
            name,
            source=source,
            version=getattr(record, "version", None),
        )

    # -- state --------------------------------------------------------------------------

    def _rows(self) -> dict[str, InstalledPlugin]:
        return {row.distribution: row for row in self.db.read_sync(db_plugins.list_plugins)}

    def _disabled(self) -> dict[str, str | None]:
        return {name: row.error for name, row in self._rows().items() if not row.enabled}

    def _discover(self) -> dict[str, PluginSource]:
        if self.host is not None:
            return self.host.discover()
        return discover_plugins(sys.path, self.site_dirs, self.dropin_dir)

    def start(self) -> list[PluginStatus]:
        """Restore the recorded state: install drop-ins' requirements when allowed, load
        every plugin on disk except those recorded as disabled. Needs a host."""
        if self.host is None:
            raise CannotChange("*", "starting plugins needs a running environment")
        self._dropin_requirements()
        self.host.load_all(self._disabled())
        return self.list_plugins(LOCAL_OPERATOR)

    def list_plugins(self, actor_id: int) -> list[PluginStatus]:
        """Every plugin: built-ins, installed distributions, drop-ins, and recorded ones
        whose files are gone (owners only)."""
        self._require_owner(actor_id, "list", None)
        rows = self._rows()
        out: list[PluginStatus] = []
        seen: set[str] = set()
        if self.host is not None:
            for record in self.host.records():
                out.append(PluginStatus.of(record, rows.get(record.name)))
                seen.add(record.name)
        else:  # without an environment the built-ins are not imported: names only
            from runner.plugin_manager import DEFAULT_PLUGINS

            out += [PluginStatus(n, "builtin", "enabled", managed=False) for n in DEFAULT_PLUGINS]
        for name, source in sorted(self._discover().items()):
            if name not in seen:
                out.append(PluginStatus.of(source, rows.get(name)))
                seen.add(name)
        for name, row in sorted(rows.items()):
            if name not in seen:
                out.append(PluginStatus.of(None, row))
        return out

    def info(self, actor_id: int, name: str) -> PluginStatus:
        """One plugin's state (owners only); :class:`PluginNotFound` if unknown."""
        self._require_owner(actor_id, "inspect", name)
        return self._find(name)

    def _find(self, name: str) -> PluginStatus:
        key = normalize_name(name)
        for status in self.list_plugins(LOCAL_OPERATOR):
            if status.name in (key, name) or (
                status.kind == "builtin" and status.name.rsplit(".", 1)[-1] == name
            ):
                return status
        raise PluginNotFound(name)

    # -- install --------------------------------------------------------------------------

    def _prepare(self, actor_id: int, spec: str) -> str:
        self._require_owner(actor_id, "install", spec)
        if not self.settings.plugin_installs_enabled:
            self._audit(
                actor_id, "install", spec, {"ok": False, "error": "installs are switched off"}
            )
            raise InstallsDisabled()
        try:
            return self.installer.check_spec(spec)
        except SpecRefused as exc:
            self._audit(actor_id, "install", spec, {"ok": False, "error": exc.reason})
            raise

    def plan_install(self, actor_id: int, spec: str) -> InstallPlan:
        """What pip would install for ``spec`` (``pip install --dry-run --report -``), for
        the confirmation step. Owners only; raises like :meth:`install`."""
        target = self._prepare(actor_id, spec)
        try:
            return self.installer.plan(spec, target)
        except PipTimedOut as exc:
            self._audit(
                actor_id, "install", spec, {"ok": False, "stage": "plan", "error": str(exc)}
            )
            raise
        except PipFailed as exc:
            self._audit(
                actor_id, "install", spec, {"ok": False, "stage": "plan", "pip": exc.summary}
            )
            raise

    def decline_install(self, actor_id: int, spec: str) -> None:
        """The owner answered "no" (or nothing) to the plan: nothing is installed; audited."""
        self._require_owner(actor_id, "install", spec)
        self._audit(
            actor_id, "declined", spec, {"ok": False, "error": "declined at the confirmation"}
        )

    def install(self, actor_id: int, spec: str) -> InstallResult:
        """Install ``spec`` with pip into the plugin packages folder, record it, and load it
        at once (with a host). A plugin that installs but fails to load is recorded as
        failed with the reason; pip failures raise :class:`PipFailed` or
        :class:`PipTimedOut`; ``spec`` must be a requirement, or a URL or path when
        ``plugin_allow_urls`` is on. Owners only; audited."""
        target = self._prepare(actor_id, spec)
        if not self.installer.lock.acquire(blocking=False):
            raise InstallBusy(spec)
        try:
            return self._install(actor_id, spec, target)
        finally:
            self.installer.lock.release()

    def _install(self, actor_id: int, spec: str, target: str) -> InstallResult:
        started = time.perf_counter()
        try:
            packages, summary = self.installer.install(spec, target)
        except PipTimedOut as exc:
            self._audit(actor_id, "install", spec, {"ok": False, "error": str(exc)})
            raise
        except PipFailed as exc:
            self._audit(actor_id, "install", spec, {"ok": False, "pip": exc.summary})
            raise
        requested = next((p for p in packages if p.requested), None)
        if requested is None:
            self._audit(actor_id, "install", spec, {"ok": False, "pip": summary})
            raise PipFailed(spec, 0, f"pip installed nothing new for {spec!r}\n{summary}")
        name = requested.name
        shadowing = self.installer.shadowing(packages)
        if shadowing:
            for package in sorted({name, *shadowing}):
                remove_distribution(self.prefix, package)
            names = sorted({n for clash in shadowing.values() for n in clash})
            self._audit(
                actor_id,
                "install",
                spec,
                {"ok": False, "error": "ships easel's package names", "packages": shadowing},
            )
            raise ShadowsEasel(name if name in shadowing else ", ".join(sorted(shadowing)), names)
        source = self._discover().get(name)
        if source is None or source.kind != "distribution" or not source.entry_points:
            remove_distribution(self.prefix, name)
            self._audit(actor_id, "install", spec, {"ok": False, "error": "not an easel plugin"})
            raise NotAPlugin(name)
        self.db.run_sync(
            db_plugins.record_plugin_install,
            name,
            source=target,
            version=requested.version,
            wheel_sha256=requested.sha256,
        )
        if self.host is not None:
            self.host.load(name)  # a failure is recorded by _on_host_event
        status = self._find(name)
        self._audit(
            actor_id,
            "install",
            name,
            {
                "ok": True,
                "spec": spec,
                "version": requested.version,
                "wheel_sha256": requested.sha256,
                "packages": [p.describe() for p in packages],
                "status": status.status,
                "error": status.error,
                "pip": summary,
            },
        )
        return InstallResult(status, packages, summary, time.perf_counter() - started)

    # -- enable, disable, remove, reload ---------------------------------------------------

    def _changeable(self, name: str) -> PluginStatus:
        status = self._find(name)
        if status.kind == "builtin":
            raise CannotChange(status.name, "built-in plugins are part of easel")
        return status

    def enable(self, actor_id: int, name: str) -> PluginStatus:
        """Enable a disabled or failed plugin and load it at once (with a host). Owners only;
        audited. A plugin that fails again is reported as failed."""
        self._require_owner(actor_id, "enable", name)
        status = self._changeable(name)
        if status.kind == "missing":
            raise CannotChange(status.name, "its files are gone; install it again")
        self._ensure_row(status.name, self._source_or_record(status.name))
        self.db.run_sync(db_plugins.set_plugin_enabled, status.name, True)
        if self.host is not None:
            self.host.enable(status.name)
        after = self._find(status.name)
        self._audit(actor_id, "enable", status.name, {"status": after.status, "error": after.error})
        return after

    def disable(self, actor_id: int, name: str) -> PluginStatus:
        """Disable a plugin: at once in this process (its node types and templates
        disappear), and at every later start. Owners only; audited."""
        self._require_owner(actor_id, "disable", name)
        status = self._changeable(name)
        if self.host is not None and status.kind != "missing":
            self.host.disable(status.name)
        self._ensure_row(status.name, self._source_or_record(status.name))
        self.db.run_sync(db_plugins.set_plugin_enabled, status.name, False)
        after = self._find(status.name)
        self._audit(actor_id, "disable", status.name, {"was": status.status})
        return after

    def remove(self, actor_id: int, name: str) -> PluginStatus:
        """Remove a plugin: unload it, delete its files (a distribution from the plugin
        packages folder, or the drop-in's file or folder) and its record. Packages it
        pulled in stay. Owners only; audited."""
        self._require_owner(actor_id, "remove", name)
        status = self._changeable(name)
        if status.kind == "distribution" and not status.managed:
            raise CannotChange(
                status.name,
                "it is installed in the bot's own environment, not by easel; uninstall it with pip",
            )
        if self.host is not None and status.kind != "missing":
            try:
                self.host.unload(status.name)
            except Exception:  # already gone from the host: the files still go
                log.debug("unloading %s", status.name, exc_info=True)
        removed: list[str] = []
        if status.kind == "distribution":
            removed = remove_distribution(self.prefix, status.name)
        elif status.kind == "dropin" and status.location:
            removed = remove_dropin(self.dropin_dir, Path(status.location))
        if self.db.read_sync(db_plugins.get_plugin, status.name) is not None:
            self.db.run_sync(db_plugins.remove_plugin, status.name)
        self._audit(
            actor_id,
            "remove",
            status.name,
            {"version": status.version, "kind": status.kind, "files": len(removed)},
        )
        return replace(status, status="removed", node_types=(), templates=(), hooks=())

    def reload(self, actor_id: int) -> list[PluginStatus]:
        """Unload every plugin and load what is on disk again (new drop-ins, edited files,
        changes made from the command line), as recorded. Owners only; audited."""
        self._require_owner(actor_id, "reload", None)
        if self.host is None:
            raise CannotChange("*", "reloading applies to a running bot")
        self._dropin_requirements()
        self.host.reload(self._disabled())
        statuses = self.list_plugins(LOCAL_OPERATOR)
        self._audit(
            actor_id,
            "reload",
            None,
            {"plugins": {s.name: s.status for s in statuses if s.kind != "builtin"}},
        )
        return statuses

    def _source_or_record(self, name: str) -> PluginRecord | PluginSource | None:
        if self.host is not None:
            try:
                return self.host.get(name)
            except PluginHostError:  # not loaded here: look on disk
                pass
        return self._discover().get(name)

    # -- drop-ins -------------------------------------------------------------------------

    def _dropin_requirements(self) -> None:
        """pip-install the requirements.txt of drop-in packages, once per content, when the
        configuration allows; a failure is logged and audited, the plugin still loads (and
        fails to import if it really needs them)."""
        if not (self.settings.plugin_dropin_requirements and self.settings.plugin_installs_enabled):
            return
        for folder, details in self.installer.dropin_requirements(self.dropin_dir):
            self._audit(LOCAL_OPERATOR, "requirements", folder, details)
            if not details["ok"] and "pip" in details:
                log.warning("requirements of drop-in %s failed:\n%s", folder, details["pip"])

    def close(self) -> None:
        """Unload the plugins (their shutdown hooks run)."""
        if self.host is not None:
            self.host.close()


__all__ = ["AUDIT_PREFIX", "LOCAL_OPERATOR", "PluginService"]
