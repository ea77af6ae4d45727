"""Every hook easel calls, with its signature and when it is called.

Plugins implement these with the ``hookimpl`` marker exported from :mod:`runner`::

    from runner import hookimpl, Input, node, types as T

    @hookimpl
    def easel_node_types():
        return [MyNode]

Hooks whose results are collected return lists; all are called for every registered
plugin unless marked ``firstresult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from runner.environment import Environment
    from runner.nodes import NodeType
    from runner.templates import WorkflowTemplate

PROJECT = "easel"

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def easel_node_types() -> list[NodeType]:
    """Return the node types this plugin provides.

    Called when the environment is built and again whenever plugins change. Each item is
    a :class:`runner.nodes.NodeType` (usually made with the :func:`runner.nodes.node`
    decorator). A class_type given by two plugins is an error naming both plugins.
    """


@hookspec
def easel_workflow_templates() -> list[WorkflowTemplate]:
    """Return the workflow templates this plugin provides.

    A template turns a :class:`runner.templates.GenerationRequest` into a workflow in
    ComfyUI's API format (``txt2img``, ``img2img``...). Called with ``easel_node_types``.
    """


@hookspec
def easel_startup(env: Environment) -> None:
    """Called once when an environment is ready (plugins registered, nodes collected).

    ``env`` gives the settings, the node types and the model manager. Use it to warm
    caches or check the plugin's own configuration; raise to report a broken plugin.
    """


@hookspec
def easel_shutdown(env: Environment) -> None:
    """Called once when the environment closes; release what ``easel_startup`` acquired."""
