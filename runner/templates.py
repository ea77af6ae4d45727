"""Requests and workflow templates: how ``/imagine`` options become a workflow.

Slash commands and the command line never build graphs by hand: they fill a
:class:`GenerationRequest` and a :class:`WorkflowTemplate` (from a plugin) turns it into
a workflow in ComfyUI's API format.

:data:`DEFAULTS` is the one place the request's defaults are written (steps, cfg,
sampler, scheduler, size, img2img strength...); the bot's parser, its settings and the
command line read them from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

MAX_SEED = 2**64 - 1  # ComfyUI's seed range


@dataclass(frozen=True)
class RequestDefaults:
    """The values a :class:`GenerationRequest` takes when nobody names them."""

    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    batch_size: int = 1
    strength: float = 0.75
    """img2img denoise (ComfyUI's ``denoise``): how much of the init image is redrawn."""
    negative: str = ""
    filename_prefix: str = "easel"


DEFAULTS = RequestDefaults()
"""The request defaults; read them, never write the numbers again."""


class LoraRef(BaseModel):
    """A LoRA by name with its strengths for the UNet and the text encoder."""

    name: str = Field(min_length=1)
    strength_model: float = Field(default=1.0, ge=-100, le=100)
    strength_clip: float | None = Field(default=None, ge=-100, le=100)

    @property
    def clip_strength(self) -> float:
        """The text-encoder strength: ``strength_clip``, else the UNet's."""
        return self.strength_model if self.strength_clip is None else self.strength_clip

    @property
    def weight(self) -> float | None:
        """The UNet strength the request asked for; None when it did not set one (the
        bot then uses the LoRA's own default weight)."""
        return self.strength_model if "strength_model" in self.model_fields_set else None


class GenerationRequest(BaseModel):
    """Everything a person can ask for in one generation."""

    prompt: str = Field(min_length=0, max_length=8000)
    negative: str = Field(default=DEFAULTS.negative, max_length=8000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int = Field(default=DEFAULTS.steps, ge=1, le=10000)
    cfg: float = Field(default=DEFAULTS.cfg, ge=0.0, le=100.0)
    sampler: str = DEFAULTS.sampler
    scheduler: str = DEFAULTS.scheduler
    width: int = Field(default=DEFAULTS.width, ge=16, le=16384)
    height: int = Field(default=DEFAULTS.height, ge=16, le=16384)
    batch_size: int = Field(default=DEFAULTS.batch_size, ge=1, le=4096)
    loras: list[LoraRef] = Field(default_factory=list)
    init_image: str | None = None
    strength: float = Field(default=DEFAULTS.strength, ge=0.0, le=1.0)
    model: str | None = None
    template: str | None = None
    filename_prefix: str = DEFAULTS.filename_prefix
    best_of: int | None = Field(default=None, ge=1, le=4096)
    """Best of N: make this many candidates in one batch, rank them with the CLIP model
    ``best_of_clip`` against the prompt and keep the best ``batch_size`` (see
    :func:`rank_with_clip`). None: no ranking, ``batch_size`` images are made."""
    best_of_clip: str | None = None
    """The CLIP image-text model (``CLIPImageTextRank``'s ``clip_name``) that ranks."""

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_tuples(cls, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for item in value:
                if isinstance(item, (tuple, list)) and len(item) == 2:
                    out.append({"name": item[0], "strength_model": item[1]})
                else:
                    out.append(item)
            return out
        return value

    @model_validator(mode="after")
    def _best_of_fits(self) -> GenerationRequest:
        if self.best_of is not None and self.batch_size > self.best_of:
            raise ValueError(
                f"keeping {self.batch_size} images of best_of {self.best_of} candidates is "
                "more than were made"
            )
        return self

    def with_seed(self) -> GenerationRequest:
        """This request with a concrete seed (a random one when none was given)."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": random.randint(0, 2**32 - 1)})

    @property
    def template_name(self) -> str:
        """The template asked for, else img2img with an init image, else txt2img."""
        return self.template or ("img2img" if self.init_image else "txt2img")


@dataclass(frozen=True)
class WorkflowTemplate:
    """A named recipe from a request to a workflow (API format)."""

    name: str
    description: str
    build: Callable[[GenerationRequest, str], dict[str, Any]]
    """``build(request, default_model)`` returns the workflow; raise TemplateError on bad options."""
    plugin: str = ""


RANK_NODE = "CLIPImageTextRank"
"""The node that ranks a batch of images against a text (plugin ``plugins.clip_score``)."""

SAVE_NODES = ("SaveImage",)


def _next_id(workflow: dict[str, Any]) -> str:
    numbers = [int(k) for k in workflow if str(k).isdigit()]
    return str(max(numbers, default=0) + 1)


def rank_with_clip(
    build: Callable[[GenerationRequest], dict[str, Any]], request: GenerationRequest
) -> dict[str, Any]:
    """The workflow for ``request``, made best of N when ``request.best_of`` is set.

    ``build(request)`` (a template's) makes ``best_of`` images in one batch; each
    ``SaveImage`` then saves what a ``CLIPImageTextRank`` node keeps of its images: the
    ``batch_size`` best by CLIP score against the prompt (CLIPScore, Hessel et al. 2021),
    best first. The rank node reports every candidate's score among the job's outputs.
    Any template works that feeds its images to a SaveImage. Raises
    :class:`~runner.errors.TemplateError` without a CLIP model or without a SaveImage.
    """
    if request.best_of is None:
        return build(request)
    from runner.errors import TemplateError

    if not request.best_of_clip:
        raise TemplateError("best_of needs a CLIP model to rank with (best_of_clip)")
    workflow = build(request.model_copy(update={"batch_size": request.best_of}))
    ranked: dict[str, str] = {}
    for node in list(workflow.values()):
        if not isinstance(node, dict) or node.get("class_type") not in SAVE_NODES:
            continue
        images = (node.get("inputs") or {}).get("images")
        if not (isinstance(images, list) and len(images) == 2):
            continue
        source = f"{images[0]}:{images[1]}"
        if source not in ranked:
            ranked[source] = _next_id(workflow)
            workflow[ranked[source]] = {
                "class_type": RANK_NODE,
                "inputs": {
                    "images": list(images),
                    "text": request.prompt,
                    "clip_name": request.best_of_clip,
                    "top_k": request.batch_size,
                },
            }
        node["inputs"]["images"] = [ranked[source], 0]
    if not ranked:
        raise TemplateError("best_of needs a workflow whose images go to a SaveImage node")
    return workflow
