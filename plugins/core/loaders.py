"""ComfyUI's loader nodes: CheckpointLoaderSimple, CheckpointLoader, VAELoader, LoraLoader,
LoraLoaderModelOnly, CLIPLoader and DualCLIPLoader.

A checkpoint loads once (diffusers folder, single .safetensors or .ckpt file, or the
built-in tiny-random) and stays in the model manager's cache; its MODEL, CLIP and VAE
outputs are handles onto it (:mod:`runner.handles`). A standalone VAE or text encoder is
a small checkpoint of its own in the same cache (:meth:`ModelManager.vae`), so the nodes
that take a VAE or CLIP use it unchanged.
"""

from __future__ import annotations

from runner import ClipHandle, Input, ModelHandle, NodeContext, VaeHandle, hookimpl, node
from runner import types as T


def _checkpoint_names(env) -> list[str]:
    return env.models.checkpoint_names()


def _check_checkpoint(name: str, env) -> str | None:
    return env.models.check_checkpoint_name(name)


def _check_lora(name: str, env) -> str | None:
    try:
        env.models.lora_path(name)
    except Exception as exc:
        return str(exc)
    return None


@node(
    "CheckpointLoaderSimple",
    inputs=[Input("ckpt_name", T.COMBO, choices=_checkpoint_names, check=_check_checkpoint)],
    outputs=(T.MODEL, T.CLIP, T.VAE),
    output_names=("MODEL", "CLIP", "VAE"),
    category="loaders",
)
def checkpoint_loader(ctx: NodeContext, ckpt_name: str):
    """Loads a checkpoint (diffusers folder, single .safetensors file, tiny-random) and gives its
    model, text encoder and VAE."""
    checkpoint = ctx.env.models.checkpoint(ckpt_name)
    return ModelHandle(checkpoint), ClipHandle(checkpoint), VaeHandle(checkpoint)


def _stamp(location) -> str:
    paths = location if isinstance(location, tuple) else (location,)
    parts = []
    for path in paths:
        probe = path / "config.json" if path.is_dir() else path
        stat = probe.stat()
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _vae_changed(ctx: NodeContext, vae_name: str, **_) -> str:
    return _stamp(ctx.env.models.vae_location(vae_name))


@node(
    "VAELoader",
    inputs=[
        Input(
            "vae_name",
            T.COMBO,
            choices=lambda env: env.models.vae_names(),
            check=lambda name, env: env.models.check_vae_name(name),
        )
    ],
    outputs=(T.VAE,),
    output_names=("VAE",),
    category="loaders",
    is_changed=_vae_changed,
)
def vae_loader(ctx: NodeContext, vae_name: str):
    """Loads a VAE from models/vae (original or diffusers layout, a file or a diffusers folder),
    or ComfyUI's taesd / taesdxl tiny autoencoders from models/vae_approx."""
    return (VaeHandle(ctx.env.models.vae(vae_name)),)


def _lora_changed(ctx: NodeContext, lora_name: str, **_) -> str:
    path = ctx.env.models.lora_path(lora_name)
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


@node(
    "LoraLoader",
    inputs=[
        Input("model", T.MODEL),
        Input("clip", T.CLIP),
        Input("lora_name", T.COMBO, choices=lambda env: env.models.lora_names(), check=_check_lora),
        Input("strength_model", T.FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
        Input("strength_clip", T.FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
    ],
    outputs=(T.MODEL, T.CLIP),
    category="loaders",
    is_changed=_lora_changed,
)
def lora_loader(
    ctx: NodeContext,
    model: ModelHandle,
    clip: ClipHandle,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
):
    """Applies a LoRA (diffusers or kohya/A1111 keys) to the model and the text encoder. Stackable;
    adapters stay loaded and are switched per job."""
    path = ctx.env.models.lora_path(lora_name)
    if model.checkpoint is not clip.checkpoint:
        raise ValueError("the model and clip inputs come from different checkpoints")
    new_model = (
        ModelHandle(model.checkpoint, model.loras + ((path, strength_model),))
        if strength_model
        else model
    )
    new_clip = (
        ClipHandle(clip.checkpoint, clip.loras + ((path, strength_clip),), clip.stop_at_layer)
        if strength_clip
        else clip
    )
    # Load now so that a broken LoRA fails here, naming this node, not in the sampler.
    ckpt = model.checkpoint
    with ckpt.lock:
        ckpt.activate_loras(unet=new_model.loras, text_encoder=new_clip.loras)
    return new_model, new_clip


@hookimpl
def easel_node_types():
    """ComfyUI's checkpoint and LoRA loaders."""
    return [checkpoint_loader, lora_loader, vae_loader]
