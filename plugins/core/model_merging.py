"""ComfyUI's model merging nodes (``comfy_extras/nodes_model_merging.py``): ModelMergeSimple,
ModelMergeBlocks, ModelMergeAdd, ModelMergeSubtract, CLIPMergeSimple and CheckpointSave.

Merges make new weights (:mod:`runner.models.merging`: the formulas, LoRAs applied first,
memory and cache keys); CheckpointSave writes one ``.safetensors`` file in the original SD
key layout (:mod:`runner.models.original_layout`) that easel's single-file loader and
ComfyUI read back.
"""

from __future__ import annotations

import json

import torch

from runner import ClipHandle, Input, ModelHandle, NodeContext, VaeHandle, hookimpl, node
from runner import types as T
from runner.models import merging
from runner.models.checkpoint import Checkpoint
from runner.output_files import NumberedNames, output_folder, prefix_problem

_RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}


def _unet_weights(model: ModelHandle) -> dict[str, torch.Tensor]:
    ckpt = model.checkpoint
    with ckpt.lock:
        ckpt.activate_loras(unet=model.loras, text_encoder=())
        return merging.effective_state_dict(ckpt.pipe.unet)


def _text_weights(clip: ClipHandle) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = clip.checkpoint
    with ckpt.lock:
        ckpt.activate_loras(unet=(), text_encoder=clip.loras)
        return {
            name: merging.effective_state_dict(module)
            for name in merging.TEXT_ENCODER_NAMES
            if (module := getattr(ckpt.pipe, name, None)) is not None
        }


def _key(node_name: str, handles, numbers) -> str:
    parts = [f"{h.checkpoint.name}{[(str(p), s) for p, s in h.loras]}" for h in handles]
    return f"merge:{node_name}:{'|'.join(parts)}:{numbers}"


def _add_merged(models, key: str, pipe, node_name: str, first, second, modules) -> Checkpoint:
    """The merged ``pipe`` kept in the model cache under ``key``, on ``first``'s device and
    dtype, its size that of the new ``modules``."""
    return models.add_derived(
        key,
        Checkpoint(
            name=key,
            family=first.family,
            pipe=pipe,
            device=first.device,
            dtype=first.dtype,
            source=f"{node_name} of {first.name} and {second.name}",
            size_bytes=merging.module_bytes(*modules),
        ),
    )


def _merge_models(ctx: NodeContext, node_name: str, model1, model2, coefficients, numbers):
    first, second = model1.checkpoint, model2.checkpoint
    merging.check_same_family(first, second, node_name)
    key = _key(node_name, (model1, model2), numbers)
    models = ctx.env.models
    cached = models.derived(key)
    if cached is None:
        state = merging.merge_state_dicts(
            _unet_weights(model1), _unet_weights(model2), coefficients(first), what="model"
        )
        unet = merging.new_module_like(first.pipe.unet, state)
        pipe = merging.derived_pipe(
            first.pipe,
            unet=unet,
            **{n: None for n in merging.TEXT_ENCODER_NAMES if n in first.pipe.components},
        )
        cached = _add_merged(models, key, pipe, node_name, first, second, (unet,))
    return (ModelHandle(cached, (), model1.prediction, model1.zsnr),)


def _simple(ratio):
    return lambda ckpt: lambda key: (ratio, 1.0 - ratio)


@node(
    "ModelMergeSimple",
    inputs=[
        Input("model1", T.MODEL),
        Input("model2", T.MODEL),
        Input("ratio", T.FLOAT, **_RATIO),
    ],
    outputs=(T.MODEL,),
    category="advanced/model_merging",
)
def model_merge_simple(ctx: NodeContext, model1, model2, ratio: float):
    """Blends two models' UNets: ratio * model1 + (1 - ratio) * model2 (1 keeps model1);
    LoRAs on either input are applied first."""
    return _merge_models(ctx, "ModelMergeSimple", model1, model2, _simple(ratio), (ratio,))


