"""CLIP image encoders (ComfyUI's ``models/clip_vision``): loading them as transformers'
``CLIPVisionModelWithProjection`` and encoding images as ComfyUI's CLIPVisionEncode does.

Layouts accepted (:func:`load_clip_vision`):

- a **single file** in Hugging Face's key layout (``vision_model.embeddings.*``,
  ``vision_model.encoder.layers.N.*``, ``visual_projection.weight``), as ComfyUI's
  ``clip_vision`` files are shared; ``.safetensors``, or a pickle (operator's files only)
  through the restricted unpickler;
- a single file in **OpenCLIP's / OpenAI CLIP's layout** (``visual.conv1.weight``,
  ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``visual.proj``...), also under a
  longer prefix such as an SD 2.1 unCLIP checkpoint's ``embedder.model.visual.``: converted
  by :func:`openclip_visual_to_hf` (the fused attention projection split into query, key
  and value; ``proj`` transposed into ``visual_projection``);
- a **folder** with ``config.json`` and the weights (``save_pretrained``'s layout).

A single file carries no config, so the architecture is read off the tensor shapes: width
from the patch embedding, patch size from its kernel, image size from the number of
positions, depth from the layers present, MLP width from ``fc1``, projection width from
``visual_projection``. Two values are in no shape: the number of attention heads (16 for
the released ViT-L/H/bigG encoders, 12 for ViT-B, else width / 64) and the activation
(OpenAI's ViT-B/L use quick GELU, OpenCLIP's ViT-H/bigG GELU); safetensors metadata
``num_attention_heads`` / ``hidden_act`` override both.

**Preprocessing** (ComfyUI's ``clip_preprocess``): an IMAGE ``[batch, height, width, 3]``
in 0..1 is resized with antialiased bicubic interpolation so that its shorter side is the
encoder's image size (``crop="center"``) and centre-cropped to a square, or resized to the
square directly (``crop="none"``); then quantised to 8 bits, as the pixels of a saved
image would be, and normalised with CLIP's mean and standard deviation. An image already
of that size is not resized.

**Output** (:class:`ClipVisionOutput`, ComfyUI's CLIP_VISION_OUTPUT): ``image_embeds``
(the projected class token), ``last_hidden_state`` (the last layer's tokens, before the
final layer norm), ``penultimate_hidden_states`` (the tokens after the second-to-last
layer, what IP-Adapter-style models read) and ``image_sizes``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from runner.errors import ModelError

if TYPE_CHECKING:
    from runner.models.checkpoint import Checkpoint
    from runner.models.manager import ModelManager

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's image normalisation (Radford et al. 2021), what every CLIP encoder was trained on."""

KIND = "clip_vision"
"""The models-folder kind (``models/clip_vision``)."""

_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_GELU_WIDTHS = {1280, 1664}  # OpenCLIP ViT-H/14 and ViT-bigG/14
_PREFIX = "vision_model."


