"""ComfyUI's SaveLatent / LoadLatent (``.latent`` files) and LoadImageOutput.

A ``.latent`` file is ComfyUI's: safetensors with ``latent_tensor`` and an empty
``latent_format_version_0`` marker tensor. Version 0 holds the VAE's *raw* latents (what
ComfyUI's LATENT carries); files without the marker (ComfyUI's first format) hold latents
already multiplied by SD's 0.18215. easel's LATENT is in the UNet's scale (raw x the VAE's
scaling factor), so SaveLatent divides by the scale and LoadLatent multiplies.

A LATENT says which scale it is in: KSampler, KSamplerAdvanced, VAEEncode and
VAEEncodeTiled add ``latent_format`` (ComfyUI's latent format name: ``SD15`` for SD1/SD2,
``SDXL``) and ``latent_scale`` (the number: the VAE's scaling factor, or the family's for a
TAESD, which works on UNet-scale latents directly), and the latent nodes pass them on as
they pass every key they do not know (:func:`latent_tags`). SaveLatent uses
``latent_scale``, else ``latent_format``'s, else SD's 0.18215 (EmptyLatentImage's zeros
are the same in every scale), and writes both to the file's metadata
(``easel_latent_scale``, ``easel_latent_format``); LoadLatent reads them back (a file
without them, ComfyUI's, is SD's) and puts them on the LATENT, so a loaded SDXL latent
saves again unchanged. Loading reads tensors with the ``safetensors`` library only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from plugins.core.image import image_too_big
from runner import Input, Latent, NodeContext, hookimpl, node
from runner import types as T
from runner.files import safe_relative_path, write_atomic
from runner.output_files import NumberedNames, output_folder, prefix_problem

SD_LATENT_SCALE = 0.18215
VERSION_KEY = "latent_format_version_0"
LATENT_FORMATS = {"SD15": SD_LATENT_SCALE, "SDXL": 0.13025}
"""ComfyUI's latent format names -> their scale factor."""


def latent_tags(family: str, scale: float | None = None) -> dict:
    """``{"latent_format": ..., "latent_scale": ...}`` for a LATENT of a model of ``family``
    (``sdxl``: SDXL, every other SD family: SD15); ``scale`` overrides the number (a VAE's
    own scaling factor)."""
    name = "SDXL" if family == "sdxl" else "SD15"
    if scale is not None:  # a VAE's own factor names its format where it is a known one
        name = next((n for n, v in LATENT_FORMATS.items() if abs(v - scale) < 1e-7), name)
    return {"latent_format": name, "latent_scale": float(scale or LATENT_FORMATS[name])}


def _scale_of(samples: dict) -> float:
    if "latent_scale" in samples:
        return float(samples["latent_scale"])
    return LATENT_FORMATS.get(str(samples.get("latent_format")), SD_LATENT_SCALE)


def _check_prefix(filename_prefix: str, env) -> str | None:
    return prefix_problem(filename_prefix, env.settings.output_dir)


@node(
    "SaveLatent",
    inputs=[
        Input("samples", T.LATENT),
        Input("filename_prefix", T.STRING, default="latents/ComfyUI", check=_check_prefix),
    ],
    outputs=(),
    output_node=True,
    category="_for_testing",
)
def save_latent(ctx: NodeContext, samples: Latent, filename_prefix: str):
    """Saves latents as a ComfyUI ``.latent`` file in the output folder."""
    from safetensors.torch import save

    folder = ctx.env.settings.output_dir
    problem = prefix_problem(filename_prefix, folder)
    if problem:
        raise ValueError(problem)
    target, sub, stem = output_folder(folder, filename_prefix)
    scale = _scale_of(samples)
    raw = (samples["samples"].float() / scale).contiguous()
    data = save(
        {"latent_tensor": raw, VERSION_KEY: torch.tensor([])},
        metadata={
            "easel_latent_scale": repr(scale),
            "easel_latent_format": str(samples.get("latent_format", "SD15")),
        },
    )
    path = NumberedNames(target, stem, ".latent").claim(stem)
    write_atomic(path, data)
    result = {"filename": path.name, "subfolder": sub, "type": "output", "path": str(path)}
    return {"ui": {"latents": [result]}, "result": ()}


def latent_names(env) -> list[str]:
    """``.latent`` files in the input folder (LoadLatent's choices, as ComfyUI lists them)."""
    base = env.settings.input_dir
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_file() and p.suffix == ".latent")


