"""Plugins as a product: owners install, list, enable, disable, remove and reload plugins in
a running bot, without a restart.

pip runs in a subprocess, with a time limit, its output captured and summarised, into the
plugin packages folder (``pip install --prefix DATA_DIR/plugin-packages``), never into the
bot's own environment: a constraints file pins every package the bot has, so a plugin that
needs other versions is refused by pip's resolver instead of changing the bot. Before an
install, :meth:`PluginService.plan_install` shows what pip would install
(``pip install --dry-run --report -``) for the owner to confirm. The installed version and
the wheel's sha256 are recorded in the database, with the enabled/disabled state and the
reason a plugin was switched off; :meth:`PluginService.start` restores that state.

The runner's :class:`~runner.plugin_host.PluginHost` loads, guards and unloads the plugins;
a plugin that it switches off (it failed to import, failed validation, raised or hung in a
hook) is recorded here and reported to this service's listeners (the bot tells the owners).

Only owners (``owner_ids``) may act; the command line acts as :data:`LOCAL_OPERATOR`, who
has the machine's shell anyway. Every action, refusals included, is written to the audit
log. Every method blocks (pip, imports): the bot calls them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.services.errors import ServiceError
from db import audit as db_audit
from db import plugins as db_plugins
from runner.plugin_host import (
    FAILED,
    PluginEvent,
    PluginHost,
    PluginRecord,
    PluginSource,
    discover_plugins,
    normalize_name,
    plugin_site_dirs,
)

if TYPE_CHECKING:
    from db.engine import Database
    from db.models import AuditEntry, InstalledPlugin
    from runner.environment import Environment

log = logging.getLogger(__name__)

LOCAL_OPERATOR = 0
"""The actor id of the command line's operator (Discord ids are never 0)."""

AUDIT_PREFIX = "plugin."
MAX_SUMMARY_CHARS = 1500


# -- errors -------------------------------------------------------------------------------


class PluginServiceError(ServiceError):
    """Base class of the plugin service's errors."""


class NotOwner(PluginServiceError):
    """Someone who is not one of the bot's owners tried to manage plugins."""

    def __init__(self, user_id: int, action: str):
        self.user_id = user_id
        self.action = action
        super().__init__(f"user {user_id} is not an owner of this bot and may not {action} plugins")


class InstallsDisabled(PluginServiceError):
    """Plugin installs are switched off in the configuration."""

    def __init__(self) -> None:
        super().__init__("plugin installs are switched off (plugin_installs_enabled = false)")


class SpecRefused(PluginServiceError):
    """An install spec that is not accepted (a pip option, a URL or path when not allowed...)."""

    def __init__(self, spec: str, reason: str):
        self.spec = spec
        self.reason = reason
        super().__init__(f"cannot install {spec!r}: {reason}")


class PipFailed(PluginServiceError):
    """pip ran and failed; ``summary`` holds the lines that say why."""

    def __init__(self, spec: str, returncode: int, summary: str):
        self.spec = spec
        self.returncode = returncode
        self.summary = summary
        super().__init__(f"pip could not install {spec!r} (exit {returncode}):\n{summary}")


class PipTimedOut(PluginServiceError):
    """pip did not finish in ``plugin_pip_timeout_s`` and was stopped."""

    def __init__(self, spec: str, seconds: float):
        self.spec = spec
        self.seconds = seconds
        super().__init__(
            f"pip did not finish installing {spec!r} within {seconds:g} s and was stopped"
        )


class InstallBusy(PluginServiceError):
    """Another pip run is in progress."""

    def __init__(self, spec: str):
        self.spec = spec
        super().__init__(f"another plugin install is running; try {spec!r} again when it is done")


class NotAPlugin(PluginServiceError):
    """The distribution installed but declares no ``easel`` entry point (it was removed again)."""

    def __init__(self, distribution: str):
        self.distribution = distribution
        super().__init__(
            f"{distribution!r} is not an easel plugin (no [project.entry-points.easel]); it was removed again"
        )


