"""ComfyUI's loader nodes: CheckpointLoaderSimple, CheckpointLoader, VAELoader, LoraLoader,
LoraLoaderModelOnly, CLIPLoader and DualCLIPLoader.

A checkpoint loads once (diffusers folder, single .safetensors or .ckpt file, or the
built-in tiny-random) and stays in the model manager's cache; its MODEL, CLIP and VAE
outputs are handles onto it (:mod:`runner.handles`). A standalone VAE or text encoder is
a small checkpoint of its own in the same cache (:meth:`ModelManager.vae`), so the nodes
that take a VAE or CLIP use it unchanged.
"""

from __future__ import annotations

import dataclasses

from runner import ClipHandle, Input, ModelHandle, NodeContext, VaeHandle, hookimpl, node
from runner import types as T
from runner.models import text_encoders


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


BUILTIN_CONFIGS: dict[str, dict] = {
    "v1-inference.yaml": {},
    "v1-inference_fp16.yaml": {},
    "v1-inference_clip_skip_2.yaml": {"layer_idx": -2},
    "v1-inference_clip_skip_2_fp16.yaml": {"layer_idx": -2},
    "anything_v3.yaml": {"layer_idx": -2},
    "v2-inference.yaml": {},
    "v2-inference_fp32.yaml": {},
    "v2-inference-v.yaml": {"parameterization": "v"},
    "v2-inference-v_fp32.yaml": {"parameterization": "v"},
}
"""The configs ComfyUI ships in ``models/configs`` and what CheckpointLoader reads from
them, for installs that lack the files: ``parameterization`` (``v``: v-prediction) and the
text encoder's ``layer_idx`` (clip skip)."""


def _config_names(env) -> list[str]:
    found = env.models.names_of("configs", suffixes=(".yaml",))
    return list(dict.fromkeys([*found, *BUILTIN_CONFIGS]))


def read_config_options(env, config_name: str) -> dict:
    """``{"parameterization": ..., "layer_idx": ...}`` from an original (LDM) inference
    config in ``models/configs`` (or the built-in table for ComfyUI's stock names)."""
    import yaml

    from runner.models.listing import safe_relative_name

    rel = safe_relative_name(config_name)
    for folder in env.models.folders("configs"):
        path = folder / rel
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                params = (data.get("model") or {}).get("params") or {}
            except (OSError, yaml.YAMLError, AttributeError) as exc:
                raise ValueError(f"config {config_name!r} ({path}) cannot be read: {exc}") from exc
            cond = ((params.get("cond_stage_config") or {}).get("params")) or {}
            out = {}
            if params.get("parameterization"):
                out["parameterization"] = str(params["parameterization"])
            if cond.get("layer") == "hidden" and "layer_idx" in cond:
                out["layer_idx"] = int(cond["layer_idx"])
            return out
    if config_name in BUILTIN_CONFIGS:
        return dict(BUILTIN_CONFIGS[config_name])
    raise ValueError(
        f"no config named {config_name!r} in models/configs; available: "
        f"{', '.join(_config_names(env))}"
    )


def _check_config(name: str, env) -> str | None:
    try:
        read_config_options(env, name)
    except ValueError as exc:
        return str(exc)
    return None


@node(
    "CheckpointLoader",
    inputs=[
        Input("config_name", T.COMBO, choices=_config_names, check=_check_config),
        Input("ckpt_name", T.COMBO, choices=_checkpoint_names, check=_check_checkpoint),
    ],
    outputs=(T.MODEL, T.CLIP, T.VAE),
    output_names=("MODEL", "CLIP", "VAE"),
    category="advanced/loaders",
)
def checkpoint_loader_with_config(ctx: NodeContext, config_name: str, ckpt_name: str):
    """Loads a checkpoint with an original inference config (models/configs): its
    parameterization (v-prediction) and text encoder layer (clip skip) apply."""
    options = read_config_options(ctx.env, config_name)
    checkpoint = ctx.env.models.checkpoint(ckpt_name)
    prediction = "v_prediction" if options.get("parameterization") == "v" else None
    model = ModelHandle(checkpoint, prediction=prediction)
    clip = ClipHandle(checkpoint, stop_at_layer=options.get("layer_idx", -1))
    return model, clip, VaeHandle(checkpoint)


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


