"""The plugin lifecycle at run time: load, validate, guard, disable and unload plugins in a
running process, without a restart.

A :class:`PluginHost` sits beside an :class:`~runner.environment.Environment` and manages
its third-party plugins: distributions that declare ``easel`` entry points (installed in
the bot's own environment or, by the bot, in the plugin packages folder) and drop-in
modules or packages in the plugins folder (``DATA_DIR/plugins``, like ComfyUI's
``custom_nodes``). Built-in plugins stay as :func:`runner.plugin_manager.build_plugin_manager`
registered them.

The package, by concern:

- :mod:`.records`: what is known of a plugin (:class:`PluginRecord`, :class:`PluginSource`,
  :class:`PluginEvent`, the states, :func:`normalize_name`);
- :mod:`.errors`: :class:`PluginHostError` and its subclasses, :func:`describe_error`;
- :mod:`.discovery`: finding plugins on disk and importing them (:func:`discover_plugins`,
  :func:`dropin_paths`, :func:`plugin_site_dirs`);
- :mod:`.guard`: isolation, hooks with time limits (:data:`PROPAGATING_HOOKS`);
- :mod:`.breadcrumbs`: what a process was doing with a plugin when it died;
- :mod:`.host`: the lifecycle (:class:`PluginHost`).

This package is runner-level: it knows nothing of the database or Discord. The bot's
plugin service (``bot.services.plugins``) keeps the state in the database and runs pip.
"""

from __future__ import annotations

from runner.plugin_host.discovery import (
    DROPIN_PACKAGE,
    discover_plugins,
    dropin_paths,
    plugin_site_dirs,
)
from runner.plugin_host.errors import (
    BuiltinPlugin,
    HookTimeout,
    PluginHookError,
    PluginHostError,
    UnknownPlugin,
    describe_error,
)
from runner.plugin_host.guard import PROPAGATING_HOOKS
from runner.plugin_host.host import PluginHost
from runner.plugin_host.records import (
    DISABLED,
    ENABLED,
    FAILED,
    LOADING,
    RAISED,
    PluginEvent,
    PluginRecord,
    PluginSource,
    normalize_name,
)

__all__ = [
    "BuiltinPlugin",
    "DISABLED",
    "DROPIN_PACKAGE",
    "ENABLED",
    "FAILED",
    "HookTimeout",
    "LOADING",
    "PROPAGATING_HOOKS",
    "RAISED",
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
