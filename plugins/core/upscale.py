"""ComfyUI's UpscaleModelLoader and ImageUpscaleWithModel: ESRGAN-family upscalers from
``models/upscale_models`` (:mod:`runner.models.upscalers`), applied in tiles."""

from __future__ import annotations

from dataclasses import dataclass

from runner import Input, NodeContext, hookimpl, node
from runner import types as T
from runner.models.checkpoint import Checkpoint

UPSCALE_MODEL = "UPSCALE_MODEL"


@dataclass(frozen=True)
class UpscaleModelHandle:
    """UPSCALE_MODEL: a loaded upscaler (``checkpoint.pipe.model``) in the model cache."""

    checkpoint: Checkpoint

    @property
    def scale(self) -> int:
        return self.checkpoint.pipe.model.scale


def _check_name(name: str, env) -> str | None:
    try:
        env.models.upscale_model_path(name)
    except Exception as exc:
        return str(exc)
    return None


def _changed(ctx: NodeContext, model_name: str, **_) -> str:
    path = ctx.env.models.upscale_model_path(model_name)
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


@node(
    "UpscaleModelLoader",
    inputs=[
        Input(
            "model_name",
            T.COMBO,
            choices=lambda env: env.models.upscale_model_names(),
            check=_check_name,
        )
    ],
    outputs=(UPSCALE_MODEL,),
    output_names=("UPSCALE_MODEL",),
    category="loaders",
    is_changed=_changed,
)
def upscale_model_loader(ctx: NodeContext, model_name: str):
    """Loads an ESRGAN-family upscale model (ESRGAN, Real-ESRGAN, BSRGAN...) from
    models/upscale_models."""
    return (UpscaleModelHandle(ctx.env.models.upscale_model(model_name)),)


@node(
    "ImageUpscaleWithModel",
    inputs=[Input("upscale_model", UPSCALE_MODEL), Input("image", T.IMAGE)],
    outputs=(T.IMAGE,),
    output_names=("IMAGE",),
    category="image/upscaling",
)
def image_upscale_with_model(ctx: NodeContext, upscale_model: UpscaleModelHandle, image):
    """Upscales images with the model, in 512 px tiles overlapping by 32 px (smaller tiles
    if memory runs out), so large images fit in memory."""
    from runner.models.upscalers import upscale_image

    settings = ctx.env.settings
    height, width = image.shape[1] * upscale_model.scale, image.shape[2] * upscale_model.scale
    if width > settings.max_width * 4 or height > settings.max_height * 4:
        raise ValueError(
            f"upscaling to {width}x{height} px exceeds four times the configured limit "
            f"{settings.max_width}x{settings.max_height} (max_width x max_height)"
        )
    ckpt = upscale_model.checkpoint
    with ckpt.lock:
        out = upscale_image(ckpt.pipe.model, image, device=ckpt.device)
    return (out,)


@hookimpl
def easel_node_types():
    """ComfyUI's upscale-model nodes."""
    return [upscale_model_loader, image_upscale_with_model]
