"""Load single-file Stable Diffusion checkpoints (original SD key layout), offline.

A "single file" is one ``.safetensors`` file holding a whole model in the layout of the
original CompVis / Stability code, as shared on model sites and read by ComfyUI and A1111:

=========  ===================================================================
family     keys
=========  ===================================================================
``sd1``    ``model.diffusion_model.*``, ``first_stage_model.*``,
           ``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L)
``sd2``    as sd1, text encoder ``cond_stage_model.model.*`` (OpenCLIP ViT-H;
           ``conditioner.embedders.0.model.*`` in Stability's sgm format)
``sd2-v``  SD2 768 px v-prediction: the same keys as ``sd2``
``sdxl``   ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L) and
           ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG), UNet ``label_emb``
=========  ===================================================================

**Family detection** (:func:`detect_family`) reads only the safetensors header (key names,
shapes, metadata). It refuses, with a :class:`~runner.errors.ModelError` naming the file:
SDXL refiners, inpainting models (9 input channels), instruct-pix2pix (8), the x4
upscaler (7), unCLIP, ControlNets, LoRAs / LyCORIS and textual-inversion embeddings passed
as a checkpoint, lone VAEs / UNets / text encoders, diffusers-format component files, and
other architectures (SD3, Flux, ...).

**SD2 epsilon (512 px) or v-prediction (768 px)?** The two have identical keys and shapes.
:func:`inspect_checkpoint` decides, first match wins:

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

**Configs.** diffusers needs a diffusers-format config folder to build the pipeline; with
none it would fetch one from the Hugging Face hub. easel ships one per family under
``runner/assets/configs/<family>/`` (the real model sizes, from the official diffusers
repositories) and passes it as ``config=`` with ``local_files_only=True``, so nothing is
downloaded. The folder used is, first match wins:

1. ``config_override_dir`` given by the caller;
2. a companion folder next to the checkpoint named after it with the suffix ``.config``:
   ``models/foo.safetensors`` + ``models/foo.config/`` (a complete diffusers folder:
   ``model_index.json`` and the ``unet``/``vae``/``text_encoder``/``scheduler``/...
   configs, as ``save_pretrained`` writes them; weight files in it are ignored: weights
   always come from the checkpoint). Use it for a checkpoint whose architecture differs
   from the stock one of its family;
3. the shipped folder for the detected family.

A caller's or companion folder is used as it is (its scheduler decides the prediction
type). **Tokenizers** are the real CLIP BPE tokenizer rebuilt from the file easel ships
(:mod:`runner.models.tokenizer`), with the pad token named in the config folder's
``tokenizer*/tokenizer_config.json``; a config folder whose tokenizer folder holds its own
vocabulary (``vocab.json`` or ``tokenizer.json``) keeps it.

**Safety.** Only ``.safetensors`` files are read. ``.ckpt``, ``.pt``, ``.pth``, ``.bin`` and
``.pkl`` files are refused with :class:`~runner.errors.UnsafeFileError` before they are
opened (pickle can run code), and so is a pickle or zip file renamed to ``.safetensors``.
A file whose header is not valid safetensors, or that is truncated, raises
:class:`~runner.errors.ModelError`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import ModelError, UnsafeFileError
from runner.models.tokenizer import EOS_TOKEN, load_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sd2-v", "sdxl")
"""The families :func:`load_single_file` can load."""

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
"""Shipped diffusers-format config folders, one per family."""

SAFE_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
COMPANION_CONFIG_SUFFIX = ".config"

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

_UNET = "model.diffusion_model."
_UNET_IN = _UNET + "input_blocks.0.0.weight"
_LABEL_EMB = _UNET + "label_emb.0.0.weight"
_SD2_V_STAT_KEY = _UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
_SD2_V_STAT_THRESHOLD = 0.09
_VAE = "first_stage_model."
_CLIP_L = "cond_stage_model.transformer."
_OPEN_CLIP = "cond_stage_model.model."
_SGM_0_CLIP = "conditioner.embedders.0.transformer."
_SGM_0_OPEN = "conditioner.embedders.0.model."
_SGM_1_OPEN = "conditioner.embedders.1.model."
_CLIP_POS = "text_model.embeddings.position_embedding.weight"

_CONVERT_HINT = (
    "Convert it on a machine you trust, e.g. "
    '`python -c "import torch, safetensors.torch as st; '
    "sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
    "sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, "
    "'model.safetensors')\"`, or download the .safetensors version most models publish."
)


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file's JSON header says: tensor shapes and dtypes, and metadata."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)


def check_weights_path(path: Path) -> Path:
    """Refuse anything but an existing ``.safetensors`` file, before reading a byte of it.

    Raises :class:`~runner.errors.UnsafeFileError` for pickle-based formats (``.ckpt``,
    ``.pt``, ``.pth``, ``.bin``, ``.pkl``) and :class:`~runner.errors.ModelError` for other
    suffixes, missing files and folders. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{path}: refusing to load a {suffix} file. {suffix} files are Python pickles, "
            f"and loading a pickle can run any code its author put in it. easel loads "
            f".safetensors files only. {_CONVERT_HINT}"
        )
    if suffix not in SAFE_SUFFIXES:
        raise ModelError(
            f"{path}: not a .safetensors file (suffix {suffix or 'none'!r}); "
            f"easel loads single-file checkpoints in the .safetensors format only"
        )
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a .safetensors checkpoint file")
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    return path


