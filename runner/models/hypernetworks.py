"""Hypernetworks (ComfyUI's ``models/hypernetworks``, AUTOMATIC1111's format; after
NovelAI's 2022 "hypernetwork" fine-tuning): small MLPs that rewrite the context that the
UNet's attention layers read their keys and values from.

A file maps context widths (320, 640, 768, 1024, 1280...) to a pair of MLPs, one for the
keys and one for the values, plus options. In every attention layer of the UNet (self-
and cross-attention) whose context has a width the file covers, the key input becomes
``c + strength * mlp_k(c)`` and the value input ``c + strength * mlp_v(c)`` (the query
is unchanged); several hypernetworks on one MODEL apply in order, each to the previous
one's result.

Each MLP is the file's ``linear.N`` layers in order; ``activation_func`` (``linear``,
``relu``, ``leakyrelu``, ``elu``, ``swish`` (hard swish), ``tanh``, ``sigmoid``,
``softsign``, ``mish``) follows every layer but the last (the last too with
``activate_output``); with ``is_layer_norm`` every linear layer is followed by a layer norm
(the next ``linear.N`` entry). Dropout is a training option and does nothing here. Other
activations are refused with their name.

Files: A1111's ``.pt`` (a pickle of dicts and tensors, read with the restricted unpickler:
operator's files only) or a ``.safetensors`` with ``<width>.<0|1>.linear.N.weight`` keys and
the options in its metadata.

The hypernetworks of a MODEL (``ModelHandle.patches``) are applied for the duration of a
sampling call (:func:`applied`): attention processors of ours
(:class:`HypernetworkAttnProcessor`) replace the UNet's, and the UNet's own come back after.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from runner.errors import ModelError

if TYPE_CHECKING:
    from runner.models.manager import ModelManager

log = logging.getLogger(__name__)

KIND = "hypernetworks"

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _mlp(sd: Mapping[str, torch.Tensor], activation: str, layer_norm: bool, last_act: bool):
    names = sorted(
        {k[: -len(".weight")] for k in sd if k.endswith(".weight")},
        key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"[.]", n)],
    )
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        w, b = sd[f"{names[i]}.weight"], sd[f"{names[i]}.bias"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w.float(), "bias": b.float()})
        layers.append(lin)
        last = i == len(names) - (2 if layer_norm else 1)
        if activation != "linear" and (not last or last_act):
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            i += 1
            lw, lb = sd[f"{names[i]}.weight"], sd[f"{names[i]}.bias"]
            ln = nn.LayerNorm(lw.shape[0])
            ln.load_state_dict({"weight": lw.float(), "bias": lb.float()})
            layers.append(ln)
        i += 1
    return nn.Sequential(*layers)


class Hypernetwork(nn.Module):
    """One loaded hypernetwork: ``nets[str(width)]`` is its (keys MLP, values MLP)."""

    def __init__(self, nets: dict[int, tuple[nn.Module, nn.Module]], name: str = ""):
        super().__init__()
        self.name = name
        self.nets = nn.ModuleDict({str(d): nn.ModuleList(pair) for d, pair in nets.items()})

    @property
    def widths(self) -> list[int]:
        return sorted(int(d) for d in self.nets)

    def pair(self, width: int) -> nn.ModuleList | None:
        return self.nets[str(width)] if str(width) in self.nets else None


def _split_safetensors(sd: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> dict:
    out: dict[Any, Any] = dict(meta)
    for key, tensor in sd.items():
        m = re.match(r"(\d+)\.([01])\.(.+)$", key)
        if m is None:
            raise ModelError(f"unexpected key {key!r} in a hypernetwork file")
        dim, index, name = int(m.group(1)), int(m.group(2)), m.group(3)
        out.setdefault(dim, [{}, {}])[index][name] = tensor
    return out


def hypernetwork_from_state(state: Mapping[Any, Any], source: str) -> Hypernetwork:
    """A :class:`Hypernetwork` from a file's content (see the module docstring)."""
    activation = str(state.get("activation_func", "linear") or "linear").lower()
    if activation not in ACTIVATIONS:
        raise ModelError(
            f"{source}: hypernetwork activation {activation!r} is not supported; "
            f"known: {', '.join(ACTIVATIONS)}"
        )
    layer_norm = _flag(state.get("is_layer_norm", False))
    last_act = _flag(state.get("activate_output", False))
    nets = {}
    for key, value in state.items():
        try:
            dim = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ModelError(f"{source}: width {dim} does not hold a (keys, values) MLP pair")
        nets[dim] = tuple(_mlp(sd, activation, layer_norm, last_act) for sd in value)
    if not nets:
        raise ModelError(f"{source}: not a hypernetwork (no context-width entries)")
    return Hypernetwork(nets, name=str(state.get("name", Path(source).stem))).eval()


