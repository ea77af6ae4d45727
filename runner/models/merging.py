"""Model merging as ComfyUI's ``comfy_extras/nodes_model_merging.py`` defines it, computed
into new weights (ComfyUI patches lazily; easel makes a new module once per set of inputs).

ComfyUI adds model2's weights to model1 as a patch ``(strength_patch, w2,
strength_model)``, and a patched weight is ``w1 * strength_model + strength_patch * w2``
(``comfy/lora.py`` ``calculate_weight``), so per tensor:

==================  ==========================================  ======================
node                weight                                      keys
==================  ==========================================  ======================
ModelMergeSimple    ``ratio * w1 + (1 - ratio) * w2``           UNet
ModelMergeBlocks    the same with ``input``/``middle``/``out``  UNet, by LDM name
ModelMergeAdd       ``w1 + w2``                                 UNet
ModelMergeSubtract  ``multiplier * w1 - multiplier * w2``       UNet
CLIPMergeSimple     ``ratio * w1 + (1 - ratio) * w2``           text encoder(s), but
                                                                ``position_ids`` and
                                                                ``logit_scale`` (clip1's)
==================  ==========================================  ======================

ModelMergeBlocks picks each key's ratio by the longest of ``input``, ``middle``, ``out``
that its original-layout name starts with (``input_blocks.*``, ``middle_block.*``,
``output_blocks.*`` and ``out.*``); other keys (time and label embeddings) take
``input``'s, ComfyUI's first argument.

**LoRAs on the inputs are applied first**, as in ComfyUI (a MODEL's LoRA patches come
before the merge patch; model2's key patches carry its own LoRAs): each input's weights
are its base weights plus the deltas of its active LoRA adapters
(:func:`effective_state_dict`), so LoraLoader -> CheckpointSave bakes a LoRA in.

**Memory.** The result is one new module (the UNet, or the text encoders), built on the
meta device and given the merged tensors one by one (computed in float32, stored in the
model's dtype), so a merge needs the two inputs plus one copy; the new checkpoint joins
the model manager's cache and budget (:meth:`ModelManager.add_derived`) under a key made
of the inputs' names, LoRAs and the node's numbers, so equal merges share weights.
The other components (VAE, scheduler, tokenizers) are the input's own, shared; a merged
MODEL has no text encoder and a merged CLIP no UNet, so a LoRA loaded into one never
reaches modules another checkpoint owns.

Merging models of different families (SD1 with SDXL...) is refused naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from runner.errors import ModelError

CLIP_SKIP_SUFFIXES = (".position_ids", ".logit_scale")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")

Coefficients = Callable[[str], tuple[float, float]]
"""key -> ``(a, b)``: the merged weight is ``a * w1 + b * w2``."""


def effective_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s weights with its active LoRA adapters added (peft layers: base weight
    plus each active adapter's ``get_delta_weight``, which carries its strength), under the
    plain names the module has without adapters. Call with the checkpoint's lock held and
    the wanted LoRAs activated."""
    deltas: dict[str, torch.Tensor] = {}
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        BaseTunerLayer = ()  # type: ignore[assignment]
    for name, sub in module.named_modules():
        if not isinstance(sub, BaseTunerLayer) or sub.disable_adapters or sub.merged:
            continue
        total = None
        for adapter in sub.active_adapters:
            if adapter not in getattr(sub, "lora_A", {}):
                continue
            delta = sub.get_delta_weight(adapter)
            total = delta if total is None else total + delta
        if total is not None:
            deltas[f"{name}.weight"] = total
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        delta = deltas.get(clean)
        out[clean] = value if delta is None else value + delta.to(value.dtype)
    return out