def _sniff_foreign(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (the format torch.save writes: a pickled PyTorch checkpoint)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (a legacy PyTorch checkpoint)"
    return None


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of a ``.safetensors`` file without reading tensor data.

    Checks the 8-byte length prefix, the JSON, every entry's dtype, shape and data offsets,
    and that the file holds all the bytes the header promises (a truncated download fails
    here). Raises :class:`~runner.errors.UnsafeFileError` for a pickle or zip file renamed to
    ``.safetensors`` and :class:`~runner.errors.ModelError` for anything else invalid.
    """
    path = check_weights_path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            foreign = _sniff_foreign(head)
            if foreign is not None:
                raise UnsafeFileError(
                    f"{path}: not a safetensors file: it is {foreign} renamed to .safetensors. "
                    f"Refused: loading a pickle can run any code its author put in it. "
                    f"{_CONVERT_HINT}"
                )
            if len(head) < 8:
                raise ModelError(
                    f"{path}: not a valid safetensors file: {size} bytes, too short for a header "
                    f"(empty or truncated file)"
                )
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > _MAX_HEADER_BYTES:
                raise ModelError(
                    f"{path}: not a valid safetensors file: the header length field says {n} bytes"
                )
            if 8 + n > size:
                raise ModelError(
                    f"{path}: not a valid safetensors file or truncated: the header needs {n} bytes "
                    f"but the file has {size - 8} after the length field"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the file: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path}: not a valid safetensors file: the header is not JSON ({exc})"
        ) from exc
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a valid safetensors file: the header is not a JSON object")

    data_size = size - 8 - n
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise ModelError(f"{path}: not a valid safetensors file: __metadata__ is not an object")
    metadata = {str(k): str(v) for k, v in metadata_raw.items()}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelError(
                f"{path}: not a valid safetensors file: bad header entry for tensor {name!r}"
            ) from exc
        if dtype not in _DTYPE_BYTES or any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise ModelError(
                f"{path}: not a valid safetensors file: bad dtype, shape or offsets for {name!r}"
            )
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise ModelError(
                f"{path}: not a valid safetensors file: tensor {name!r} ({dtype} {list(shape)}) "
                f"does not match its {end - begin} bytes"
            )
        if end > data_size:
            raise ModelError(
                f"{path}: truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"but the file holds only {data_size} bytes of data (an incomplete download?)"
            )
        shapes[name] = shape
        dtypes[name] = dtype
    return SafetensorsHeader(path=path, shapes=shapes, dtypes=dtypes, metadata=metadata)


# ------------------------------------------------------------------------ detection

_LORA_RE = re.compile(
    r"(^lora_(unet|te\d?)_)|(\.lora_(down|up|A|B|mid)\.)|(\.(hada|lokr)_w)|(^lycoris_)|(\.oft_)|(\.alpha$)"
)


def _describe_other(path_name: str, keys: Sequence[str]) -> str:
    keyset = set(keys)
    sample = ", ".join(repr(k) for k in sorted(keys)[:3])
    if any(_LORA_RE.search(k) for k in keys):
        return (
            f"{path_name}: this is a LoRA (or LyCORIS) file, not a checkpoint (keys like {sample}). "
            f"Put it with the LoRAs and apply it to a checkpoint instead of loading it as one"
        )
    if keyset & {"emb_params", "string_to_param", "string_to_token", "clip_l", "clip_g"}:
        return (
            f"{path_name}: this is a textual-inversion embedding, not a checkpoint (keys {sample})"
        )
    if any(k.startswith("control_model.") or k.startswith("controlnet_") for k in keys):
        return f"{path_name}: this is a ControlNet, not a text-to-image checkpoint"
    if any(
        k.startswith(p)
        for k in keys
        for p in (
            "model.diffusion_model.joint_blocks.",
            "model.diffusion_model.double_blocks.",
            "double_blocks.",
            "joint_blocks.",
        )
    ):
        return (
            f"{path_name}: this checkpoint is not Stable Diffusion 1.x, 2.x or SDXL "
            f"(it looks like SD3 or Flux, which easel does not load from single files)"
        )
    if "conv_in.weight" in keyset and any(k.startswith("down_blocks.") for k in keys):
        return (
            f"{path_name}: this is one diffusers-format component (a UNet or VAE), not a "
            f"single-file checkpoint; load the whole diffusers folder instead"
        )
    if any(k.startswith("encoder.down.") for k in keys) and any(
        k.startswith("decoder.up.") for k in keys
    ):
        return f"{path_name}: this is a VAE on its own, not a full checkpoint"
    if any(k.startswith(p) for k in keys for p in ("text_model.", "transformer.resblocks.")):
        return f"{path_name}: this is a text encoder on its own, not a full checkpoint"
    return (
        f"{path_name}: does not look like a Stable Diffusion checkpoint in the original layout: "
        f"no {_UNET_IN!r} (first keys: {sample or 'none'})"
    )


def _has_prefix(keys: Sequence[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


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


def detect_family(
    state_dict_keys_and_shapes: Mapping[str, Sequence[int]] | SafetensorsHeader | Path | str,
    *,
    metadata: Mapping[str, str] | None = None,
    source: str | Path | None = None,
) -> str:
    """Return the family of a checkpoint (``sd1``, ``sd2``, ``sd2-v`` or ``sdxl``) from its
    key names and shapes alone (no tensor data).

    Accepts a mapping of key to shape (with optional safetensors ``metadata``), a
    :class:`SafetensorsHeader`, or the path of a ``.safetensors`` file (its header is read).
    ``source`` names the file in error messages. ``sd2-v`` is returned only when the header
    says so (see :func:`header_prediction_type`); :func:`inspect_checkpoint` goes further.

    Raises :class:`~runner.errors.ModelError` naming the file for anything that is not an
    SD1.x, SD2.x or SDXL base text-to-image checkpoint with its UNet, VAE and text encoders.
    """
    if isinstance(state_dict_keys_and_shapes, (str, Path)):
        state_dict_keys_and_shapes = read_safetensors_header(Path(state_dict_keys_and_shapes))
    if isinstance(state_dict_keys_and_shapes, SafetensorsHeader):
        header = state_dict_keys_and_shapes
        shapes: Mapping[str, Sequence[int]] = header.shapes
        metadata = header.metadata if metadata is None else metadata
        source = header.path if source is None else source
    else:
        shapes = state_dict_keys_and_shapes
    name = str(source) if source is not None else "<checkpoint>"
    keys = list(shapes)
    if not keys:
        raise ModelError(f"{name}: holds no tensors")

    if _UNET_IN not in shapes:
        raise ModelError(_describe_other(name, keys))
    lora_keys = [k for k in keys if _LORA_RE.search(k)]
    if len(lora_keys) * 2 > len(keys):
        raise ModelError(_describe_other(name, lora_keys))

    in_shape = tuple(shapes[_UNET_IN])
    in_channels = in_shape[1] if len(in_shape) == 4 else None
    has_sgm0_open = _has_prefix(keys, _SGM_0_OPEN)
    has_sgm1_open = _has_prefix(keys, _SGM_1_OPEN)
    has_label_emb = _LABEL_EMB in shapes

    if has_sgm1_open:
        kind = "sdxl"
    elif has_sgm0_open and has_label_emb:
        raise ModelError(
            f"{name}: this is an SDXL refiner (one OpenCLIP text encoder and no CLIP ViT-L). "
            f"easel loads SDXL base checkpoints, not the refiner"
        )
    elif has_sgm0_open or _has_prefix(keys, _OPEN_CLIP):
        kind = "sd2"
    elif _has_prefix(keys, _CLIP_L):
        kind = "sd1"
    else:
        raise ModelError(
            f"{name}: has a UNet but no text encoder (neither {_CLIP_L}*, {_OPEN_CLIP}* nor "
            f"conditioner.embedders.*): a UNet-only file, not a full checkpoint"
        )

    if in_channels != 4:
        what = {
            9: "an inpainting model (9 input channels: latents, mask and masked image)",
            8: "an instruct-pix2pix style image-editing model (8 input channels)",
            7: "the x4 upscaler (7 input channels)",
        }.get(in_channels or 0, f"a model with {in_channels} UNet input channels")
        raise ModelError(
            f"{name}: this is {what}, based on {kind}. easel loads text-to-image checkpoints "
            f"(4 input channels) only"
        )
    if has_label_emb and kind != "sdxl":
        raise ModelError(
            f"{name}: this {kind} checkpoint has a class-label embedding (label_emb): an unCLIP "
            f"or other image-conditioned variant, which easel does not load"
        )
    if kind == "sdxl":
        if not _has_prefix(keys, _SGM_0_CLIP):
            raise ModelError(
                f"{name}: SDXL checkpoint without its first text encoder "
                f"({_SGM_0_CLIP}*): not a full SDXL base checkpoint"
            )
        if not has_label_emb:
            raise ModelError(
                f"{name}: SDXL-style text encoders but no UNet label_emb (size conditioning): "
                f"not an SDXL base checkpoint"
            )
    if not _has_prefix(keys, _VAE):
        raise ModelError(
            f"{name}: has no VAE ({_VAE}*): easel needs a full checkpoint with UNet, VAE and "
            f"text encoder"
        )
    if kind == "sd2" and header_prediction_type(keys, metadata) == "v_prediction":
        return "sd2-v"
    return kind


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
    if _SD2_V_STAT_KEY not in header.shapes:
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensor = fh.get_tensor(_SD2_V_STAT_KEY).float()
    except Exception as exc:
        raise ModelError(f"{path}: cannot read tensor {_SD2_V_STAT_KEY!r}: {exc}") from exc
    return float(tensor.std(unbiased=False))


def inspect_checkpoint(path: Path, *, read_tensors: bool = True) -> CheckpointInfo:
    """Validate a single-file checkpoint and decide its family and prediction type.

    Reads the header (:func:`detect_family`); for SD2 without a verdict in the header it
    also consults a ``<stem>.yaml`` sidecar and, when ``read_tensors`` is true, ComfyUI's
    one-tensor statistic (see the module docstring). Raises like :func:`detect_family`.
    """
    return _inspect(read_safetensors_header(Path(path)), read_tensors=read_tensors)


def _inspect(header: SafetensorsHeader, *, read_tensors: bool) -> CheckpointInfo:
    family = detect_family(header)
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
    )


# -------------------------------------------------------------------------- loading


def family_config_dir(family: str) -> Path:
    """The shipped diffusers-format config folder of ``family``."""
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return CONFIGS_DIR / family


def companion_config_dir(path: Path) -> Path | None:
    """The ``<stem>.config/`` folder next to a checkpoint, if there is one."""
    candidate = Path(path).with_suffix(COMPANION_CONFIG_SUFFIX)
    return candidate if candidate.is_dir() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"config {path} is not a JSON object")
    return data


def _check_config_dir(config_dir: Path, family: str, checkpoint: Path) -> dict[str, Any]:
    index_path = config_dir / "model_index.json"
    if not index_path.is_file():
        raise ModelError(
            f"{checkpoint}: config folder {config_dir} has no model_index.json; it must be a "
            f"diffusers-format folder (as save_pretrained writes)"
        )
    index = _read_json(index_path)
    class_name = str(index.get("_class_name", ""))
    wants_xl = family == "sdxl"
    if class_name and ("XL" in class_name) != wants_xl:
        raise ModelError(
            f"{checkpoint}: the checkpoint is {family} but config folder {config_dir} describes "
            f"a {class_name}"
        )
    return index


def _has_vocab(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()


def _pad_token(folder: Path, default: str) -> str:
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        return default
    pad = _read_json(cfg_path).get("pad_token", default)
    if isinstance(pad, dict):  # {"__type": "AddedToken", "content": ...}
        pad = pad.get("content", default)
    return str(pad)


def _scheduler_with(config_dir: Path, index: Mapping[str, Any], **overrides: Any) -> Any:
    import diffusers

    _library, class_name = index["scheduler"]
    cls = getattr(diffusers, class_name)
    return cls.from_pretrained(str(config_dir), subfolder="scheduler", **overrides)


def _load_unprefixed_clip(path: Path, config_dir: Path, torch_dtype: Any) -> Any:
    """SD1 files whose CLIP keys lack ``text_model.`` (``cond_stage_model.transformer.
    embeddings.*``): diffusers does not recognise them, so build the text encoder here."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder"), local_files_only=True)
    model = CLIPTextModel(config)
    expected = set(model.state_dict())
    wants_prefix = any(k.startswith("text_model.") for k in expected)
    sd = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            if key.startswith(_CLIP_L):
                name = key[len(_CLIP_L) :]
                name = ("text_model." + name) if wants_prefix else name
                if name in expected:
                    sd[name] = fh.get_tensor(key)
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelError(
            f"{path}: the text encoder is missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    model.load_state_dict(sd, strict=True)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _check_materialised(pipe: Any, path: Path, config_dir: Path) -> None:
    """diffusers leaves tensors the checkpoint lacks on the 'meta' device; refuse those."""
    import torch

    for comp_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing = [
            n
            for n, t in list(component.named_parameters()) + list(component.named_buffers())
            if t.device.type == "meta"
        ]
        if missing:
            raise ModelError(
                f"{path}: the checkpoint has no weights for {len(missing)} tensors of the "
                f"{comp_name} described by {config_dir} (e.g. {missing[:3]}): the file is "
                f"incomplete or the config does not match it"
            )


def load_single_file(
    path: Path,
    *,
    cache_dir: Path,
    torch_dtype: torch.dtype | None,
    config_override_dir: Path | None = None,
) -> tuple[DiffusionPipeline, str]:
    """Load a single-file SD1.x / SD2.x / SDXL ``.safetensors`` checkpoint fully offline.

    Returns the pipeline (a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
    without safety checker, on the CPU, in ``torch_dtype``) and the family (``sd1``,
    ``sd2``, ``sd2-v`` or ``sdxl``). ``cache_dir`` holds the generated CLIP tokenizer files.
    The diffusers config folder is ``config_override_dir``, else ``<stem>.config/`` next to
    the file, else the shipped one for the family (see the module docstring).

    Raises :class:`~runner.errors.UnsafeFileError` for pickle formats and
    :class:`~runner.errors.ModelError` (naming the file) for anything else that cannot be
    loaded: invalid or truncated file, unsupported model kind, config that does not fit.
    """
    header = read_safetensors_header(Path(path))
    info = _inspect(header, read_tensors=True)
    path, family = info.path, info.family
    if config_override_dir is not None:
        config_dir, shipped = Path(config_override_dir), False
        if not config_dir.is_dir():
            raise ModelError(f"{path}: config folder {config_dir} does not exist")
    elif (companion := companion_config_dir(path)) is not None:
        config_dir, shipped = companion, False
    else:
        config_dir, shipped = family_config_dir(family), True
    index = _check_config_dir(config_dir, family, path)

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {}
    tokenizer_pads = {"tokenizer": EOS_TOKEN if family in ("sd1", "sdxl") else "!"}
    if family == "sdxl":
        tokenizer_pads["tokenizer_2"] = "!"
    for name, default_pad in tokenizer_pads.items():
        if not _has_vocab(config_dir / name):
            pad = _pad_token(config_dir / name, default_pad)
            kwargs[name] = load_clip_tokenizer(Path(cache_dir), pad_token=pad)

    if family == "sdxl":
        pipeline_cls: Any = StableDiffusionXLPipeline
        kwargs["add_watermarker"] = False
    else:
        pipeline_cls = StableDiffusionPipeline
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    if shipped:
        overrides: dict[str, Any] = {}
        shipped_pred = _read_json(config_dir / "scheduler" / "scheduler_config.json").get(
            "prediction_type", "epsilon"
        )
        if info.prediction_type != shipped_pred:
            overrides["prediction_type"] = info.prediction_type
        if info.zero_terminal_snr:
            overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        if overrides:
            try:
                kwargs["scheduler"] = _scheduler_with(config_dir, index, **overrides)
            except Exception as exc:
                raise ModelError(f"{path}: cannot build the scheduler: {exc}") from exc

    if (
        family == "sd1"
        and _CLIP_L + _CLIP_POS not in header.shapes
        and _CLIP_L + _CLIP_POS.removeprefix("text_model.") in header.shapes
    ):
        kwargs["text_encoder"] = _load_unprefixed_clip(path, config_dir, torch_dtype)

    try:
        pipe = pipeline_cls.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            torch_dtype=torch_dtype,
            **kwargs,
        )
    except ModelError:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if "meta" in text:
            hint = "the checkpoint lacks weights the config describes (an incomplete file?)"
        elif shipped:
            hint = (
                f"its sizes may differ from the stock {family} model: put a matching diffusers "
                f"config folder next to it as {path.with_suffix(COMPANION_CONFIG_SUFFIX).name}/"
            )
        else:
            hint = "the config folder may not match the checkpoint"
        raise ModelError(
            f"{path}: cannot load it as {family} with the configs in {config_dir}; {hint}. {text}"
        ) from exc
    _check_materialised(pipe, path, config_dir)
    return pipe, family