class PluginNotFound(PluginServiceError):
    """No plugin of that name is installed, dropped in or recorded."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no plugin named {name!r}; see the plugin list")


class CannotChange(PluginServiceError):
    """The plugin exists but this action does not apply to it (a built-in, or a package in
    the bot's own environment)."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"cannot change plugin {name!r}: {reason}")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageChange:
    """One distribution pip installs (or would install)."""

    name: str
    version: str
    source: str
    """Where it comes from: ``index``, or the URL or path pip was given."""
    requested: bool = False
    sha256: str | None = None
    """The wheel's sha256: of the wheel pip downloaded or built (for an sdist from an index,
    of the archive)."""

    def describe(self) -> str:
        """``name version (source)``."""
        origin = "" if self.source == "index" else f" from {self.source}"
        return f"{self.name} {self.version}{origin}"


@dataclass(frozen=True)
class InstallPlan:
    """What pip would install for a spec: shown to the owner before they confirm."""

    spec: str
    packages: tuple[PackageChange, ...]
    warnings: str = ""

    @property
    def plugin(self) -> PackageChange | None:
        """The distribution that was asked for."""
        return next((p for p in self.packages if p.requested), None)

    def describe(self) -> str:
        """A few lines for a confirmation prompt."""
        if not self.packages:
            return f"pip would install nothing for {self.spec!r} (already present?)"
        lines = [f"pip would install for {self.spec!r}:"]
        lines += [
            f"  - {p.describe()}" + ("  (the plugin)" if p.requested else "") for p in self.packages
        ]
        if self.warnings:
            lines.append(self.warnings)
        return "\n".join(lines)


@dataclass(frozen=True)
class PluginStatus:
    """One plugin as owners see it: what the running process knows merged with the
    database's record."""

    name: str
    kind: str
    """``builtin``, ``distribution``, ``dropin``, or ``missing`` (recorded, not on disk)."""
    status: str
    """``enabled``, ``disabled``, ``failed``, ``missing`` or (after :meth:`PluginService.remove`)
    ``removed``. Without a host (the command line) it is the recorded state, which the bot
    applies at its next start or reload."""
    version: str | None = None
    source: str | None = None
    wheel_sha256: str | None = None
    error: str | None = None
    location: str | None = None
    managed: bool = True
    node_types: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    installed_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("node_types", "templates", "hooks"):
            out[key] = list(out[key])
        out["installed_at"] = self.installed_at.isoformat() if self.installed_at else None
        return out

    def line(self) -> str:
        """One line for a list."""
        version = f" {self.version}" if self.version else ""
        extra = f": {self.error}" if self.error else ""
        provides = ", ".join([*self.node_types, *(f"template {t}" for t in self.templates)])
        provides = f" [{provides}]" if provides and self.kind != "builtin" else ""
        return f"{self.name}{version} ({self.kind}) {self.status}{provides}{extra}"


@dataclass(frozen=True)
class InstallResult:
    """An install that pip completed: what it installed and the plugin's state after loading."""

    plugin: PluginStatus
    packages: tuple[PackageChange, ...]
    pip_summary: str
    seconds: float


@dataclass
class PipRun:
    """One pip subprocess: its arguments, exit code and captured output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """stderr and stdout together."""
        return "\n".join(part for part in (self.stdout, self.stderr) if part)

    def summary(self) -> str:
        """The lines that matter, for an owner (see :func:`summarize_pip`)."""
        return summarize_pip(self.output)


# -- pip ----------------------------------------------------------------------------------

_KEEP = re.compile(
    r"^(ERROR|WARNING|Successfully installed|Would install|Requirement already satisfied: \S+ in \S*plugin)"
)
_CREATED_WHEEL = re.compile(
    r"Created wheel for (?P<name>[^:]+): filename=(?P<file>\S+) size=\d+ sha256=(?P<sha>[0-9a-f]{64})"
)


def summarize_pip(output: str, *, max_lines: int = 12) -> str:
    """pip's output cut to what an owner needs: errors (with their indented details),
    warnings and the final "Successfully installed" line; else its last lines."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    kept: list[str] = []
    follow = False
    for line in lines:
        if _KEEP.match(line):
            kept.append(line)
            follow = line.startswith("ERROR")
        elif follow and (line.startswith((" ", "\t")) or line.startswith("The conflict")):
            kept.append(line)
        else:
            follow = False
    if not kept:
        kept = lines[-max_lines:]
    text = "\n".join(kept[:max_lines])
    if len(text) > MAX_SUMMARY_CHARS:
        text = text[: MAX_SUMMARY_CHARS - 1] + "…"
    return text


def run_pip(args: list[str], *, timeout_s: float, spec: str, cwd: Path | None = None) -> PipRun:
    """Run ``python -m pip ARGS`` in a subprocess of its own session, capturing its output;
    past ``timeout_s`` the whole process group is killed and :class:`PipTimedOut` raised."""
    command = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ)
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"})
    started = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=str(cwd) if cwd else None,
        env=env,
        **kwargs,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise PipTimedOut(spec, timeout_s) from None
    return PipRun(command, proc.returncode, stdout, stderr, time.perf_counter() - started)


