"""Built-in safety plugin: checks results with diffusers' Stable Diffusion safety checker
when one is configured and present locally; otherwise every image passes.

Configuration: ``safety_checker_dir`` (``EASEL_SAFETY_CHECKER_DIR``), a local folder holding
a ``StableDiffusionSafetyChecker`` (``config.json`` + safetensors weights) and its
``preprocessor_config.json`` (as in a Stable Diffusion repository's ``safety_checker`` and
``feature_extractor`` folders; both may be in the same folder). Nothing is downloaded.
Prompts are not checked here: the bot's ban list does that, and other plugins may
implement ``easel_check_prompt``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from runner import hookimpl

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def checker_folder(settings: Any) -> Path | None:
    """The configured checker folder, if it is set and exists."""
    folder = getattr(settings, "safety_checker_dir", None)
    if not folder:
        return None
    path = Path(folder).expanduser()
    return path if (path / "config.json").is_file() else None


def _load(folder: Path) -> tuple[Any, Any] | None:
    key = str(folder)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        try:
            from diffusers.pipelines.stable_diffusion.safety_checker import (
                StableDiffusionSafetyChecker,
            )
            from transformers import CLIPImageProcessor

            checker = StableDiffusionSafetyChecker.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True
            ).eval()
            processor_dir = (
                folder
                if (folder / "preprocessor_config.json").is_file()
                else folder.parent / "feature_extractor"
            )
            processor = CLIPImageProcessor.from_pretrained(
                str(processor_dir), local_files_only=True
            )
            _loaded[key] = (checker, processor)
        except Exception:
            log.exception(
                "could not load the safety checker from %s; images pass unchecked", folder
            )
            _loaded[key] = None
        return _loaded[key]


def is_flagged(image: Any, folder: Path) -> bool:
    """Whether diffusers' safety checker flags this PIL image."""
    import numpy as np
    import torch

    loaded = _load(folder)
    if loaded is None:
        return False
    checker, processor = loaded
    inputs = processor(images=[image.convert("RGB")], return_tensors="pt")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[None] / 255.0
    with torch.no_grad():
        _, flags = checker(images=pixels, clip_input=inputs.pixel_values.to(checker.dtype))
    return bool(flags[0])


@hookimpl
def easel_check_output(image: Any, prompt: str, user_id: int | None, env: Any) -> str | None:
    """Flag an image as "nsfw" when the configured safety checker says so; else pass."""
    folder = checker_folder(env.settings)
    if folder is None:
        return None
    return "nsfw" if is_flagged(image, folder) else None
