"""easel's engine: ComfyUI-format workflows run on diffusers, extended through pluggy.

The public API for plugin authors is what this module exports (``__all__``): the hook
marker, node declaration, the values that flow between model nodes (MODEL, CLIP, VAE,
CONDITIONING, LATENT handles), templates and requests, the errors, and what a plugin's
tests need to build an environment. Everything else is private and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from runner import types
from runner.context import CancelToken, NodeContext
from runner.errors import (
    EaselError,
    JobCancelled,
    ModelError,
    NodeExecutionError,
    TemplateError,
    UnsafeFileError,
    WorkflowError,
    WorkflowInvalid,
)
from runner.handles import (
    Area,
    ClipHandle,
    CondEntry,
    Conditioning,
    ControlSpec,
    Latent,
    ModelHandle,
    VaeHandle,
)
from runner.nodes import Input, NodeType, node
from runner.templates import GenerationRequest, LoraRef, WorkflowTemplate

hookimpl = pluggy.HookimplMarker("easel")
"""Marker for plugin hook implementations: ``@hookimpl def easel_node_types(): ...``."""

if TYPE_CHECKING:
    from runner.environment import Environment
    from runner.models.manager import Checkpoint
    from runner.plugin_manager import build_plugin_manager
    from runner.settings import EngineSettings

_LAZY = {
    "Checkpoint": "runner.models.manager",
    "EngineSettings": "runner.settings",
    "Environment": "runner.environment",
    "build_plugin_manager": "runner.plugin_manager",
}
"""Exported names imported on first use: they pull in the engine (and torch), which
``import runner`` for a hook marker or a node declaration should not."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Area",
    "Checkpoint",
    "ClipHandle",
    "CondEntry",
    "Conditioning",
    "ControlSpec",
    "EngineSettings",
    "Environment",
    "Latent",
    "ModelHandle",
    "VaeHandle",
    "build_plugin_manager",
    "CancelToken",
    "EaselError",
    "GenerationRequest",
    "Input",
    "JobCancelled",
    "LoraRef",
    "ModelError",
    "NodeContext",
    "NodeExecutionError",
    "NodeType",
    "TemplateError",
    "UnsafeFileError",
    "WorkflowError",
    "WorkflowInvalid",
    "WorkflowTemplate",
    "hookimpl",
    "node",
    "types",
]
