"""Plugins as a product: owners install, list, enable, disable, remove and reload plugins in
a running bot, without a restart.

The package, by concern:

- :mod:`.service`: :class:`PluginService`, the owners' actions, the audit log, the
  recorded state;
- :mod:`.pip`: pip in a subprocess (constraints, time limit, summaries, reports, specs);
- :mod:`.removal`: deleting a plugin's files by its RECORD (or a drop-in's);
- :mod:`.results`: what the service answers (:class:`PluginStatus`, :class:`InstallPlan`...);
- :mod:`.errors`: the service's errors, and which of them are refusals;
- :mod:`.runtime`: an environment with its plugins under a host and this service.

Every name callers import from ``bot.services.plugins`` is re-exported here.
"""

from __future__ import annotations

from bot.services.plugins.errors import (
    PLUGIN_ERRORS,
    REFUSALS,
    CannotChange,
    InstallBusy,
    InstallsDisabled,
    NotAPlugin,
    NotOwner,
    PipFailed,
    PipTimedOut,
    PluginNotFound,
    PluginServiceError,
    ShadowsEasel,
    SpecRefused,
)
from bot.services.plugins.pip import (
    MAX_SUMMARY_CHARS,
    PipRun,
    classify_spec,
    environment_constraints,
    run_pip,
    summarize_pip,
)
from bot.services.plugins.removal import remove_distribution, remove_stale_versions
from bot.services.plugins.results import InstallPlan, InstallResult, PackageChange, PluginStatus
from bot.services.plugins.runtime import (
    PluginRuntime,
    environment_with_plugins,
    start_plugins,
    switched_off_plugins,
)
from bot.services.plugins.service import AUDIT_PREFIX, LOCAL_OPERATOR, PluginService

__all__ = [
    "AUDIT_PREFIX",
    "CannotChange",
    "InstallBusy",
    "InstallPlan",
    "InstallResult",
    "InstallsDisabled",
    "LOCAL_OPERATOR",
    "MAX_SUMMARY_CHARS",
    "NotAPlugin",
    "NotOwner",
    "PLUGIN_ERRORS",
    "PackageChange",
    "PipFailed",
    "PipRun",
    "PipTimedOut",
    "PluginNotFound",
    "PluginRuntime",
    "PluginService",
    "PluginServiceError",
    "PluginStatus",
    "REFUSALS",
    "ShadowsEasel",
    "SpecRefused",
    "classify_spec",
    "environment_constraints",
    "environment_with_plugins",
    "remove_distribution",
    "remove_stale_versions",
    "run_pip",
    "start_plugins",
    "switched_off_plugins",
    "summarize_pip",
]