def _kill(proc: subprocess.Popen) -> None:
    """Stop pip and whatever it started (builds run in subprocesses of their own)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except ProcessLookupError:
        pass


def classify_spec(spec: str) -> str:
    """``requirement`` (a name with optional extras, version and markers), ``url`` or
    ``path``; :class:`SpecRefused` for anything else, pip options above all."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = spec.strip()
    if not text:
        raise SpecRefused(spec, "give a requirement such as name==1.0")
    if text.startswith("-"):
        raise SpecRefused(spec, "pip options are not accepted")
    if any(c in text for c in "\r\n\t\0"):
        raise SpecRefused(spec, "one requirement on one line, please")
    if "://" in text or text.startswith(("git+", "hg+", "svn+", "bzr+", "file:")):
        return "url"
    if text.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")):
        return "path"
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        if text.startswith((".", "~", "/")) or os.sep in text or Path(text).exists():
            return "path"
        raise SpecRefused(spec, "not a requirement (name or name==version), URL or path") from None
    return "url" if requirement.url else "requirement"


def environment_constraints(exclude: list[Path]) -> str:
    """``name==version`` for every distribution in the bot's own environment (``sys.path``
    without the ``exclude`` folders): pip may add packages, never change these."""
    excluded = {str(p.resolve()) for p in exclude}
    paths = [p for p in sys.path if p and str(Path(p).resolve()) not in excluded]
    seen: set[str] = set()
    lines: list[str] = []
    for dist in importlib.metadata.distributions(path=paths):
        try:
            raw, version = dist.metadata["Name"], dist.version
        except Exception:
            continue
        if not raw or not version:
            continue
        name = normalize_name(raw)
        if name in seen or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            continue
        seen.add(name)
        lines.append(f"{name}=={version}")
    return "\n".join(sorted(lines)) + "\n"


def _packages_from_report(report: dict[str, Any], output: str = "") -> tuple[PackageChange, ...]:
    built = {normalize_name(m["name"]): m["sha"] for m in _CREATED_WHEEL.finditer(output)}
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = normalize_name(meta.get("name", "?"))
        info = item.get("download_info", {}) or {}
        archive = info.get("archive_info")
        sha = built.get(name)
        if sha is None and archive is not None:
            sha = (archive.get("hashes") or {}).get("sha256")
            if sha is None and str(archive.get("hash", "")).startswith("sha256="):
                sha = archive["hash"].split("=", 1)[1]
        source = info.get("url", "") if item.get("is_direct") else "index"
        out.append(
            PackageChange(
                name, str(meta.get("version", "?")), source, bool(item.get("requested")), sha
            )
        )
    return tuple(out)


# -- the service --------------------------------------------------------------------------