@dataclass
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what CLIPVisionEncode gives for a batch of images (float32, CPU).

    Items are also readable by name (``output["image_embeds"]``), as ComfyUI's are."""

    image_embeds: torch.Tensor
    """``[batch, projection_dim]``: the projected, layer-normed class token."""
    last_hidden_state: torch.Tensor
    """``[batch, tokens, width]``: the last layer's output."""
    penultimate_hidden_states: torch.Tensor
    """``[batch, tokens, width]``: the second-to-last layer's output."""
    image_sizes: list = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def preprocess(
    image: torch.Tensor,
    size: int,
    crop: bool = True,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """An IMAGE ``[batch, height, width, channels]`` in 0..1 as CLIP pixel values
    ``[batch, 3, size, size]`` (see the module docstring)."""
    if image.dim() != 4 or image.shape[-1] < 3:
        raise ValueError(
            f"CLIP vision needs an IMAGE [batch, height, width, 3], got shape {tuple(image.shape)}"
        )
    x = image[..., :3].movedim(-1, 1).float()
    height, width = x.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (max(size, round(scale * height)), max(size, round(scale * width)))
        else:
            target = (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    x = (x * 255.0).clamp(0, 255).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def encode_image(model: Any, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
    """Encode an IMAGE with a ``CLIPVisionModelWithProjection`` (CLIPVisionEncode)."""
    param = next(model.parameters())
    size = int(model.config.image_size)
    pixels = preprocess(image.to(param.device), size, crop).to(param.dtype)
    with torch.inference_mode():
        out = model(pixel_values=pixels, output_hidden_states=True)
    return ClipVisionOutput(
        image_embeds=out.image_embeds.float().cpu(),
        last_hidden_state=out.last_hidden_state.float().cpu(),
        penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
        image_sizes=[tuple(pixels.shape[1:])] * pixels.shape[0],
    )


@dataclass(frozen=True)
class ClipVisionHandle:
    """CLIP_VISION: a loaded image encoder, ``checkpoint.pipe.image_encoder`` (a standalone
    file, or an unCLIP checkpoint's own encoder)."""

    checkpoint: Checkpoint

    @property
    def model(self) -> Any:
        return self.checkpoint.pipe.image_encoder

    def encode(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """CLIPVisionEncode: see :func:`encode_image`."""
        with self.checkpoint.lock:
            return encode_image(self.model, image, crop)


# -- reading files ------------------------------------------------------------------------

_OPEN_CLIP_TOP = {
    "class_embedding": "embeddings.class_embedding",
    "conv1.weight": "embeddings.patch_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPEN_CLIP_MARK = "transformer.resblocks.0.attn.in_proj_weight"
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)")
_IN_PROJ_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")


def openclip_visual_prefix(keys) -> str | None:
    """The prefix of an OpenCLIP-layout image tower among ``keys`` (``"visual."``,
    ``"embedder.model.visual."``...), or None when there is none."""
    for key in keys:
        if key.endswith("visual." + _OPEN_CLIP_MARK):
            return key[: -len(_OPEN_CLIP_MARK)]
    return None


def openclip_visual_to_hf(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The image tower under ``prefix`` (OpenCLIP's ``VisionTransformer`` names, which
    OpenAI's CLIP shares) in ``CLIPVisionModelWithProjection``'s names. Keys outside
    ``prefix`` are left out; a key under it with no counterpart (an attention-pooling or
    layer-scale tower, which HF CLIP does not have) is a ModelError naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest in _OPEN_CLIP_TOP:
            out[_PREFIX + _OPEN_CLIP_TOP[rest]] = value
        elif rest == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif m := _IN_PROJ_KEY.fullmatch(rest):
            layer, kind = m.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, 0), strict=True):
                out[f"{_PREFIX}encoder.layers.{layer}.self_attn.{name}.{kind}"] = part.contiguous()
        elif (m := _BLOCK_KEY.fullmatch(rest)) and m[2] in _OPEN_CLIP_BLOCK:
            out[f"{_PREFIX}encoder.layers.{m[1]}.{_OPEN_CLIP_BLOCK[m[2]]}.{m[3]}"] = value
        else:
            raise ModelError(
                f"OpenCLIP image tower key {key!r} has no counterpart in a CLIP ViT "
                "(CLIPVisionModelWithProjection): this encoder's architecture is not supported"
            )
    return out


def _strip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF keys, also when the file nests them under one more prefix (``clip_vision.``,
    ``image_encoder.``) or is in OpenCLIP's layout (:func:`openclip_visual_to_hf`)."""
    open_prefix = openclip_visual_prefix(sd)
    if open_prefix is not None:
        return openclip_visual_to_hf(sd, open_prefix)
    if any(k.startswith(_PREFIX) for k in sd):
        return dict(sd)
    for key in sd:
        at = key.find("." + _PREFIX)
        if at >= 0:
            prefix = key[: at + 1]
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def vision_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Any:
    """A ``CLIPVisionConfig`` for HF-keyed weights (see the module docstring); ModelError
    naming what is missing when they are not a CLIP vision encoder."""
    from transformers import CLIPVisionConfig

    metadata = metadata or {}
    patch_key = _PREFIX + "embeddings.patch_embedding.weight"
    pos_key = _PREFIX + "embeddings.position_embedding.weight"
    if patch_key not in sd or pos_key not in sd:
        sample = ", ".join(sorted(sd)[:3]) or "none"
        raise ModelError(
            f"not a CLIP vision encoder in Hugging Face's layout: no {patch_key}; "
            f"first keys: {sample}"
        )
    if "visual_projection.weight" not in sd:
        raise ModelError(
            "the CLIP vision encoder has no visual_projection.weight: image embeds need it"
        )
    patch = sd[patch_key]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = math.isqrt(int(sd[pos_key].shape[0]) - 1)
    layers = {
        int(m.group(1))
        for k in sd
        if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)) is not None
    }
    if not layers:
        raise ModelError("the CLIP vision encoder has no encoder layers")
    fc1 = sd[_PREFIX + "encoder.layers.0.mlp.fc1.weight"]
    heads = int(metadata.get("num_attention_heads", 0)) or _HEADS.get(width, max(1, width // 64))
    act = metadata.get("hidden_act") or ("gelu" if width in _GELU_WIDTHS else "quick_gelu")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=heads,
        image_size=grid * patch_size,
        patch_size=patch_size,
        projection_dim=int(sd["visual_projection.weight"].shape[0]),
        hidden_act=act,
        layer_norm_eps=1e-5,
    )


def clip_vision_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``CLIPVisionModelWithProjection`` holding ``sd`` (keys checked: missing or
    unexpected weights are a ModelError naming them)."""
    from transformers import CLIPVisionModelWithProjection

    sd = _strip(sd)
    config = vision_config_from_state_dict(sd, metadata)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    wanted = set(model.state_dict())
    sd = {k: v for k, v in sd.items() if k != _PREFIX + "embeddings.position_ids"}
    missing, extra = sorted(wanted - set(sd)), sorted(set(sd) - wanted)
    if missing or extra:
        raise ModelError(
            f"CLIP vision weights do not fit a {config.num_hidden_layers}-layer encoder: "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    # Buffers that are not weights (position ids) were made on the meta device.
    emb = model.vision_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.register_buffer(
            "position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False
        )
    return model.eval()


def load_clip_vision(path: Path, *, dtype: torch.dtype, allow_pickle: bool) -> Any:
    """The CLIP vision encoder at ``path``: a folder with ``config.json``, or one file."""
    from runner.models.vae import read_weights

    path = Path(path)
    if path.is_dir():
        from transformers import CLIPVisionModelWithProjection

        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if config.get("model_type") not in (None, "clip_vision_model"):
                raise ModelError(f"{path}: model_type {config.get('model_type')!r} is not CLIP")
            return CLIPVisionModelWithProjection.from_pretrained(
                str(path), torch_dtype=dtype, use_safetensors=True, local_files_only=True
            ).eval()
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{path}: cannot load it as a CLIP vision folder: {exc}") from exc
    sd, metadata = read_weights(path, allow_pickle)
    return clip_vision_from_state_dict(sd, metadata, dtype)


# -- the models folder --------------------------------------------------------------------


def clip_vision_names(models: ModelManager) -> list[str]:
    """CLIPVisionLoader's choices: files and ``config.json`` folders under ``clip_vision/``."""
    return models.names_of(KIND, folders_too="config.json")


def clip_vision_path(models: ModelManager, name: str) -> Path:
    """The file or folder of CLIP vision model ``name``; ModelError listing the others."""
    from runner.models.listing import safe_relative_name

    path = models.find_file(KIND, name, "CLIP vision model")
    if path is not None:
        return path
    rel = safe_relative_name(name)
    for folder in models.folders(KIND):
        if (folder / rel / "config.json").is_file():
            return folder / rel
    available = ", ".join(clip_vision_names(models)) or "(none)"
    raise ModelError(f"no CLIP vision model named {name!r}; available: {available}")


def load_named(models: ModelManager, name: str) -> ClipVisionHandle:
    """CLIPVisionLoader: the encoder ``name`` in the model cache (its memory budget, LRU)."""
    from runner.models.manager import Components

    path = clip_vision_path(models, name)

    def build() -> Components:
        model = load_clip_vision(
            path, dtype=models.dtype, allow_pickle=models.settings.allow_pickle_weights
        )
        return Components(image_encoder=model)

    return ClipVisionHandle(models._component(f"clip_vision:{name}", KIND, str(path), build))
