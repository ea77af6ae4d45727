"""The text saved inside output images: the workflow in API format (``prompt``) and UI
format (``workflow``, laid out from the node specs), and A1111's ``parameters`` read from
the sampler an output comes from (ComfyUI's and A1111's PNG chunks)."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from runner.context import NodeContext
from runner.images import a1111_parameters
from runner.ui_layout import api_to_ui

log = logging.getLogger(__name__)


def parameters_for(workflow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """Generation parameters for the A1111 chunk, read from the sampler this output comes from."""

    def upstream(start: str) -> list[str]:
        seen, order, stack = set(), [], [start]
        while stack:
            nid = stack.pop(0)
            if nid in seen or nid not in workflow:
                continue
            seen.add(nid)
            order.append(nid)
            for value in (workflow[nid].get("inputs") or {}).values():
                if isinstance(value, list) and len(value) == 2:
                    stack.append(str(value[0]))
        return order

    def literal(nid: str, name: str):
        value = (workflow.get(nid, {}).get("inputs") or {}).get(name)
        return None if isinstance(value, list) else value

    def text_of(link) -> str | None:
        if not isinstance(link, list):
            return None
        for nid in upstream(str(link[0])):
            if workflow[nid].get("class_type") == "CLIPTextEncode":
                text = literal(nid, "text")
                return None if text is None else str(text)
        return None

    params: dict[str, Any] = {}
    chain = upstream(node_id)
    sampler = next(
        (n for n in chain if workflow[n].get("class_type") in ("KSampler", "KSamplerAdvanced")),
        None,
    )
    if sampler is None:
        return params
    inputs = workflow[sampler].get("inputs") or {}
    params["prompt"] = text_of(inputs.get("positive")) or ""
    params["negative"] = text_of(inputs.get("negative")) or ""
    params["seed"] = (
        literal(sampler, "seed")
        if literal(sampler, "seed") is not None
        else literal(sampler, "noise_seed")
    )
    for key, name in (
        ("steps", "steps"),
        ("cfg", "cfg"),
        ("sampler", "sampler_name"),
        ("scheduler", "scheduler"),
    ):
        params[key] = literal(sampler, name)
    try:  # literals are as written in the workflow ("0.5" is a valid denoise)
        denoise = float(literal(sampler, "denoise"))
    except (TypeError, ValueError):
        denoise = None
    if denoise is not None and denoise < 1:
        params["denoise"] = denoise
    loras = []
    for nid in upstream(sampler):
        cls = workflow[nid].get("class_type")
        if cls == "CheckpointLoaderSimple":
            params["model"] = literal(nid, "ckpt_name")
        elif cls == "LoraLoader":
            loras.append(f"{literal(nid, 'lora_name')}:{literal(nid, 'strength_model')}")
        elif cls == "EmptyLatentImage":
            params["size"] = f"{literal(nid, 'width')}x{literal(nid, 'height')}"
    if loras:
        params["loras"] = " ".join(loras)
    return params


def output_text(ctx: NodeContext, images: torch.Tensor) -> dict[str, str]:
    """The text chunks of a saved image: ``prompt`` (API format), ``workflow`` (UI format,
    laid out from the prompt and the node specs) and A1111's ``parameters``."""
    workflow = ctx.extra.get("workflow") or {}
    text = {"prompt": json.dumps(workflow)}
    ui = ctx.extra.get("ui_workflow")
    try:
        text["workflow"] = json.dumps(
            ui if isinstance(ui, dict) else api_to_ui(workflow, ctx.env.node_types)
        )
    except Exception:  # pragma: no cover - never lose the image over its layout
        log.warning("could not lay out the workflow chunk", exc_info=True)
    params = parameters_for(workflow, ctx.node_id)
    if params:
        if images.dim() == 4:  # the saved image's size, not the first pass's
            params["size"] = f"{int(images.shape[2])}x{int(images.shape[1])}"
        text["parameters"] = a1111_parameters(params)
    for key, value in (ctx.extra.get("png_text") or {}).items():
        text[str(key)] = str(value)
    return text