def merge_state_dicts(
    sd1: Mapping[str, torch.Tensor],
    sd2: Mapping[str, torch.Tensor],
    coefficients: Coefficients,
    *,
    skip: Callable[[str], bool] = lambda key: False,
    what: str = "model",
) -> dict[str, torch.Tensor]:
    """``a * w1 + b * w2`` per key of ``sd1`` (float32 arithmetic, ``sd1``'s dtype); keys
    ``skip`` accepts keep ``sd1``'s tensor. A key missing from ``sd2`` or of another shape
    is a ModelError naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, w1 in sd1.items():
        if skip(key) or not torch.is_floating_point(w1):
            out[key] = w1.detach().clone()
            continue
        w2 = sd2.get(key)
        if w2 is None:
            raise ModelError(f"cannot merge the {what}s: the second has no tensor {key!r}")
        if w2.shape != w1.shape:
            raise ModelError(
                f"cannot merge the {what}s: {key!r} is {list(w1.shape)} in the first and "
                f"{list(w2.shape)} in the second (different architectures)"
            )
        a, b = coefficients(key)
        merged = w1.detach().float() * a + w2.detach().to(w1.device).float() * b
        out[key] = merged.to(w1.dtype)
    return out


def block_coefficients(config: Mapping[str, Any], ratios: Mapping[str, float]) -> Coefficients:
    """ModelMergeBlocks' per-key ``(ratio, 1 - ratio)`` (see the module docstring);
    ``ratios`` in ComfyUI's order, the first the default."""
    from runner.models.original_layout import unet_key

    default = next(iter(ratios.values()))

    def coefficients(key: str) -> tuple[float, float]:
        ldm = unet_key(key, config)
        ratio, best = default, 0
        for prefix, value in ratios.items():
            if ldm.startswith(prefix) and len(prefix) > best:
                ratio, best = value, len(prefix)
        return ratio, 1.0 - ratio

    return coefficients


def check_same_family(first: Any, second: Any, node: str, what: str = "model") -> None:
    """ModelError naming both checkpoints unless they are of one architecture family
    (SD2 512 px and 768 px count as one)."""
    from runner.models.families import lora_family

    if lora_family(first.family) != lora_family(second.family):
        raise ModelError(
            f"{node}: {what}1 ({first.name}) is {first.family} but {what}2 ({second.name}) is "
            f"{second.family}; models of different families cannot be merged"
        )


def new_module_like(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> Any:
    """A new module of ``module``'s class and config holding ``state`` (built on the meta
    device, the tensors assigned, so no second set of random weights is made)."""
    base = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
    config = base.config
    with torch.device("meta"):
        if hasattr(type(base), "from_config"):
            new = type(base).from_config(config)
        else:
            new = type(base)(config)
    missing, unexpected = new.load_state_dict(dict(state), strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(
            f"the merged weights do not fit {type(base).__name__}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, buffer in list(new.named_buffers()):
        if buffer.device.type == "meta":
            owner, _, attr = name.rpartition(".")
            source = base.get_buffer(name)
            new.get_submodule(owner).register_buffer(attr, source.clone(), persistent=False)
    if hasattr(base, "attn_processors") and hasattr(new, "set_attn_processor"):
        new.set_attn_processor(dict(base.attn_processors))
    return new.eval()


def derived_pipe(pipe: Any, **replace: Any) -> Any:
    """A pipeline of ``pipe``'s class with the same components but ``replace``d ones."""
    components = dict(pipe.components)
    components.update(replace)
    kwargs: dict[str, Any] = {}
    if "safety_checker" in components:
        kwargs["requires_safety_checker"] = False
    if "text_encoder_2" in components:
        kwargs["add_watermarker"] = False
    new = type(pipe)(**components, **kwargs)
    new.set_progress_bar_config(disable=True)
    return new


def module_bytes(*modules: Any) -> int:
    """Bytes of the parameters of ``modules`` (None ignored)."""
    return sum(
        p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters()
    )


__all__ = [
    "CLIP_SKIP_SUFFIXES",
    "TEXT_ENCODER_NAMES",
    "block_coefficients",
    "check_same_family",
    "derived_pipe",
    "effective_state_dict",
    "merge_state_dicts",
    "module_bytes",
    "new_module_like",
]