class PluginService:
    """Plugin management for one process: the bot (with a :class:`PluginHost`, so changes
    apply at once) or the command line (``host=None``: changes go to disk and the database,
    and the running bot applies them at ``/plugin reload`` or its next start)."""

    def __init__(self, settings: Any, db: Database, host: PluginHost | None = None):
        self.settings = settings
        self.db = db
        self.host = host
        self.prefix: Path = Path(settings.plugin_packages_root)
        self.site_dirs = plugin_site_dirs(self.prefix)
        self.dropin_dir: Path = Path(settings.plugins_root)
        self._pip_lock = threading.Lock()
        self._listeners: list[Callable[[PluginEvent], None]] = []
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
        (``event.action == "failed"``), e.g. to tell the owners."""
        self._listeners.append(listener)

    def _on_host_event(self, event: PluginEvent) -> None:
        if event.action != FAILED:
            return
        try:
            self._ensure_row(event.name, self._source_or_record(event.name))
            self.db.run_sync(db_plugins.set_plugin_enabled, event.name, False, error=event.reason)
        except Exception:
            log.exception("could not record that plugin %s failed", event.name)
        self._audit(LOCAL_OPERATOR, "failed", event.name, {"reason": event.reason, "by": "easel"})
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("plugin listener failed on %s", event)

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
                out.append(self._status(record, rows.get(record.name)))
                seen.add(record.name)
        else:  # without an environment the built-ins are not imported: names only
            from runner.plugin_manager import DEFAULT_PLUGINS

            out += [PluginStatus(n, "builtin", "enabled", managed=False) for n in DEFAULT_PLUGINS]
        for name, source in sorted(self._discover().items()):
            if name not in seen:
                out.append(self._status(source, rows.get(name)))
                seen.add(name)
        for name, row in sorted(rows.items()):
            if name not in seen:
                out.append(self._status(None, row))
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

    def _status(
        self, item: PluginRecord | PluginSource | None, row: InstalledPlugin | None
    ) -> PluginStatus:
        if item is None:
            assert row is not None
            return PluginStatus(
                row.distribution,
                "missing",
                "missing",
                version=row.version,
                source=row.source,
                wheel_sha256=row.wheel_sha256,
                error=row.error or "recorded as installed, but not found on disk",
                installed_at=row.installed_at,
            )
        if isinstance(item, PluginRecord):
            status, error = item.status, item.error
            node_types, templates, hooks = item.node_types, item.templates, item.hooks
        else:
            # Not loaded in this process: the state it gets at the bot's next (re)load.
            status = (
                "enabled" if row is None or row.enabled else ("failed" if row.error else "disabled")
            )
            error = row.error if row is not None else None
            node_types, templates, hooks = [], [], []
        return PluginStatus(
            item.name,
            item.kind,
            status,
            version=item.version or (row.version if row else None),
            source=row.source if row else None,
            wheel_sha256=row.wheel_sha256 if row else None,
            error=error,
            location=str(item.location) if item.location else None,
            managed=item.managed,
            node_types=tuple(node_types),
            templates=tuple(templates),
            hooks=tuple(hooks),
            installed_at=row.installed_at if row else None,
        )

    # -- install --------------------------------------------------------------------------

    def _check_spec(self, spec: str) -> str:
        kind = classify_spec(spec)
        if kind != "requirement" and not self.settings.plugin_allow_urls:
            raise SpecRefused(spec, f"a {kind} is only accepted with plugin_allow_urls = true")
        if kind == "path":
            path = Path(spec.strip()).expanduser().resolve()
            if not path.exists():
                raise SpecRefused(spec, f"no such file or folder: {path}")
            return str(path)
        return spec.strip()

    def _pip_install_args(self, constraints: Path) -> list[str]:
        return [
            "install",
            "--prefix",
            str(self.prefix),
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "-c",
            str(constraints),
            *self.settings.plugin_pip_args,
        ]

    def _run_pip(self, extra: list[str], spec: str, work: Path) -> PipRun:
        constraints = work / "constraints.txt"
        constraints.write_text(environment_constraints(self.site_dirs))
        self.prefix.mkdir(parents=True, exist_ok=True)
        return run_pip(
            [*self._pip_install_args(constraints), *extra],
            timeout_s=self.settings.plugin_pip_timeout_s,
            spec=spec,
            cwd=work,
        )

    def _prepare(self, actor_id: int, spec: str) -> str:
        self._require_owner(actor_id, "install", spec)
        if not self.settings.plugin_installs_enabled:
            self._audit(
                actor_id, "install", spec, {"ok": False, "error": "installs are switched off"}
            )
            raise InstallsDisabled()
        try:
            return self._check_spec(spec)
        except SpecRefused as exc:
            self._audit(actor_id, "install", spec, {"ok": False, "error": exc.reason})
            raise

    def plan_install(self, actor_id: int, spec: str) -> InstallPlan:
        """What pip would install for ``spec`` (``pip install --dry-run --report -``), for
        the confirmation step. Owners only; raises like :meth:`install`."""
        target = self._prepare(actor_id, spec)
        with tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
            run = self._run_pip(
                ["--dry-run", "--quiet", "--report", "-", "--", target], spec, Path(tmp)
            )
        if run.returncode != 0:
            raise PipFailed(spec, run.returncode, summarize_pip(run.stderr or run.stdout))
        try:
            report = json.loads(run.stdout)
        except json.JSONDecodeError:
            raise PipFailed(spec, run.returncode, "pip's report could not be read") from None
        warnings = "\n".join(line for line in run.stderr.splitlines() if line.startswith("WARNING"))
        return InstallPlan(spec, _packages_from_report(report), warnings)

    def install(self, actor_id: int, spec: str) -> InstallResult:
        """Install ``spec`` with pip into the plugin packages folder, record it, and load it
        at once (with a host). A plugin that installs but fails to load is recorded as
        failed with the reason; pip failures raise :class:`PipFailed` or
        :class:`PipTimedOut`; ``spec`` must be a requirement, or a URL or path when
        ``plugin_allow_urls`` is on. Owners only; audited."""
        target = self._prepare(actor_id, spec)
        if not self._pip_lock.acquire(blocking=False):
            raise InstallBusy(spec)
        try:
            return self._install(actor_id, spec, target)
        finally:
            self._pip_lock.release()

    def _install(self, actor_id: int, spec: str, target: str) -> InstallResult:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
            report_path = Path(tmp) / "report.json"
            try:
                run = self._run_pip(["--report", str(report_path), "--", target], spec, Path(tmp))
            except PipTimedOut as exc:
                self._audit(actor_id, "install", spec, {"ok": False, "error": str(exc)})
                raise
            summary = run.summary()
            if run.returncode != 0:
                self._audit(actor_id, "install", spec, {"ok": False, "pip": summary})
                raise PipFailed(spec, run.returncode, summary)
            report = json.loads(report_path.read_text())
        packages = _packages_from_report(report, run.output)
        for package in packages:
            remove_stale_versions(self.prefix, package.name, package.version)
        requested = next((p for p in packages if p.requested), None)
        if requested is None:
            self._audit(actor_id, "install", spec, {"ok": False, "pip": summary})
            raise PipFailed(spec, 0, f"pip installed nothing new for {spec!r}\n{summary}")
        name = requested.name
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
            path = Path(status.location)
            if self.dropin_dir.resolve() in path.resolve().parents:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                removed = [str(path)]
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
            except Exception:
                pass
        return self._discover().get(name)

    # -- drop-ins -------------------------------------------------------------------------

    def _dropin_requirements(self) -> None:
        """pip-install the requirements.txt of drop-in packages, once per content, when the
        configuration allows; a failure is logged and audited, the plugin still loads (and
        fails to import if it really needs them)."""
        if not (self.settings.plugin_dropin_requirements and self.settings.plugin_installs_enabled):
            return
        if not self.dropin_dir.is_dir():
            return
        marks = self.prefix / ".dropin-requirements"
        for folder in sorted(p for p in self.dropin_dir.iterdir() if p.is_dir()):
            requirements = folder / "requirements.txt"
            if not requirements.is_file() or folder.name.startswith((".", "_")):
                continue
            digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
            mark = marks / f"{folder.name}.sha256"
            if mark.is_file() and mark.read_text().strip() == digest:
                continue
            spec = f"-r {requirements}"
            with self._pip_lock, tempfile.TemporaryDirectory(prefix="easel-pip-") as tmp:
                try:
                    run = self._run_pip(["-r", str(requirements)], spec, Path(tmp))
                except PipTimedOut as exc:
                    self._audit(
                        LOCAL_OPERATOR,
                        "requirements",
                        folder.name,
                        {"ok": False, "error": str(exc)},
                    )
                    continue
            ok = run.returncode == 0
            self._audit(
                LOCAL_OPERATOR, "requirements", folder.name, {"ok": ok, "pip": run.summary()}
            )
            if ok:
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.write_text(digest)
            else:
                log.warning("requirements of drop-in %s failed:\n%s", folder.name, run.summary())

    def close(self) -> None:
        """Unload the plugins (their shutdown hooks run)."""
        if self.host is not None:
            self.host.close()


# -- files in the plugin packages folder ------------------------------------------------------


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


# -- wiring ---------------------------------------------------------------------------------


@dataclass
class PluginRuntime:
    """An environment whose third-party plugins are managed by a plugin service."""

    env: Environment
    service: PluginService
    statuses: list[PluginStatus] = field(default_factory=list)

    def close(self) -> None:
        """Unload the plugins, then close the environment."""
        self.service.close()
        self.env.close()


def start_plugins(env: Environment, settings: Any, db: Database) -> PluginService:
    """Put ``env``'s plugins under a host (adopting entry-point plugins already loaded) and
    restore the recorded state: what the bot does at start."""
    service = PluginService(settings, db, PluginHost(env))
    service.start()
    return service


def environment_with_plugins(settings: Any, db: Database) -> PluginRuntime:
    """A new Environment (built-ins only) whose third-party plugins are loaded by the host,
    as recorded in the database: for the command line and the bot."""
    from runner.environment import Environment
    from runner.plugin_manager import build_plugin_manager

    env = Environment(settings, build_plugin_manager(entry_points=False))
    service = start_plugins(env, settings, db)
    return PluginRuntime(env, service, service.list_plugins(LOCAL_OPERATOR))


__all__ = [
    "CannotChange",
    "InstallBusy",
    "InstallPlan",
    "InstallResult",
    "InstallsDisabled",
    "LOCAL_OPERATOR",
    "NotAPlugin",
    "NotOwner",
    "PackageChange",
    "PipFailed",
    "PipRun",
    "PipTimedOut",
    "PluginNotFound",
    "PluginRuntime",
    "PluginService",
    "PluginServiceError",
    "PluginStatus",
    "SpecRefused",
    "classify_spec",
    "environment_constraints",
    "environment_with_plugins",
    "remove_distribution",
    "remove_stale_versions",
    "run_pip",
    "start_plugins",
    "summarize_pip",
]