@node(
    "ModelMergeBlocks",
    inputs=[
        Input("model1", T.MODEL),
        Input("model2", T.MODEL),
        Input("input", T.FLOAT, **_RATIO),
        Input("middle", T.FLOAT, **_RATIO),
        Input("out", T.FLOAT, **_RATIO),
    ],
    outputs=(T.MODEL,),
    category="advanced/model_merging",
)
def model_merge_blocks(ctx: NodeContext, model1, model2, input: float, middle: float, out: float):
    """Blends two UNets with one ratio per part: input blocks, middle block and output
    blocks (a key's part from its original-layout name; embeddings take input's)."""
    ratios = {"input": input, "middle": middle, "out": out}

    def coefficients(ckpt):
        return merging.block_coefficients(ckpt.pipe.unet.config, ratios)

    return _merge_models(
        ctx, "ModelMergeBlocks", model1, model2, coefficients, (input, middle, out)
    )


@node(
    "ModelMergeAdd",
    inputs=[Input("model1", T.MODEL), Input("model2", T.MODEL)],
    outputs=(T.MODEL,),
    category="advanced/model_merging",
)
def model_merge_add(ctx: NodeContext, model1, model2):
    """Adds model2's UNet weights to model1's (model1 + model2)."""
    return _merge_models(ctx, "ModelMergeAdd", model1, model2, lambda c: lambda k: (1.0, 1.0), ())


