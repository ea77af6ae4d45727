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

from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@hookspec
def easel_forget_user(user_id: int, data_dir: Path) -> None:
    """Delete everything this plugin stores about one user (``/forget-me``, ``easel forget``).

    Called after easel has deleted the user's own rows and files. ``user_id`` is the
    Discord user id; ``data_dir`` is easel's data folder. Raise to report a failure: the
    caller names the plugin and goes on with the others.
    """


@hookspec
def easel_job_started(job_id: str, user_id: int | None, workflow: dict[str, Any]) -> None:
    """Called on the worker just before a job's workflow runs.

    ``workflow`` is the API-format workflow about to run (do not change it). Keep it fast:
    the job waits for every implementation.
    """


@hookspec
def easel_job_finished(
    job_id: str, user_id: int | None, status: str, images: list[str], error: str | None
) -> None:
    """Called on the worker when a job ends: ``status`` is done, failed or cancelled,
    ``images`` the paths written, ``error`` a readable message for failures."""


@hookspec(firstresult=True)
def easel_check_prompt(
    prompt: str, negative: str, user_id: int | None, nsfw_allowed: bool
) -> str | None:
    """Called before a request is queued, to moderate its text.

    ``prompt`` and ``negative`` are the texts as the user gave them (LoRA tags and
    options removed); ``user_id`` is the Discord user id (None outside Discord);
    ``nsfw_allowed`` is True in age-restricted channels. Return one sentence saying why
    the request is refused, or None to let it pass. The first refusal wins
    (``firstresult``).
    """


@hookspec(firstresult=True)
def easel_check_output(
    image: Any, prompt: str, user_id: int | None, env: Environment
) -> str | None:
    """Called on the worker for each result image that will be shown outside an
    age-restricted channel.

    ``image`` is a PIL image, ``prompt`` the prompt that made it, ``env`` the
    environment (settings, device). Return a short reason (e.g. ``"nsfw"``) when the image
    must not be shown as is (the bot then spoilers or withholds it, as configured), or
    None when it passes. The first reason wins (``firstresult``).
    """
