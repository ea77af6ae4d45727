"""What the plugin service answers: the packages pip installs or would install, the plan
shown before an install, one plugin's state as owners see it, an install's result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.plugin_host import PluginRecord, PluginSource

if TYPE_CHECKING:
    from db.models import InstalledPlugin


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

    @classmethod
    def of(
        cls, item: PluginRecord | PluginSource | None, row: InstalledPlugin | None
    ) -> PluginStatus:
        """The state of a plugin that the host has loaded (a record) or that is on disk (a
        source), merged with its database row; a row alone is a plugin whose files are gone."""
        if item is None:
            assert row is not None
            return cls(
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
        return cls(
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

    def shown_fields(self) -> list[tuple[str, Any]]:
        """``(field, value)`` for every field that has a value, lists joined with commas:
        what ``info`` shows, at the command line and in Discord."""
        return [
            (key, ", ".join(value) if isinstance(value, list) else value)
            for key, value in self.to_dict().items()
            if value not in (None, [], "")
        ]

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


__all__ = ["InstallPlan", "InstallResult", "PackageChange", "PluginStatus"]