@node(
    "ModelMergeSubtract",
    inputs=[
        Input("model1", T.MODEL),
        Input("model2", T.MODEL),
        Input("multiplier", T.FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
    ],
    outputs=(T.MODEL,),
    category="advanced/model_merging",
)
def model_merge_subtract(ctx: NodeContext, model1, model2, multiplier: float):
    """Subtracts model2's UNet from model1's as ComfyUI does: multiplier * (model1 - model2)
    (at 1, model1 - model2: a difference to add to another model)."""
    m = float(multiplier)
    return _merge_models(
        ctx, "ModelMergeSubtract", model1, model2, lambda c: lambda k: (m, -m), (m,)
    )


@node(
    "CLIPMergeSimple",
    inputs=[Input("clip1", T.CLIP), Input("clip2", T.CLIP), Input("ratio", T.FLOAT, **_RATIO)],
    outputs=(T.CLIP,),
    category="advanced/model_merging",
)
def clip_merge_simple(ctx: NodeContext, clip1: ClipHandle, clip2: ClipHandle, ratio: float):
    """Blends two text encoders: ratio * clip1 + (1 - ratio) * clip2 (position ids and
    logit scale stay clip1's); LoRAs on either input are applied first."""
    first, second = clip1.checkpoint, clip2.checkpoint
    merging.check_same_family(first, second, "CLIPMergeSimple", "clip")
    key = _key("CLIPMergeSimple", (clip1, clip2), (ratio,))
    models = ctx.env.models
    cached = models.derived(key)
    if cached is None:
        weights1, weights2 = _text_weights(clip1), _text_weights(clip2)
        if set(weights1) != set(weights2):
            raise ValueError(
                f"CLIPMergeSimple: clip1 ({first.name}) has {sorted(weights1)} but clip2 "
                f"({second.name}) has {sorted(weights2)}"
            )
        new = {}
        for name, sd1 in weights1.items():
            state = merging.merge_state_dicts(
                sd1,
                weights2[name],
                lambda key: (ratio, 1.0 - ratio),
                skip=lambda key: key.endswith(merging.CLIP_SKIP_SUFFIXES),
                what="text encoder",
            )
            new[name] = merging.new_module_like(getattr(first.pipe, name), state)
        replace = {"unet": None} if "unet" in first.pipe.components else {}
        if "vae" in first.pipe.components:
            replace["vae"] = None
        pipe = merging.derived_pipe(first.pipe, **new, **replace)
        cached = _add_merged(
            models, key, pipe, "CLIPMergeSimple", first, second, tuple(new.values())
        )
    return (ClipHandle(cached, (), clip1.stop_at_layer),)


def _check_prefix(filename_prefix: str, env) -> str | None:
    return prefix_problem(filename_prefix, env.settings.output_dir)


def _metadata(ctx: NodeContext, model: ModelHandle) -> tuple[dict[str, str], dict]:
    """ComfyUI's CheckpointSave metadata (modelspec for SDXL, the prediction type, the
    workflow as ``prompt``) and marker tensors (``v_pred``, ``ztsnr``)."""
    ckpt = model.checkpoint
    metadata: dict[str, str] = {}
    if ckpt.family == "sdxl":
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-base"
        metadata["modelspec.sai_model_spec"] = "1.0.0"
        metadata["modelspec.implementation"] = "sgm"
    config = ckpt.pipe.scheduler.config
    prediction = model.prediction or config.get("prediction_type", "epsilon")
    extra = {}
    if prediction == "v_prediction":
        metadata["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
        if model.zsnr or config.get("rescale_betas_zero_snr"):
            extra["ztsnr"] = torch.tensor([])
    elif prediction == "epsilon":
        metadata["modelspec.predict_key"] = "epsilon"
    workflow = ctx.extra.get("workflow")
    if workflow is not None:
        metadata["prompt"] = json.dumps(workflow)
    return metadata, extra


@node(
    "CheckpointSave",
    inputs=[
        Input("model", T.MODEL),
        Input("clip", T.CLIP),
        Input("vae", T.VAE),
        Input("filename_prefix", T.STRING, default="checkpoints/ComfyUI", check=_check_prefix),
    ],
    outputs=(),
    output_node=True,
    category="advanced/model_merging",
)
def checkpoint_save(
    ctx: NodeContext, model: ModelHandle, clip: ClipHandle, vae: VaeHandle, filename_prefix: str
):
    """Saves model, clip and vae as one .safetensors checkpoint (original SD layout, LoRAs
    baked in) in the output folder, as <prefix>_00001_.safetensors."""
    from safetensors.torch import save

    from runner.files import write_atomic
    from runner.models.original_layout import checkpoint_state_dict

    family = model.checkpoint.family
    merging.check_same_family(model.checkpoint, clip.checkpoint, "CheckpointSave", "model/clip")
    vae_module = vae.checkpoint.pipe.vae
    if "Tiny" in type(vae_module).__name__:
        raise ValueError("CheckpointSave needs a full VAE (AutoencoderKL), not TAESD")
    folder = ctx.env.settings.output_dir
    problem = prefix_problem(filename_prefix, folder)
    if problem:
        raise ValueError(problem)
    texts = _text_weights(clip)
    order = [n for n in merging.TEXT_ENCODER_NAMES if n in texts]
    if family == "sdxl" and order != list(merging.TEXT_ENCODER_NAMES):
        raise ValueError(
            f"CheckpointSave: an SDXL checkpoint needs both text encoders; {clip.checkpoint.name} "
            f"has {order} (an SDXL refiner's CLIP cannot be saved as a base checkpoint)"
        )
    unet = model.checkpoint.pipe.unet
    with vae.checkpoint.lock:
        vae_sd = dict(vae_module.state_dict())
    state = checkpoint_state_dict(
        "sd1" if family == "sd1" else ("sdxl" if family == "sdxl" else "sd2"),
        unet=(_unet_weights(model), getattr(unet, "_orig_mod", unet).config),
        vae=(vae_sd, vae_module.config),
        text_encoders=[texts[n] for n in order],
    )
    metadata, extra = _metadata(ctx, model)
    state |= extra
    data = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata)
    target, sub, stem = output_folder(folder, filename_prefix)
    path = NumberedNames(target, stem, ".safetensors").claim(stem)
    write_atomic(path, data)
    result = {"filename": path.name, "subfolder": sub, "type": "output", "path": str(path)}
    return {"ui": {"checkpoints": [result]}, "result": ()}


@hookimpl
def easel_node_types():
    """ComfyUI's model merging nodes and CheckpointSave."""
    return [
        model_merge_simple,
        model_merge_blocks,
        model_merge_add,
        model_merge_subtract,
        clip_merge_simple,
        checkpoint_save,
    ]