def read_hypernetwork(path: Path, allow_pickle: bool) -> Hypernetwork:
    """The hypernetwork file at ``path`` (``.pt`` through the restricted unpickler, or
    ``.safetensors``)."""
    from runner.files import is_pickle_name

    path = Path(path)
    if is_pickle_name(path):
        if not allow_pickle:
            raise ModelError(
                f"{path.name} is a pickle; set allow_pickle_weights to load it with PyTorch's "
                "restricted unpickler"
            )
        state = _restricted_load(path)
        return hypernetwork_from_state(state, str(path))
    from safetensors.torch import load_file

    from runner.files import check_weights_path, read_safetensors_header

    check_weights_path(path)
    meta = read_safetensors_header(path).metadata or {}
    return hypernetwork_from_state(_split_safetensors(load_file(str(path)), meta), str(path))


def _restricted_load(path: Path) -> Any:
    """A1111's nested dicts and lists of tensors, through ``torch.load(weights_only=True)``
    (the rule of :mod:`runner.models.pickle_weights`, which flattens to tensors only)."""
    import pickle

    from runner.errors import UnsafeFileError
    from runner.models.pickle_weights import sniff_problem

    problem = sniff_problem(path)
    if problem is not None:
        raise ModelError(problem)
    log.info("reading pickle hypernetwork %s with torch.load(weights_only=True)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (str(exc).strip().splitlines() or ["the unpickler refused it"])[0]
        raise UnsafeFileError(
            f"{path}: refused: this pickle needs more than tensors ({reason}); nothing in "
            "the file was run"
        ) from None
    except Exception as exc:
        raise ModelError(f"{path}: cannot read it: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class HypernetworkPatch:
    """A hypernetwork at a strength, as a MODEL carries it (``ModelHandle.patches``)."""

    network: Hypernetwork
    strength: float
    source: str = ""

    def key(self) -> tuple:
        """What tells two patches apart for batching (the network by identity)."""
        return ("hypernetwork", id(self.network), self.strength)


class HypernetworkAttnProcessor(nn.Module):
    """Attention with the keys' and values' context rewritten by hypernetworks (see the
    module docstring); otherwise diffusers' scaled dot-product attention."""

    def __init__(self, patches: Sequence[HypernetworkPatch]):
        super().__init__()
        self.patches = list(patches)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.dim() != 3:
            raise ValueError("hypernetworks apply to the transformer attention of SD UNets only")
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        k_in = v_in = context
        for patch in self.patches:
            pair = patch.network.pair(int(context.shape[-1]))
            if pair is None:
                continue
            k_mlp, v_mlp = pair
            k_in = (
                k_in
                + k_mlp(k_in.to(next(k_mlp.parameters()).dtype)).to(k_in.dtype) * patch.strength
            )
            v_in = (
                v_in
                + v_mlp(v_in.to(next(v_mlp.parameters()).dtype)).to(v_in.dtype) * patch.strength
            )
        query, key, value = attn.to_q(hidden_states), attn.to_k(k_in), attn.to_v(v_in)
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            mask = mask.view(batch, heads, -1, mask.shape[-1])
        out = F.scaled_dot_product_attention(
            split(query), split(key), split(value), attn_mask=mask, scale=attn.scale
        )
        out = out.transpose(1, 2).reshape(batch, length, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def applied(unet: Any, patches: Sequence[Any]) -> Iterator[None]:
    """The UNet with a MODEL's hypernetwork patches for the duration of the block: every
    attention layer gets a :class:`HypernetworkAttnProcessor`; the UNet's own processors
    are put back afterwards (also when the block raises). No patches: nothing changes."""
    nets = [p for p in patches if isinstance(p, HypernetworkPatch)]
    if not nets:
        yield
        return
    saved = dict(unet.attn_processors)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    for p in nets:
        p.network.to(device, dtype)
    unet.set_attn_processor(HypernetworkAttnProcessor(nets))
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def hypernetwork_names(models: ModelManager) -> list[str]:
    """HypernetworkLoader's choices: files under ``hypernetworks/``."""
    return models.names_of(KIND)


def hypernetwork_path(models: ModelManager, name: str) -> Path:
    """The file of hypernetwork ``name``; ModelError listing the others."""
    path = models.find_file(KIND, name, "hypernetwork")
    if path is None:
        available = ", ".join(hypernetwork_names(models)) or "(none)"
        raise ModelError(f"no hypernetwork named {name!r}; available: {available}")
    return path


def load_named(models: ModelManager, name: str) -> Hypernetwork:
    """The hypernetwork ``name``, kept in the model cache."""
    from runner.models.manager import Components

    path = hypernetwork_path(models, name)

    def build() -> Components:
        return Components(
            hypernetwork=read_hypernetwork(path, models.settings.allow_pickle_weights)
        )

    ckpt = models._component(f"hypernetwork:{name}", KIND, str(path), build)
    return ckpt.pipe.hypernetwork
