"""The built-in workflow templates: txt2img and img2img.

Each builds a workflow in ComfyUI's API format from a :class:`GenerationRequest`; the
node ids follow ComfyUI's default workflow (3 KSampler, 4 checkpoint, 5 latent, 6/7
prompts, 8 decode, 9 save) so people who know ComfyUI can read them.
"""

from __future__ import annotations

from typing import Any

from runner import GenerationRequest, TemplateError, WorkflowTemplate, hookimpl


def _base(request: GenerationRequest, default_model: str) -> tuple[dict[str, Any], list, list]:
    if request.seed is None:
        raise TemplateError("the request has no seed; call request.with_seed() first")
    workflow: dict[str, Any] = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": request.model or default_model},
        },
    }
    model, clip = ["4", 0], ["4", 1]
    for i, lora in enumerate(request.loras):
        node_id = f"{20 + i}"
        workflow[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora.name,
                "strength_model": lora.strength_model,
                "strength_clip": lora.clip_strength,
            },
        }
        model, clip = [node_id, 0], [node_id, 1]
    workflow["6"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": request.prompt, "clip": clip},
    }
    workflow["7"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": request.negative, "clip": clip},
    }
    return workflow, model, clip


def _sampler(
    request: GenerationRequest, model: list, latent: list, denoise: float
) -> dict[str, Any]:
    return {
        "class_type": "KSampler",
        "inputs": {
            "seed": request.seed,
            "steps": request.steps,
            "cfg": request.cfg,
            "sampler_name": request.sampler,
            "scheduler": request.scheduler,
            "denoise": denoise,
            "model": model,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": latent,
        },
    }


def _finish(workflow: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
    workflow["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    workflow["9"] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": request.filename_prefix, "images": ["8", 0]},
    }
    return workflow


def build_txt2img(request: GenerationRequest, default_model: str) -> dict[str, Any]:
    """Text to image: empty latent of the requested size and batch, sampled from noise."""
    workflow, model, _ = _base(request, default_model)
    workflow["5"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {
            "width": request.width,
            "height": request.height,
            "batch_size": request.batch_size,
        },
    }
    workflow["3"] = _sampler(request, model, ["5", 0], 1.0)
    return _finish(workflow, request)


def build_img2img(request: GenerationRequest, default_model: str) -> dict[str, Any]:
    """Image to image: the init image scaled to the requested size, encoded, and sampled with
    ``denoise = strength`` (ComfyUI's semantics: ``steps`` steps always run)."""
    if not request.init_image:
        raise TemplateError("img2img needs an init image")
    if request.strength <= 0:
        raise TemplateError(f"img2img strength must be above 0, got {request.strength}")
    workflow, model, _ = _base(request, default_model)
    workflow["10"] = {"class_type": "LoadImage", "inputs": {"image": request.init_image}}
    workflow["11"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["10", 0],
            "upscale_method": "bicubic",
            "width": request.width,
            "height": request.height,
            "crop": "center",
        },
    }
    workflow["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    if request.batch_size > 1:
        workflow["13"] = {
            "class_type": "RepeatLatentBatch",
            "inputs": {"samples": ["12", 0], "amount": request.batch_size},
        }
        latent = ["13", 0]
    else:
        latent = ["12", 0]
    workflow["3"] = _sampler(request, model, latent, request.strength)
    return _finish(workflow, request)


TEMPLATES = [
    WorkflowTemplate("txt2img", "Text to image.", build_txt2img),
    WorkflowTemplate("img2img", "Image to image from an init image and a strength.", build_img2img),
]


@hookimpl
def easel_workflow_templates():
    """The txt2img and img2img templates."""
    return TEMPLATES