def latent_path(env, name: str) -> Path:
    """The file of a ``.latent`` name in the input folder; ValueError naming it otherwise."""
    rel = safe_relative_path(name, what="latent name", folder="the input folder")
    path = env.settings.input_dir / rel
    if path.suffix != ".latent" or not path.is_file():
        available = ", ".join(latent_names(env)) or "(none)"
        raise ValueError(
            f"no latent file named {name!r} in the input folder; available: {available}"
        )
    return path


def _check_latent(name: str, env) -> str | None:
    try:
        latent_path(env, name)
    except ValueError as exc:
        return str(exc)
    return None


def _latent_changed(ctx: NodeContext, latent: str, **_) -> str:
    return hashlib.sha256(latent_path(ctx.env, latent).read_bytes()).hexdigest()


@node(
    "LoadLatent",
    inputs=[Input("latent", T.COMBO, choices=latent_names, check=_check_latent)],
    outputs=(T.LATENT,),
    category="_for_testing",
    is_changed=_latent_changed,
)
def load_latent(ctx: NodeContext, latent: str):
    """Loads a ComfyUI ``.latent`` file from the input folder."""
    from safetensors import SafetensorError, safe_open

    path = latent_path(ctx.env, latent)
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            metadata = fh.metadata() or {}
            if "latent_tensor" not in keys:
                raise ValueError(f"{latent!r} is not a .latent file: no latent_tensor in it")
            tensor = fh.get_tensor("latent_tensor").float()
    except SafetensorError as exc:
        raise ValueError(f"{latent!r} is not a .latent (safetensors) file: {exc}") from None
    if tensor.ndim != 4:
        raise ValueError(f"{latent!r}: latent_tensor has shape {list(tensor.shape)}, not 4-D")
    scale = float(metadata.get("easel_latent_scale", SD_LATENT_SCALE))
    name = metadata.get("easel_latent_format", "SD15")
    if VERSION_KEY in keys:
        samples = tensor * scale
    else:  # ComfyUI's first format: already multiplied by SD's scale
        samples, scale, name = tensor, SD_LATENT_SCALE, "SD15"
    return ({"samples": samples, "latent_format": name, "latent_scale": scale},)


OUTPUT_ANNOTATION = " [output]"


def output_image_names(env) -> list[str]:
    """Images in the output folder, as ComfyUI's LoadImageOutput lists them."""
    from plugins.core.image import IMAGE_SUFFIXES

    base = env.settings.output_dir
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(base).as_posix() + OUTPUT_ANNOTATION
        for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def output_image_path(env, name: str) -> Path:
    """The file of an output image name (``x.png`` or ``x.png [output]``)."""
    bare = name.removesuffix(OUTPUT_ANNOTATION)
    rel = safe_relative_path(bare, what="image name", folder="the output folder")
    base = env.settings.output_dir.resolve()
    path = (base / rel).resolve()
    if base not in path.parents:
        raise ValueError(f"image name {name!r} points outside the output folder")
    if not path.is_file():
        raise ValueError(f"no image named {name!r} in the output folder")
    return path


def _check_output_image(name: str, env) -> str | None:
    try:
        return image_too_big(output_image_path(env, name), name, env.settings)
    except ValueError as exc:
        return str(exc)


@node(
    "LoadImageOutput",
    inputs=[Input("image", T.COMBO, choices=output_image_names, check=_check_output_image)],
    outputs=(T.IMAGE, T.MASK),
    output_names=("IMAGE", "MASK"),
    category="image",
    is_changed=lambda ctx, image, **_: hashlib.sha256(
        output_image_path(ctx.env, image).read_bytes()
    ).hexdigest(),
)
def load_image_output(ctx: NodeContext, image: str):
    """Loads an image from the output folder (a result of an earlier run)."""
    from runner.images import open_image, pil_to_tensor

    path = output_image_path(ctx.env, image)
    problem = image_too_big(path, image, ctx.env.settings)
    if problem:
        raise ValueError(problem)
    pil = open_image(path, max_bytes=int(ctx.env.settings.max_upload_mb * 1024 * 1024))
    return pil_to_tensor(pil)


@hookimpl
def easel_node_types():
    """ComfyUI's SaveLatent, LoadLatent and LoadImageOutput."""
    return [save_latent, load_latent, load_image_output]
