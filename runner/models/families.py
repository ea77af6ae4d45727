"""Model families, in one place: which family a checkpoint file, a diffusers folder, a
loaded pipeline or a LoRA is for, and each family's native image size.

=========  ==========  ================================================================
family     native      what it is
=========  ==========  ================================================================
``sd1``    512 x 512   Stable Diffusion 1.x (CLIP ViT-L text encoder, width 768)
``sd2``    512 x 512   SD 2.x base, epsilon prediction (OpenCLIP ViT-H, width 1024)
``sd2-v``  768 x 768   SD 2.x 768 px, v-prediction (same keys and shapes as ``sd2``)
``sdxl``   1024 x 1024 SDXL base (two text encoders, UNet size conditioning)
=========  ==========  ================================================================

A LoRA's family is one of ``sd1``, ``sd2``, ``sdxl`` (:func:`lora_family`: a LoRA for SD2
fits both SD2 variants).

**Checkpoint files** (:func:`family_of_keys`, header only; :func:`inspect_checkpoint` /
:func:`family_of_checkpoint` also settle SD2's prediction type). Refused, with a
:class:`~runner.errors.ModelError` naming the file: SDXL refiners, instruct-pix2pix (8
input channels), the x4 upscaler (7), class-label variants without an image encoder,
ControlNets, LoRAs /
LyCORIS and textual-inversion embeddings passed as a checkpoint, lone VAEs / UNets / text
encoders, diffusers-format component files, and other architectures (SD3, Flux, ...).
Inpainting models (9 UNet input channels: latent, mask, masked image) of each family load
like the others (:attr:`CheckpointInfo.unet_in_channels` says which). SD 2.1 unCLIP files
(an SD2 checkpoint with a UNet ``label_emb`` and its image encoder under
``embedder.model.visual.``, :func:`is_unclip_keys`) are ``sd2`` / ``sd2-v`` with
:attr:`CheckpointInfo.unclip` set.

**SD2 epsilon (512 px) or v-prediction (768 px)?** First match wins:

1. the header: safetensors metadata ``modelspec.prediction_type`` (``v`` / ``epsilon``) or
   ``modelspec.architecture`` (``stable-diffusion-v2-768-v``), kohya's
   ``ss_v_parameterization``, or a ``v_pred`` marker tensor (ComfyUI's convention);
2. an A1111-style ``<stem>.yaml`` next to the file with ``parameterization: "v"``;
3. ComfyUI's weight statistic: the standard deviation of the 320 values of
   ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` is above 0.09 in the v models
   (reads that one tensor, 1.3 KB);
4. otherwise ``sd2`` (epsilon).

A ``v_pred`` marker (and ``ztsnr`` for zero terminal SNR) on an SD1 or SDXL file keeps the
family and switches the scheduler's ``prediction_type`` to ``v_prediction``.

**Diffusers folders and pipelines** (:func:`family_of_folder`, :func:`family_of_pipeline`):
``sdxl`` when the pipeline class has ``XL`` in its name or there is a second text encoder;
``sd2`` when the text encoder is OpenCLIP (1024 wide, or GELU where CLIP ViT-L has quick
GELU), ``sd2-v`` when its scheduler predicts ``v_prediction``; else ``sd1``. (Before, the
model manager's folder rule missed the second text encoder and neither it nor the pipeline
rule knew ``sd2-v``; the LoRA library's folder rule, the most complete, is the one kept,
with ``sd2-v`` added as single files have it, and the activation so that a narrow SD2
finetune is still told apart.)

**SDXL refiners** (:func:`is_sdxl_refiner`, :func:`is_sdxl_refiner_folder`): family
``sdxl`` (same VAE, latent space and native size) with the refiner flag: only the
OpenCLIP-G text encoder (``text_encoder`` empty) and a UNet whose size conditioning is
``(height, width, crop_h, crop_w, aesthetic_score)`` (``requires_aesthetics_score``).
Loaded from a diffusers folder; the single-file refiner is still refused.

**LoRAs** (:func:`family_of_lora`): from tensor shapes (the UNet's cross-attention input
width, the text encoders' widths, a second text encoder), else the training metadata.

This module is over 400 lines on purpose: it is the one home of family knowledge (the
issue that made it asked for exactly one), and its four sources share the tables above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ModelError
from runner.files import SafetensorsHeader, read_safetensors_header
from runner.models import layout as L

FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sd2-v", "sdxl")
"""The checkpoint families easel loads."""

LORA_FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl")
"""Base model families a LoRA can be for."""

NATIVE_SIZES: dict[str, tuple[int, int]] = {
    "sd1": (512, 512),
    "sd2": (512, 512),
    "sd2-v": (768, 768),
    "sdxl": (1024, 1024),
}
"""``(width, height)`` each family was trained at."""

_SD2_V_STAT_THRESHOLD = 0.09

INPAINT_CHANNELS = 9
"""UNet input channels of an inpainting model: the noisy latent (4), the mask (1) and the
encoded masked image (4)."""


def unet_in_channels(shapes: Mapping[str, Sequence[int]]) -> int:
    """The UNet's input channels from a single file's header shapes (its first
    convolution's weight ``[out, in, 3, 3]``); 4 when the header does not say."""
    shape = tuple(shapes.get(L.UNET_IN, ()))
    return int(shape[1]) if len(shape) == 4 else 4


def native_size(family: str) -> tuple[int, int]:
    """``(width, height)`` that ``family`` was trained at. Raises ModelError for an
    unknown family."""
    try:
        return NATIVE_SIZES[family]
    except KeyError:
        raise ModelError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None


def lora_family(family: str) -> str:
    """A checkpoint family as a LoRA family: ``sd2-v`` (SD2 768 px) is ``sd2``."""
    return "sd2" if family.startswith("sd2") else family


# ------------------------------------------------------------------ checkpoint files


def header_prediction_type(
    keys: Sequence[str] | Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> str | None:
    """What the header says about the prediction type: ``"v_prediction"``, ``"epsilon"``,
    or ``None`` when it says nothing (see the module docstring for the signs read)."""
    metadata = metadata or {}
    pred = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if pred in {"v", "v_prediction", "v-prediction", "velocity"}:
        return "v_prediction"
    if pred in {"epsilon", "eps"}:
        return "epsilon"
    arch = str(metadata.get("modelspec.architecture", "")).strip().lower()
    if arch.endswith("-v") or "768-v" in arch:
        return "v_prediction"
    if str(metadata.get("ss_v_parameterization", "")).strip().lower() == "true":
        return "v_prediction"
    if "v_pred" in keys:
        return "v_prediction"
    return None


def family_of_keys(
    keys_and_shapes: Mapping[str, Sequence[int]] | SafetensorsHeader | Path | str,
    *,
    metadata: Mapping[str, str] | None = None,
    source: str | Path | None = None,
) -> str:
    """The family of a checkpoint (``sd1``, ``sd2``, ``sd2-v`` or ``sdxl``) from its key
    names and shapes alone (no tensor data).

    Accepts a mapping of key to shape (with optional safetensors ``metadata``), a
    :class:`~runner.files.SafetensorsHeader`, or the path of a ``.safetensors`` file (its
    header is read). ``source`` names the file in error messages. ``sd2-v`` is returned
    only when the header says so; :func:`inspect_checkpoint` goes further.

    Raises :class:`~runner.errors.ModelError` naming the file for anything that is not an
    SD1.x, SD2.x or SDXL base text-to-image checkpoint with its UNet, VAE and text encoders.
    """
    if isinstance(keys_and_shapes, (str, Path)):
        keys_and_shapes = read_safetensors_header(Path(keys_and_shapes))
    if isinstance(keys_and_shapes, SafetensorsHeader):
        header = keys_and_shapes
        shapes: Mapping[str, Sequence[int]] = header.shapes
        metadata = header.metadata if metadata is None else metadata
        source = header.path if source is None else source
    else:
        shapes = keys_and_shapes
    name = str(source) if source is not None else "<checkpoint>"
    keys = list(shapes)
    if not keys:
        raise ModelError(f"{name}: holds no tensors")

    if L.UNET_IN not in shapes:
        raise ModelError(L.describe_other(name, keys))
    lora_keys = [k for k in keys if L.LORA_KEY_IN_CHECKPOINT.search(k)]
    if len(lora_keys) * 2 > len(keys):
        raise ModelError(L.describe_other(name, lora_keys))

    in_shape = tuple(shapes[L.UNET_IN])
    in_channels = in_shape[1] if len(in_shape) == 4 else None
    has_sgm0_open = L.has_prefix(keys, L.SGM_0_OPEN)
    has_label_emb = L.LABEL_EMB in shapes

    if L.has_prefix(keys, L.SGM_1_OPEN):
        kind = "sdxl"
    elif has_sgm0_open and has_label_emb:
        raise ModelError(
            f"{name}: this is an SDXL refiner (one OpenCLIP text encoder and no CLIP ViT-L). "
            f"easel loads SDXL base checkpoints, not the refiner"
        )
    elif has_sgm0_open or L.has_prefix(keys, L.OPEN_CLIP):
        kind = "sd2"
    elif L.has_prefix(keys, L.CLIP_L):
        kind = "sd1"
    else:
        raise ModelError(
            f"{name}: has a UNet but no text encoder (neither {L.CLIP_L}*, {L.OPEN_CLIP}* nor "
            f"conditioner.embedders.*): a UNet-only file, not a full checkpoint"
        )

    if in_channels not in (4, INPAINT_CHANNELS):
        what = {
            8: "an instruct-pix2pix style image-editing model (8 input channels)",
            7: "the x4 upscaler (7 input channels)",
        }.get(in_channels or 0, f"a model with {in_channels} UNet input channels")
        raise ModelError(
            f"{name}: this is {what}, based on {kind}. easel loads text-to-image checkpoints "
            f"(4 input channels) and inpainting ones (9) only"
        )
    if has_label_emb and kind != "sdxl" and not (kind == "sd2" and is_unclip_keys(keys)):
        raise ModelError(
            f"{name}: this {kind} checkpoint has a class-label embedding (label_emb) but no "
            f"CLIP image encoder ({L.UNCLIP_VISUAL}*): an image-conditioned variant easel "
            f"does not load (SD 2.1 unCLIP files load with their image encoder)"
        )
    if kind == "sdxl":
        if not L.has_prefix(keys, L.SGM_0_CLIP):
            raise ModelError(
                f"{name}: SDXL checkpoint without its first text encoder "
                f"({L.SGM_0_CLIP}*): not a full SDXL base checkpoint"
            )
        if not has_label_emb:
            raise ModelError(
                f"{name}: SDXL-style text encoders but no UNet label_emb (size conditioning): "
                f"not an SDXL base checkpoint"
            )
    if not L.has_prefix(keys, L.VAE):
        raise ModelError(
            f"{name}: has no VAE ({L.VAE}*): easel needs a full checkpoint with UNet, VAE and "
            f"text encoder"
        )
    if kind == "sd2" and header_prediction_type(keys, metadata) == "v_prediction":
        return "sd2-v"
    return kind


def is_unclip_keys(keys: Sequence[str] | Mapping[str, Any]) -> bool:
    """Whether a checkpoint's keys are an SD 2.1 unCLIP file's: a UNet ``label_emb`` and
    the image encoder under ``embedder.model.visual.`` (:mod:`runner.models.layout`)."""
    return L.LABEL_EMB in keys and L.has_prefix(list(keys), L.UNCLIP_VISUAL)


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found out about a single-file checkpoint."""

    path: Path
    family: str
    prediction_type: str
    """``"epsilon"`` or ``"v_prediction"``."""
    zero_terminal_snr: bool
    """A ``ztsnr`` marker: trained with zero terminal SNR (rescaled betas)."""
    evidence: str
    """How the prediction type was decided, for logs and ``easel doctor``."""
    unet_in_channels: int = 4
    """4 for a text-to-image model, 9 for an inpainting one (:data:`INPAINT_CHANNELS`)."""
    unclip: bool = False
    """An SD 2.1 unCLIP file (:func:`is_unclip_keys`): its UNet takes image embeds."""


def _yaml_parameterization(path: Path) -> str | None:
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        import yaml

        data = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
        value = data["model"]["params"].get("parameterization")
    except Exception:  # an unreadable sidecar is ignored, not fatal
        return None
    if value is None:
        return None
    return "v_prediction" if str(value).strip().lower() == "v" else "epsilon"


def _sd2_weight_statistic(path: Path, header: SafetensorsHeader) -> float | None:
    if L.SD2_V_STAT_KEY not in header.shapes:
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensor = fh.get_tensor(L.SD2_V_STAT_KEY).float()
    except Exception as exc:
        raise ModelError(f"{path}: cannot read tensor {L.SD2_V_STAT_KEY!r}: {exc}") from exc
    return float(tensor.std(unbiased=False))


def inspect_checkpoint(
    path: Path | SafetensorsHeader, *, read_tensors: bool = True
) -> CheckpointInfo:
    """Validate a single-file checkpoint and decide its family and prediction type.

    Reads the header (:func:`family_of_keys`); for SD2 without a verdict in the header it
    also consults a ``<stem>.yaml`` sidecar and, when ``read_tensors`` is true, ComfyUI's
    one-tensor statistic (see the module docstring). Raises like :func:`family_of_keys`.
    """
    header = path if isinstance(path, SafetensorsHeader) else read_safetensors_header(Path(path))
    family = family_of_keys(header)
    keys = header.shapes
    ztsnr = "ztsnr" in keys
    from_header = header_prediction_type(keys, header.metadata)
    if from_header is not None:
        prediction, evidence = from_header, "the file's header"
    elif (from_yaml := _yaml_parameterization(header.path)) is not None:
        prediction, evidence = from_yaml, f"{header.path.with_suffix('.yaml').name}"
    elif (
        family == "sd2"
        and read_tensors
        and ((stat := _sd2_weight_statistic(header.path, header)) is not None)
    ):
        v = stat > _SD2_V_STAT_THRESHOLD
        prediction = "v_prediction" if v else "epsilon"
        evidence = f"weight statistic {stat:.4f} {'>' if v else '<='} {_SD2_V_STAT_THRESHOLD}"
    else:
        prediction, evidence = "epsilon", "default"
    if family in ("sd2", "sd2-v"):
        family = "sd2-v" if prediction == "v_prediction" else "sd2"
    return CheckpointInfo(
        path=header.path,
        family=family,
        prediction_type=prediction,
        zero_terminal_snr=ztsnr,
        evidence=evidence,
        unet_in_channels=unet_in_channels(keys),
        unclip=family.startswith("sd2") and is_unclip_keys(keys),
    )


def family_of_checkpoint(path: Path, *, read_tensors: bool = True) -> str:
    """The family of a single-file ``.safetensors`` checkpoint: :func:`inspect_checkpoint`'s
    answer (the header, a ``.yaml`` sidecar and, with ``read_tensors``, one 1.3 KB tensor)."""
    return inspect_checkpoint(Path(path), read_tensors=read_tensors).family


# ------------------------------------------------------------- folders and pipelines


def read_json(path: Path) -> dict[str, Any]:
    """A JSON config file as a dict; ModelError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"config {path} is not a JSON object")
    return data


def _family_from_parts(
    class_name: str, has_second_encoder: bool, text_encoder: Mapping[str, Any], prediction: Any
) -> str:
    if "XL" in class_name or has_second_encoder:
        return "sdxl"
    # SD2's OpenCLIP ViT-H is 1024 wide with GELU; SD1's CLIP ViT-L is 768 with quick GELU.
    if text_encoder.get("hidden_size") == 1024 or text_encoder.get("hidden_act") == "gelu":
        return "sd2-v" if prediction == "v_prediction" else "sd2"
    return "sd1"


def family_of_folder(folder: Path) -> str:
    """The family of a diffusers-format folder, from its configs only (``model_index.json``,
    ``text_encoder/config.json``, ``scheduler/scheduler_config.json``; see the module
    docstring). Raises ModelError naming a config that cannot be read."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    encoder = folder / "text_encoder" / "config.json"
    scheduler = folder / "scheduler" / "scheduler_config.json"
    text_config = read_json(encoder) if encoder.is_file() else {}
    prediction = read_json(scheduler).get("prediction_type") if scheduler.is_file() else None
    return _family_from_parts(
        str(index.get("_class_name", "")), "text_encoder_2" in index, text_config, prediction
    )


def family_of_pipeline(pipe: Any) -> str:
    """The family of a loaded diffusers pipeline (the same rule as :func:`family_of_folder`)."""
    config = getattr(getattr(pipe, "text_encoder", None), "config", None)
    scheduler = getattr(getattr(pipe, "scheduler", None), "config", None)
    text_config = {
        "hidden_size": getattr(config, "hidden_size", None),
        "hidden_act": getattr(config, "hidden_act", None),
    }
    return _family_from_parts(
        type(pipe).__name__,
        getattr(pipe, "text_encoder_2", None) is not None,
        text_config,
        getattr(scheduler, "prediction_type", None) if scheduler is not None else None,
    )


def is_sdxl_refiner_folder(folder: Path) -> bool:
    """Whether a diffusers folder holds an SDXL refiner (see the module docstring), from
    its ``model_index.json`` only."""
    index = read_json(Path(folder) / "model_index.json")
    first = index.get("text_encoder")
    no_first = first is None or (isinstance(first, list) and first[:1] == [None])
    return "text_encoder_2" in index and (no_first or bool(index.get("requires_aesthetics_score")))


def is_sdxl_refiner(pipe: Any) -> bool:
    """Whether a loaded pipeline is an SDXL refiner: a second text encoder and no first,
    or a pipeline configured with ``requires_aesthetics_score``."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return False
    config = getattr(pipe, "config", None) or {}
    aesthetics = bool(getattr(config, "get", lambda *_: False)("requires_aesthetics_score", False))
    return getattr(pipe, "text_encoder", None) is None or aesthetics


# ---------------------------------------------------------------------------- LoRAs

# Widths that give the family away (the real models'; tiny test models match none).
_UNET_CONTEXT_WIDTH = {768: {"sd1"}, 1024: {"sd2"}, 2048: {"sdxl"}}
_TEXT_ENCODER_WIDTH = {768: {"sd1", "sdxl"}, 1024: {"sd2"}}
_TEXT_ENCODER_2_WIDTH = 1280
_CROSS_ATTENTION_KV = re.compile(r"attn2[._](?:processor[._])?to_[kv]$")
_SELF_ATTENTION_PROJ = re.compile(r"self_attn[._](?:q|k|v|out)_proj$")
_METADATA_FAMILY = (
    ("ss_base_model_version", (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"))),
    (
        "modelspec.architecture",
        (
            ("stable-diffusion-xl", "sdxl"),
            ("stable-diffusion-v2", "sd2"),
            ("stable-diffusion-v1", "sd1"),
        ),
    ),
)


class LoraFamilyConflict(ModelError):
    """A LoRA's shapes point at different base model families. ``detail`` says which."""

    def __init__(self, filename: str, detail: str):
        self.filename = filename
        self.detail = detail
        super().__init__(f"{filename}: {detail}")


def family_of_lora(
    shapes: Mapping[str, Sequence[int]],
    metadata: Mapping[str, str] | None = None,
    filename: str = "<lora>",
) -> tuple[str | None, str]:
    """``(family, evidence)`` of a LoRA from its shapes (a state dict's or a header's), else
    its metadata; ``family`` is None when neither tells.

    Shapes: the input width of the UNet's cross-attention ``to_k``/``to_v`` (768 SD1,
    1024 SD2, 2048 SDXL), the text encoder's width (768 SD1 or SDXL's first encoder, 1024
    SD2), and a second text encoder (``text_encoder_2.``/``lora_te2_``, width 1280): SDXL.
    Metadata: kohya's ``ss_base_model_version`` or ``modelspec.architecture``. Raises
    :class:`LoraFamilyConflict` when shapes disagree.
    """
    candidates = set(LORA_FAMILIES)
    evidence: list[str] = []
    has_te2 = False
    for key, shape in shapes.items():
        shape = tuple(getattr(shape, "shape", shape))
        match = L.LORA_DIFFUSERS_KEY.match(key) or L.LORA_KOHYA_KEY.match(key)
        if not match or len(shape) < 2 or match["alpha"]:
            continue
        groups = match.groupdict()
        role = groups.get("ab") or groups.get("du") or groups.get("du2")
        if role not in ("A", "down"):
            continue
        component = L.LORA_KOHYA_COMPONENTS.get(match["component"], match["component"])
        module, width = match["module"], int(shape[1])
        found: set[str] | None = None
        if component == "text_encoder_2":
            has_te2 = True
            found = {"sdxl"}
            what = (
                f"a second text encoder{' of width 1280' if width == _TEXT_ENCODER_2_WIDTH else ''}"
            )
        elif component == "unet" and _CROSS_ATTENTION_KV.search(module):
            found = _UNET_CONTEXT_WIDTH.get(width)
            what = f"UNet cross-attention width {width}"
        elif component == "text_encoder" and _SELF_ATTENTION_PROJ.search(module):
            found = _TEXT_ENCODER_WIDTH.get(width)
            what = f"text encoder width {width}"
        if found is None:
            continue
        if not candidates & found:
            raise LoraFamilyConflict(
                filename,
                f"its shapes disagree about the base model: {', '.join(dict.fromkeys(evidence))} "
                f"but {what} ({'/'.join(sorted(found))})",
            )
        candidates &= found
        evidence.append(f"{what} ({'/'.join(sorted(found))})")
    shown = ", ".join(dict.fromkeys(evidence))
    if len(candidates) == 1:
        return next(iter(candidates)), shown
    if candidates == {"sd1", "sdxl"} and not has_te2:
        return "sd1", f"{shown}, without a second text encoder"
    for meta_key, table in _METADATA_FAMILY:
        value = str((metadata or {}).get(meta_key, "")).lower()
        for marker, family in table:
            if value.startswith(marker) and family in candidates:
                return family, f"metadata {meta_key}={value!r}"
    return None, shown or "no telling shapes or metadata"


__all__ = [
    "FAMILIES",
    "LORA_FAMILIES",
    "NATIVE_SIZES",
    "CheckpointInfo",
    "LoraFamilyConflict",
    "family_of_checkpoint",
    "family_of_folder",
    "family_of_keys",
    "family_of_lora",
    "family_of_pipeline",
    "header_prediction_type",
    "inspect_checkpoint",
    "is_sdxl_refiner",
    "is_sdxl_refiner_folder",
    "is_unclip_keys",
    "lora_family",
    "native_size",
]
