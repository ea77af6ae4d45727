"""The plugin host's errors, and :func:`describe_error`, the one line an owner reads about
a plugin's exception."""

from __future__ import annotations

import traceback
from pathlib import Path

from runner.errors import EaselError


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


__all__ = [
    "BuiltinPlugin",
    "HookTimeout",
    "PluginHookError",
    "PluginHostError",
    "UnknownPlugin",
    "describe_error",
]
