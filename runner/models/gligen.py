"""GLIGEN (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation"): boxes,
each with a phrase, that say where things go (ComfyUI's ``models/gligen``, GLIGENLoader
and GLIGENTextBoxApply).

A GLIGEN text-box file (ComfyUI's layout, the original repository's keys) holds

* ``position_net.*``: the grounding tokenizer: each box's Fourier features (8
  frequencies, sin and cos, of x1, y1, x2, y2) next to its phrase's pooled CLIP text
  embedding, through an MLP (``linears.0/2/4``: in -> 512 -> 512 -> key width); absent
  boxes use the learned ``null_positive_feature`` / ``null_position_feature``;
* one gated self-attention layer (``fuser``) per transformer block of the UNet, keyed by
  the original UNet's block numbering (``input_blocks.1.1.transformer_blocks.0.fuser.*``,
  ``middle_block.1...``, ``output_blocks.N...``): after each block's self-attention the
  visual tokens attend over themselves and the grounding tokens, gated by ``tanh(alpha)``.

Both are diffusers' modules (``GLIGENTextBoundingboxProjection``,
``GatedSelfAttentionDense``: the same computation and key names), loaded from the file.
Heads: 8 for SD1's 768-wide text embeddings, else one per 64 channels (ComfyUI's rule).

At sampling (:func:`installed`), the fusers are attached to the UNet's transformer blocks
in order (down, middle, up: the order of the original numbering) and the UNet is called
with ``cross_attention_kwargs={"gligen": {...}}``; they are detached afterwards, so
entries without boxes, and every other use of the UNet, run the plain model.

Boxes (:class:`GligenBoxes`, in latent cells as ComfyUI stores them) become coordinates
relative to the latent the UNet is given (the entry's area when it has one, as in
ComfyUI), up to 30 per entry, padded with absent ones.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runner.errors import ModelError

if TYPE_CHECKING:
    from runner.models.manager import ModelManager

KIND = "gligen"
MAX_OBJECTS = 30
"""ComfyUI's (and the paper's) number of grounding tokens per image."""

_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\.(.+?)\.fuser\.(.+)$")
_ORDER = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}


class GligenModel(nn.Module):
    """A loaded GLIGEN: ``position_net`` and the ``fusers`` in transformer-block order."""

    def __init__(self, position_net: nn.Module, fusers: list[nn.Module], key_dim: int):
        super().__init__()
        self.position_net = position_net
        self.fusers = nn.ModuleList(fusers)
        self.key_dim = key_dim


def gligen_from_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> GligenModel:
    """A :class:`GligenModel` from a GLIGEN file's tensors; ModelError when it is not one."""
    from diffusers.models.attention import GatedSelfAttentionDense
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    if "position_net.null_positive_feature" not in sd:
        sample = ", ".join(sorted(sd)[:3]) or "none"
        raise ModelError(
            f"{source}: not a GLIGEN text-box model (no position_net.null_positive_feature); "
            f"first keys: {sample}"
        )
    groups: dict[tuple, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        m = _BLOCK.match(key)
        if m is not None:
            order = (_ORDER[m.group(1)], int(m.group(2)), m.group(3))
            groups.setdefault(order, {})[m.group(4)] = tensor
    if not groups:
        raise ModelError(f"{source}: the GLIGEN file has no gated attention (fuser) layers")
    key_dim = int(sd["position_net.linears.4.weight"].shape[0])
    fusers = []
    for order in sorted(groups):
        part = groups[order]
        query_dim, context_dim = part["linear.weight"].shape
        heads = 8 if context_dim == 768 else max(1, query_dim // 64)
        fuser = GatedSelfAttentionDense(query_dim, context_dim, heads, query_dim // heads)
        _load(fuser, part, f"{source} fuser {order}")
        fusers.append(fuser)
    positive_len = int(sd["position_net.null_positive_feature"].shape[0])
    net = GLIGENTextBoundingboxProjection(positive_len=positive_len, out_dim=key_dim)
    position = {
        k[len("position_net.") :]: v for k, v in sd.items() if k.startswith("position_net.")
    }
    _load(net, position, f"{source} position_net", optional=("fourier_embedder",))
    return GligenModel(net, fusers, key_dim).eval()


def _load(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, optional=()) -> None:
    wanted = {k for k in module.state_dict() if not k.startswith(tuple(optional))}
    missing, extra = sorted(wanted - set(sd)), sorted(set(sd) - set(module.state_dict()))
    if missing or extra:
        raise ModelError(
            f"{what}: weights do not fit (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)


def transformer_blocks(unet: Any) -> list[nn.Module]:
    """The UNet's transformer blocks in the order of the original block numbering."""
    from diffusers.models.attention import BasicTransformerBlock

    out: list[nn.Module] = []
    for part in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if part is None:
            continue
        out.extend(m for m in part.modules() if isinstance(m, BasicTransformerBlock))
    return out


@contextlib.contextmanager
def installed(unet: Any, model: GligenModel) -> Iterator[None]:
    """The UNet with ``model``'s fusers on its transformer blocks and its position net,
    for the duration of the block; the UNet is as before afterwards."""
    blocks = transformer_blocks(unet)
    if len(blocks) != len(model.fusers):
        raise ValueError(
            f"this GLIGEN model has {len(model.fusers)} gated attention layers but the "
            f"model has {len(blocks)} transformer blocks: it was made for another model"
        )
    param = next(unet.parameters())
    model.to(param.device, param.dtype)
    saved = [(b, b.__dict__["_modules"].get("fuser")) for b in blocks]
    had_net = "position_net" in unet.__dict__["_modules"]
    old_net = unet.__dict__["_modules"].get("position_net")
    for block, fuser in zip(blocks, model.fusers, strict=True):
        if block.norm1.normalized_shape[0] != fuser.linear.out_features:
            raise ValueError("this GLIGEN model's layer widths do not fit the model's")
        block.fuser = fuser
    unet.position_net = model.position_net
    try:
        yield
    finally:
        for block, old in saved:
            if old is None:
                del block.fuser
            else:
                block.fuser = old
        if had_net:
            unet.position_net = old_net
        else:
            del unet.position_net


@dataclass(frozen=True, eq=False)
class GligenBoxes:
    """An entry's GLIGEN boxes (``entry.extra["gligen"]``): the model and, per box, the
    phrase's pooled text embedding ``[key_dim]`` and ``(height, width, y, x)`` in latent
    cells (GLIGENTextBoxApply's pixels // 8)."""

    model: GligenModel
    boxes: tuple[tuple[torch.Tensor, int, int, int, int], ...]

    def inputs(self, latent_shape, device, dtype) -> dict[str, torch.Tensor]:
        """The position net's inputs for a UNet input of ``latent_shape`` ``[n, c, h, w]``:
        ``boxes`` ``[n, 30, 4]`` (x1, y1, x2, y2 relative to it), ``masks`` ``[n, 30]`` and
        ``positive_embeddings`` ``[n, 30, key_dim]``."""
        n, _, h, w = latent_shape
        boxes = torch.zeros(MAX_OBJECTS, 4)
        masks = torch.zeros(MAX_OBJECTS)
        embeds = torch.zeros(MAX_OBJECTS, self.model.key_dim)
        for i, (pooled, bh, bw, by, bx) in enumerate(self.boxes[:MAX_OBJECTS]):
            boxes[i] = torch.tensor([bx / w, by / h, (bx + bw) / w, (by + bh) / h])
            masks[i] = 1.0
            embeds[i] = pooled.reshape(-1).float()
        return {
            "boxes": boxes[None].repeat(n, 1, 1).to(device, dtype),
            "masks": masks[None].repeat(n, 1).to(device, dtype),
            "positive_embeddings": embeds[None].repeat(n, 1, 1).to(device, dtype),
        }


@dataclass(frozen=True)
class GligenHandle:
    """GLIGEN: a loaded GLIGEN model in the model cache (``checkpoint.pipe.gligen``)."""

    checkpoint: Any

    @property
    def model(self) -> GligenModel:
        return self.checkpoint.pipe.gligen


def gligen_names(models: ModelManager) -> list[str]:
    """GLIGENLoader's choices: files under ``gligen/``."""
    return models.names_of(KIND)


def gligen_path(models: ModelManager, name: str) -> Path:
    """The file of GLIGEN model ``name``; ModelError listing the others."""
    path = models.find_file(KIND, name, "GLIGEN model")
    if path is None:
        available = ", ".join(gligen_names(models)) or "(none)"
        raise ModelError(f"no GLIGEN model named {name!r}; available: {available}")
    return path


def load_named(models: ModelManager, name: str) -> GligenHandle:
    """GLIGENLoader: GLIGEN model ``name`` in the model cache."""
    from runner.models.manager import Components
    from runner.models.vae import read_weights

    path = gligen_path(models, name)

    def build() -> Components:
        sd, _ = read_weights(path, models.settings.allow_pickle_weights)
        return Components(gligen=gligen_from_state_dict(sd, str(path)))

    return GligenHandle(models._component(f"gligen:{name}", KIND, str(path), build))
