"""Requests and workflow templates: how ``/imagine`` options become a workflow.

Slash commands and the command line never build graphs by hand: they fill a
:class:`GenerationRequest` and a :class:`WorkflowTemplate` (from a plugin) turns it into
a workflow in ComfyUI's API format.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator

MAX_SEED = 2**64 - 1  # ComfyUI's seed range


class LoraRef(BaseModel):
    """A LoRA by name with its strengths for the UNet and the text encoder."""

    name: str = Field(min_length=1)
    strength_model: float = Field(default=1.0, ge=-100, le=100)
    strength_clip: float | None = Field(default=None, ge=-100, le=100)

    @property
    def clip_strength(self) -> float:
        return self.strength_model if self.strength_clip is None else self.strength_clip


class GenerationRequest(BaseModel):
    """Everything a person can ask for in one generation."""

    prompt: str = Field(min_length=0, max_length=8000)
    negative: str = Field(default="", max_length=8000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int = Field(default=20, ge=1, le=10000)
    cfg: float = Field(default=7.0, ge=0.0, le=100.0)
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = Field(default=512, ge=16, le=16384)
    height: int = Field(default=512, ge=16, le=16384)
    batch_size: int = Field(default=1, ge=1, le=4096)
    loras: list[LoraRef] = Field(default_factory=list)
    init_image: str | None = None
    strength: float = Field(default=0.75, ge=0.0, le=1.0)
    model: str | None = None
    template: str | None = None
    filename_prefix: str = "easel"

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
