"""easel's engine: ComfyUI-format workflows run on diffusers, extended through pluggy.

The public API for plugin authors is what this module exports.
"""

from __future__ import annotations

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
from runner.nodes import Input, NodeType, node
from runner.templates import GenerationRequest, LoraRef, WorkflowTemplate

hookimpl = pluggy.HookimplMarker("easel")
"""Marker for plugin hook implementations: ``@hookimpl def easel_node_types(): ...``."""

__all__ = [
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