@node(
    "LoraLoaderModelOnly",
    inputs=[
        Input("model", T.MODEL),
        Input("lora_name", T.COMBO, choices=lambda env: env.models.lora_names(), check=_check_lora),
        Input("strength_model", T.FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
    ],
    outputs=(T.MODEL,),
    category="loaders",
    is_changed=_lora_changed,
)
def lora_loader_model_only(
    ctx: NodeContext, model: ModelHandle, lora_name: str, strength_model: float
):
    """Applies a LoRA to the model (UNet) only, leaving the text encoder as it is."""
    if not strength_model:
        return (model,)
    path = ctx.env.models.lora_path(lora_name)
    new_model = dataclasses.replace(model, loras=model.loras + ((path, strength_model),))
    ckpt = model.checkpoint
    with ckpt.lock:  # load now, so that a broken LoRA fails here, naming this node
        ckpt.activate_loras(unet=new_model.loras, text_encoder=())
    return (new_model,)


def _text_encoder_names(env) -> list[str]:
    return env.models.text_encoder_names()


def _check_text_encoder(name: str, env) -> str | None:
    return env.models.check_text_encoder_name(name)


def _type_check(supported: tuple[str, ...], choices: tuple[str, ...], node_name: str):
    def check(value: str, env) -> str | None:
        try:
            text_encoders.check_type(value, supported, choices, node_name)
        except ValueError as exc:
            return str(exc)
        return None

    return check


def _text_encoders_changed(ctx: NodeContext, **literals) -> str:
    parts = []
    for key in ("clip_name", "clip_name1", "clip_name2"):
        if key in literals:
            path = ctx.env.models.text_encoder_path(literals[key])
            stat = path.stat()
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


_DEVICE = Input("device", T.COMBO, default="default", choices=("default", "cpu"), required=False)


def _check_device(ctx: NodeContext, device: str) -> None:
    if device == "cpu" and ctx.env.models.device.type != "cpu":
        ctx.warn(
            "device 'cpu' is not honoured: easel keeps text encoders on the device the "
            f"models run on ({ctx.env.models.device})"
        )


@node(
    "CLIPLoader",
    inputs=[
        Input("clip_name", T.COMBO, choices=_text_encoder_names, check=_check_text_encoder),
        Input(
            "type",
            T.COMBO,
            choices=text_encoders.CLIP_LOADER_TYPES,
            check=_type_check(
                text_encoders.SUPPORTED_SINGLE, text_encoders.CLIP_LOADER_TYPES, "CLIPLoader"
            ),
        ),
        _DEVICE,
    ],
    outputs=(T.CLIP,),
    output_names=("CLIP",),
    category="advanced/loaders",
    is_changed=_text_encoders_changed,
)
def clip_loader(ctx: NodeContext, clip_name: str, type: str, device: str = "default"):
    """Loads a text encoder file from models/text_encoders (or models/clip): SD1's CLIP-L,
    SD2's OpenCLIP-H or the SDXL refiner's OpenCLIP-G (type stable_diffusion)."""
    text_encoders.check_type(
        type, text_encoders.SUPPORTED_SINGLE, text_encoders.CLIP_LOADER_TYPES, "CLIPLoader"
    )
    _check_device(ctx, device)
    return (ClipHandle(ctx.env.models.text_encoders((clip_name,))),)


@node(
    "DualCLIPLoader",
    inputs=[
        Input("clip_name1", T.COMBO, choices=_text_encoder_names, check=_check_text_encoder),
        Input("clip_name2", T.COMBO, choices=_text_encoder_names, check=_check_text_encoder),
        Input(
            "type",
            T.COMBO,
            choices=text_encoders.DUAL_CLIP_LOADER_TYPES,
            check=_type_check(
                text_encoders.SUPPORTED_DUAL,
                text_encoders.DUAL_CLIP_LOADER_TYPES,
                "DualCLIPLoader",
            ),
        ),
        _DEVICE,
    ],
    outputs=(T.CLIP,),
    output_names=("CLIP",),
    category="advanced/loaders",
    is_changed=_text_encoders_changed,
)
def dual_clip_loader(
    ctx: NodeContext, clip_name1: str, clip_name2: str, type: str, device: str = "default"
):
    """Loads SDXL's two text encoders (CLIP-L and OpenCLIP-G, in either order) from
    models/text_encoders as one CLIP (type sdxl)."""
    text_encoders.check_type(
        type, text_encoders.SUPPORTED_DUAL, text_encoders.DUAL_CLIP_LOADER_TYPES, "DualCLIPLoader"
    )
    _check_device(ctx, device)
    return (ClipHandle(ctx.env.models.text_encoders((clip_name1, clip_name2))),)


@hookimpl
def easel_node_types():
    """ComfyUI's checkpoint, LoRA, VAE and text encoder loaders."""
    return [
        checkpoint_loader,
        checkpoint_loader_with_config,
        clip_loader,
        dual_clip_loader,
        lora_loader,
        lora_loader_model_only,
        vae_loader,
    ]
