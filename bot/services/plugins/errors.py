"""The plugin service's errors. Each names the offending value; ``str(exc)`` is a sentence
for an owner. :data:`REFUSALS` and :data:`PLUGIN_ERRORS` are the one place that says which
errors the edges (the ``/plugin`` cog, ``easel plugins``) answer how."""

from __future__ import annotations

from bot.services.errors import ServiceError
from runner.plugin_host import PluginHostError


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

    def __init__(self, spec: str, returncode: int, summary: str, words: str | None = None):
        self.spec = spec
        self.returncode = returncode
        self.summary = summary
        self.words = words
        if words:  # what an owner reads: why, in words (pip's lines stay in ``summary``)
            super().__init__(f"pip could not install {spec!r}: {words}")
        else:
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


class ShadowsEasel(PluginServiceError):
    """A distribution ships top-level packages named like easel's own (``runner``, ``db``,
    ``bot``, ``plugins``); it was removed again, nothing of it loaded."""

    def __init__(self, distribution: str, names: list[str]):
        self.distribution = distribution
        self.names = sorted(names)
        shown = ", ".join(f"'{n}'" for n in self.names)
        super().__init__(
            f"{distribution!r} ships top-level packages named like easel's own ({shown}); "
            "it was refused and removed again"
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


REFUSALS: tuple[type[Exception], ...] = (
    NotOwner,
    InstallsDisabled,
    SpecRefused,
    PluginNotFound,
    CannotChange,
)
"""Requests refused as they were asked (the command line exits 2 for these)."""

PLUGIN_ERRORS: tuple[type[Exception], ...] = (PluginServiceError, PluginHostError)
"""Every deliberate error of plugin management (the service's and the host's): its text is
a sentence for an owner. Anything else is a bug, logged with its traceback."""


__all__ = [
    "PLUGIN_ERRORS",
    "REFUSALS",
    "CannotChange",
    "InstallBusy",
    "InstallsDisabled",
    "NotAPlugin",
    "NotOwner",
    "PipFailed",
    "PipTimedOut",
    "PluginNotFound",
    "PluginServiceError",
    "ShadowsEasel",
    "SpecRefused",
]
