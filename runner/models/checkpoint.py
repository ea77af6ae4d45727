"""A loaded checkpoint: its diffusers pipeline, what easel knows about it, and the LoRA
adapters kept loaded in it (switching between LoRAs only changes their weights)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runner.errors import ModelError
from runner.files import refuse_pickle

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A loaded checkpoint: a diffusers pipeline plus what easel knows about it.

    ``lock`` serialises use of the shared modules (LoRA switching, sampling).
    """

    name: str
    family: str
    pipe: Any
    device: torch.device
    dtype: torch.dtype
    source: str
    size_bytes: int
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    adapters: dict[str, str] = field(default_factory=dict)
    """LoRA file key (path and mtime) -> adapter name, for adapters kept loaded."""
    active: tuple | None = ()
    """The (adapter, unet weight, text encoder weight) triples in force; None when unknown."""
    loads: int = 0

    @property
    def is_xl(self) -> bool:
        return self.family == "sdxl"

    def activate_loras(
        self,
        unet: Sequence[tuple[Path, float]] = (),
        text_encoder: Sequence[tuple[Path, float]] = (),
    ) -> None:
        """Make exactly these LoRAs active with these weights, loading any not yet loaded.

        Call with ``lock`` held. Adapters stay loaded between jobs; only their weights
        change (``set_adapters``), so switching costs about a millisecond.
        """
        wanted: dict[str, dict[str, float]] = {}
        for component, items in (("unet", unet), ("text_encoder", text_encoder)):
            for path, weight in items:
                adapter = self._ensure_adapter(path)
                weights = wanted.setdefault(adapter, {"unet": 0.0, "text_encoder": 0.0})
                weights[component] += float(weight)
        state = tuple(sorted((a, w["unet"], w["text_encoder"]) for a, w in wanted.items()))
        if state == self.active:
            return
        if not wanted:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            names = list(wanted)
            weights: list[dict[str, float]] = []
            for name in names:
                w = dict(wanted[name])
                if self.is_xl:
                    w["text_encoder_2"] = w["text_encoder"]
                weights.append(w)
            self.pipe.set_adapters(names, adapter_weights=weights)
        self.active = state

    def _ensure_adapter(self, path: Path) -> str:
        key = f"{path.resolve()}:{path.stat().st_mtime_ns}"
        adapter = self.adapters.get(key)
        if adapter is not None:
            return adapter
        from safetensors.torch import load_file

        refuse_pickle(path)
        # Names are never reused, even after a failed load, and loading changes which
        # adapters are active: the next activate_loras must set them again.
        self.loads += 1
        adapter = f"lora{self.loads}"
        self.active = None
        try:
            state_dict = load_file(str(path))
            self.pipe.load_lora_weights(state_dict, adapter_name=adapter)
        except Exception as exc:
            self._drop_partial_adapter(adapter)
            raise ModelError(
                f"LoRA {path.name} could not be loaded into {self.name}: {exc}"
            ) from exc
        self.adapters[key] = adapter
        return adapter

    def _drop_partial_adapter(self, adapter: str) -> None:
        """Remove what a failed load left behind (it may have reached the UNet but not the
        text encoder), so that it never changes later images."""
        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(self.pipe, component, None)
            if module is None or adapter not in (getattr(module, "peft_config", None) or {}):
                continue
            try:
                if hasattr(module, "delete_adapters"):
                    module.delete_adapters([adapter])
                else:
                    from diffusers.utils.peft_utils import delete_adapter_layers

                    delete_adapter_layers(module, adapter)
            except Exception:  # pragma: no cover - best effort; the adapter stays disabled
                log.warning(
                    "could not remove the partly loaded LoRA adapter %s", adapter, exc_info=True
                )


__all__ = ["Checkpoint"]
