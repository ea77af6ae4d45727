"""Submissions through operator workflows: ``/imagine workflow:NAME`` (the member's
prompt and options over the workflow's own values, an attachment into its image
input) and ``@easel run`` (the graph of a ComfyUI PNG as it is)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import discord

from bot.discord import context
from bot.services.generation import Destination, Submission
from bot.services.moderation import Refused
from bot.services.operator_workflows import (
    OperatorWorkflow,
    OperatorWorkflows,
    UnknownWorkflow,
    WorkflowRejected,
)
from bot.services.parsing import Defaults, Limits
from runner.templates import DEFAULTS, GenerationRequest


def folder_of(bot) -> OperatorWorkflows:
    """The bot's workflows folder."""
    return OperatorWorkflows(bot.settings, bot.env)


def workflow_defaults(workflow: OperatorWorkflow, user: Defaults, *, image: bool) -> Defaults:
    """The member's defaults with the workflow's own values over them (the operator
    tuned the workflow: its steps, size, sampler... are what a request starts from).
    With an image, a text-to-image workflow starts from the img2img strength."""
    values = workflow.request_defaults()
    if (image and "image" not in workflow.bindings.options) or "strength" not in values:
        values["strength"] = user.strength  # a text-to-image workflow given an image
    if not 0 < float(values["strength"]) <= 1:
        values["strength"] = DEFAULTS.strength
    fields = {f.name for f in dataclasses.fields(Defaults)}
    return dataclasses.replace(user, **{k: v for k, v in values.items() if k in fields})


def usable(bot, workflow: OperatorWorkflow, user: discord.abc.User) -> bool:
    """Whether ``user`` may use ``workflow`` (its roles; owners always)."""
    return workflow.usable_by(context.role_ids(user), owner=user.id in bot.settings.owner_set)


async def get_workflow(bot, name: str, user: discord.abc.User) -> OperatorWorkflow:
    """The workflow ``name`` if ``user`` may use it; else :class:`Refused`."""
    try:
        workflow = await asyncio.to_thread(folder_of(bot).get, name)
    except UnknownWorkflow as exc:
        raise Refused(f"There is no workflow named {exc.name!r}; see /workflow list.") from None
    except WorkflowRejected as exc:
        raise Refused(
            f"Workflow {exc.name!r} cannot be used now: {'; '.join(exc.problems)}."
        ) from None
    if not usable(bot, workflow, user):
        raise Refused(f"Workflow {workflow.name!r} is for members with certain roles only.")
    return workflow


def capped(limits: Limits, workflow: OperatorWorkflow) -> Limits:
    """The member's limits, tightened by the workflow's."""
    side = workflow.limits.max_size
    return Limits(
        max_steps=min(limits.max_steps, workflow.limits.max_steps or limits.max_steps),
        max_width=min(limits.max_width, side or limits.max_width),
        max_height=min(limits.max_height, side or limits.max_height),
        max_count=limits.max_count,
    )


def refuse_problems(workflow: OperatorWorkflow, problems: list[str]) -> None:
    """Raise :class:`Refused` naming every problem, if any."""
    if problems:
        raise Refused(f"Workflow {workflow.name!r}: {'; '.join(problems)}.")


async def imagine_with_workflow(
    bot,
    interaction: discord.Interaction,
    name: str,
    prompt: str,
    options: dict[str, Any],
    image: discord.Attachment | None = None,
) -> tuple[Submission, Destination]:
    """``/imagine workflow:NAME``: the member's prompt and options over the workflow's
    values, within both the member's and the workflow's limits; an attached image goes
    into the workflow's image input."""
    limits = bot.requests.admit(interaction.user, interaction.guild_id)
    workflow = await get_workflow(bot, name, interaction.user)
    user = await context.user_defaults(bot, interaction.user)
    init_image = None
    if image is not None:
        data = await bot.requests.read_attachment(image)
        init_image, _ = await asyncio.to_thread(bot.requests._store, data)
    defaults = workflow_defaults(workflow, user, image=init_image is not None)
    request = await asyncio.to_thread(
        bot.requests.parse,
        prompt,
        options,
        defaults,
        capped(limits, workflow),
        allow_empty_prompt="prompt" not in workflow.bindings.options,
        has_image=init_image is not None,
    )
    if "prompt" not in workflow.bindings.options:
        request = request.model_copy(update={"prompt": workflow.current().get("prompt") or ""})
    request = request.model_copy(update={"template": workflow.template})
    refuse_problems(workflow, workflow.check_request(request, image=init_image is not None))
    kind = "workflow-img2img" if init_image else "workflow"
    return Submission(request, init_image=init_image, kind=kind), context.interaction_destination(
        interaction
    )


def png_request(workflow: OperatorWorkflow, limits: Limits) -> GenerationRequest:
    """The request that runs a PNG's graph as it is (its own seed, steps, size...);
    :class:`Refused` naming every value over the member's limits."""
    now = workflow.current()
    fields: dict[str, Any] = {
        name: now[option]
        for option, name in (
            ("negative", "negative"),
            ("steps", "steps"),
            ("cfg", "cfg"),
            ("sampler", "sampler"),
            ("scheduler", "scheduler"),
            ("width", "width"),
            ("height", "height"),
            ("batch_size", "batch_size"),
            ("model", "model"),
            ("seed", "seed"),
        )
        if now.get(option) is not None
    }
    problems = []
    steps = [
        n.get("inputs", {}).get("steps")
        for n in workflow.graph.values()
        if isinstance(n, dict) and isinstance(n.get("inputs", {}).get("steps"), int)
    ]
    if steps and max(steps) > limits.max_steps:
        problems.append(f"{max(steps)} steps is more than your limit of {limits.max_steps}")
    width, height = fields.get("width", 0), fields.get("height", 0)
    if width > limits.max_width or height > limits.max_height:
        problems.append(
            f"size {width}x{height} is larger than your limit of {limits.max_width}x{limits.max_height}"
        )
    if fields.get("batch_size", 1) > limits.max_count:
        problems.append(
            f"{fields['batch_size']} images is more than your limit of {limits.max_count}"
        )
    if problems:
        raise Refused("That image's workflow goes beyond your limits: " + "; ".join(problems) + ".")
    try:
        return GenerationRequest(
            prompt=str(now.get("prompt") or ""), template=workflow.template, **fields
        )
    except ValueError as exc:
        raise Refused(f"That image's workflow has values easel cannot take: {exc}") from None
