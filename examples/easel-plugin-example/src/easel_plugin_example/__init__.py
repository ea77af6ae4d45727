"""An example easel plugin: two post-processing nodes and a workflow template.

easel finds this module through the ``easel`` entry point in ``pyproject.toml`` and
registers the hook implementations below. Everything used here is ``runner``'s public API.
"""

from __future__ import annotations

from typing import Any

import torch

from runner import GenerationRequest, Input, TemplateError, WorkflowTemplate, hookimpl, node
from runner import types as T

__version__ = "0.1.0"


@node(
    "Vignette",
    inputs=[
        Input("image", T.IMAGE),
        Input("strength", T.FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
        # Optional: a workflow may leave it out and get 0.8 (a required input must be given).
        Input("radius", T.FLOAT, default=0.8, min=0.1, max=2.0, step=0.01, required=False),
    ],
    outputs=(T.IMAGE,),
    category="image/postprocessing",
)
def vignette(ctx, image: torch.Tensor, strength: float = 0.5, radius: float = 0.8):
    """Darkens the corners of an image: the centre is unchanged, the corners are darker by
    ``strength``; a larger ``radius`` keeps more of the image bright."""
    _, height, width, _ = image.shape
    ys = torch.linspace(-1.0, 1.0, height, dtype=image.dtype, device=image.device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=image.dtype, device=image.device)
    distance = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0**0.5)  # corners: 1
    falloff = torch.clamp(distance / radius, 0.0, 1.0) ** 2
    return (image * (1.0 - strength * falloff)[None, :, :, None],)


@node(
    "Posterize",
    inputs=[Input("image", T.IMAGE), Input("levels", T.INT, default=4, min=2, max=256)],
    outputs=(T.IMAGE,),
    category="image/postprocessing",
)
def posterize(ctx, image: torch.Tensor, levels: int = 4):
    """Reduces each colour channel to ``levels`` values."""
    steps = float(levels - 1)
    return (torch.round(image.clamp(0.0, 1.0) * steps) / steps,)


def build_vignette(request: GenerationRequest, default_model: str) -> dict[str, Any]:
    """txt2img with a vignette before saving (ComfyUI's default node ids, plus 30)."""
    if request.seed is None:
        raise TemplateError("the request has no seed; call request.with_seed() first")
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": request.model or default_model},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {
                "width": request.width,
                "height": request.height,
                "batch_size": request.batch_size,
            },
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": request.prompt, "clip": ["4", 1]}},
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": request.negative, "clip": ["4", 1]},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": request.seed,
                "steps": request.steps,
                "cfg": request.cfg,
                "sampler_name": request.sampler,
                "scheduler": request.scheduler,
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "30": {"class_type": "Vignette", "inputs": {"image": ["8", 0], "strength": 0.6}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": request.filename_prefix, "images": ["30", 0]},
        },
    }


@hookimpl
def easel_node_types():
    """The Vignette and Posterize nodes."""
    return [vignette, posterize]


@hookimpl
def easel_workflow_templates():
    """The ``vignette`` template: txt2img, then Vignette."""
    return [WorkflowTemplate("vignette", "Text to image with a vignette.", build_vignette)]
