"""Building the plugin manager: the hook specs, the built-in plugins, the entry points."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import pluggy

from runner import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "easel"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.core.loaders",
    "plugins.core.conditioning",
    "plugins.core.conditioning_ops",
    "plugins.core.sampling",
    "plugins.core.custom_sampling",
    "plugins.core.latent",
    "plugins.core.image",
    "plugins.core.control",
    "plugins.core.mask",
    "plugins.core.inpaint",
    "plugins.core.latent_ops",
    "plugins.core.image_ops",
    "plugins.core.latent_io",
    "plugins.core.upscale",
    "plugins.core.model_merging",
    "plugins.core.vision",
    "plugins.clip_score",
    "plugins.templates",
    "plugins.safety",
)
"""Built-in plugins, imported by name (as pytest's ``default_plugins``) so that
``runner`` never imports ``plugins`` statically."""


def build_plugin_manager(
    *,
    builtins: tuple[str, ...] = DEFAULT_PLUGINS,
    entry_points: bool = True,
    extra: tuple[object, ...] = (),
) -> pluggy.PluginManager:
    """A plugin manager with easel's hook specs, the built-ins, ``extra`` plugin objects and
    the ``easel`` entry-point group; ``check_pending()`` makes a misspelt hook fail loudly."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in builtins:
        module: ModuleType = importlib.import_module(name)
        pm.register(module, name=name)
    for plugin in extra:
        pm.register(plugin)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """The name a plugin was registered under (its distribution for entry points)."""
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return dist.project_name
    return pm.get_name(plugin) or repr(plugin)
