"""Style models (ComfyUI's ``models/style_models``): TencentARC's T2I-Adapter style
adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable
Ability for Text-to-Image Diffusion Models"), which turns a CLIP image encoder's tokens
into a few extra prompt tokens.

:class:`StyleAdapter` is easel's own implementation of the published architecture: the
image encoder's last hidden state ``[batch, tokens, width]`` gets ``num_token`` learned
style tokens appended, goes through a layer norm and ``n_layers`` pre-norm transformer
blocks (multi-head self-attention, then a 4x MLP with quick GELU, each residual), and the
style tokens' outputs are layer-normed and projected to the UNet's context width. The
released ``t2iadapter_style`` file has width 1024 (CLIP ViT-L/14's), 3 layers, 8 heads,
8 tokens and context width 768; the loader reads width, tokens, layers and context width
off the shapes and keeps 8 heads, which no shape records.

Keys are TencentARC's (their spelling ``transformer_layes`` included): ``style_embedding``
``[1, num_token, width]``, ``ln_pre``, ``transformer_layes.N.{attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, ``ln_post``,
``proj`` ``[width, context_dim]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runner.errors import ModelError

if TYPE_CHECKING:
    from runner.models.checkpoint import Checkpoint
    from runner.models.manager import ModelManager

KIND = "style_models"
HEADS = 8


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """A pre-norm transformer block (CLIP's ``ResidualAttentionBlock``), sequence-first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """T2I-Adapter's style adapter (see the module docstring)."""

    def __init__(
        self,
        width: int = 1024,
        context_dim: int = 768,
        num_head: int = HEADS,
        n_layers: int = 3,
        num_token: int = 8,
    ):
        super().__init__()
        self.num_token = num_token
        self.style_embedding = nn.Parameter(torch.zeros(1, num_token, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer_layes = nn.Sequential(*[_Block(width, num_head) for _ in range(n_layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens, width]`` image tokens -> ``[batch, num_token, context_dim]``."""
        style = self.style_embedding.expand(hidden.shape[0], -1, -1).to(hidden.dtype)
        x = self.ln_pre(torch.cat([hidden, style], 1))
        x = self.transformer_layes(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, -self.num_token :]) @ self.proj


def style_adapter_from_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> StyleAdapter:
    """A :class:`StyleAdapter` holding ``sd``; ModelError when it is not one."""
    if "style_embedding" not in sd or "proj" not in sd:
        sample = ", ".join(sorted(sd)[:3]) or "none"
        if "redux_down.weight" in sd:
            raise ModelError(
                f"{source}: a FLUX Redux style model; easel runs SD-family models only"
            )
        raise ModelError(
            f"{source}: not a T2I style adapter (no style_embedding/proj); first keys: {sample}"
        )
    _, num_token, width = sd["style_embedding"].shape
    layers = {
        int(m.group(1)) for k in sd if (m := re.match(r"transformer_layes\.(\d+)\.", k)) is not None
    }
    heads = HEADS if width % HEADS == 0 else 1
    model = StyleAdapter(
        width=int(width),
        context_dim=int(sd["proj"].shape[1]),
        num_head=heads,
        n_layers=max(layers) + 1 if layers else 0,
        num_token=int(num_token),
    )
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as exc:
        raise ModelError(f"{source}: style adapter weights do not fit: {exc}") from exc
    return model.eval()


@dataclass(frozen=True)
class StyleModelHandle:
    """STYLE_MODEL: a loaded style adapter, ``checkpoint.pipe.style_model``."""

    checkpoint: Checkpoint

    def get_cond(self, clip_vision_output: Any) -> torch.Tensor:
        """The style tokens ``[batch, num_token, context_dim]`` (float32, CPU) for a
        CLIP_VISION_OUTPUT (from its last hidden state, as ComfyUI's StyleModel)."""
        model = self.checkpoint.pipe.style_model
        param = next(model.parameters())
        hidden = clip_vision_output.last_hidden_state
        width = model.style_embedding.shape[-1]
        if hidden.shape[-1] != width:
            raise ValueError(
                f"the style model takes {width}-wide image tokens but the CLIP vision output "
                f"is {hidden.shape[-1]} wide: use the CLIP vision model it was trained with"
            )
        with self.checkpoint.lock, torch.inference_mode():
            return model(hidden.to(param.device, param.dtype)).float().cpu()


def style_model_names(models: ModelManager) -> list[str]:
    """StyleModelLoader's choices: files under ``style_models/``."""
    return models.names_of(KIND)


def style_model_path(models: ModelManager, name: str) -> Path:
    """The file of style model ``name``; ModelError listing the others."""
    path = models.find_file(KIND, name, "style model")
    if path is None:
        available = ", ".join(style_model_names(models)) or "(none)"
        raise ModelError(f"no style model named {name!r}; available: {available}")
    return path


def load_named(models: ModelManager, name: str) -> StyleModelHandle:
    """StyleModelLoader: style model ``name`` in the model cache."""
    from runner.models.manager import Components
    from runner.models.vae import read_weights

    path = style_model_path(models, name)

    def build() -> Components:
        sd, _ = read_weights(path, models.settings.allow_pickle_weights)
        model = style_adapter_from_state_dict(sd, str(path))
        if models.dtype != torch.float32:
            model.to(models.dtype)
        return Components(style_model=model)

    return StyleModelHandle(models._component(f"style_model:{name}", KIND, str(path), build))
