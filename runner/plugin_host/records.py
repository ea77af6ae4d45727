"""What the plugin host knows of a plugin: its record in this process, the plugin found on
disk (its source), the events sent to listeners, and the states a record can be in."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pluggy

    from runner.environment import Environment

ENABLED = "enabled"
DISABLED = "disabled"
FAILED = "failed"
LOADING = "loading"
RAISED = "raised"
"""The action of an event about a propagating hook that raised (the plugin stays on)."""


def normalize_name(name: str) -> str:
    """The PEP 503 form of a plugin name (``My_Plugin`` -> ``my-plugin``)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip("-")


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
    """Sent to listeners: ``action`` is ``loaded``, ``failed``, ``disabled``, ``unloaded`` or
    ``raised`` (a propagating hook raised; ``reason`` has the details)."""

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


def provided_names(env: Environment, plugin: str) -> tuple[list[str], list[str]]:
    """The node types and the templates that ``plugin`` provides in ``env``, sorted."""
    node_types = sorted(n for n, t in env.node_types.items() if t.plugin == plugin)
    templates = sorted(n for n, t in env.templates.items() if t.plugin == plugin)
    return node_types, templates


def builtin_records(
    pm: pluggy.PluginManager, env: Environment, exclude: set[int]
) -> list[PluginRecord]:
    """Records of the plugins registered in ``pm`` unguarded (the built-ins), skipping the
    objects whose ``id`` is in ``exclude`` (the host's stand-ins)."""
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or id(plugin) in exclude:
            continue
        record = PluginRecord(name, "builtin", status=ENABLED, managed=False, guarded=False)
        record.hooks = sorted(
            h.name for h in pm.get_hookcallers(plugin) or [] if h.name.startswith("easel_")
        )
        record.node_types, record.templates = provided_names(env, name)
        out.append(record)
    return out


__all__ = [
    "DISABLED",
    "ENABLED",
    "FAILED",
    "LOADING",
    "RAISED",
    "PluginEvent",
    "PluginRecord",
    "PluginSource",
    "builtin_records",
    "normalize_name",
    "provided_names",
]
