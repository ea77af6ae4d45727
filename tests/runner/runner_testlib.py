"""Helpers for the runner's tests: workflows on the tiny model, reading images and latents.

Imported by the test modules as ``runner_testlib`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

TXT2IMG = {
    "prompt": "a red fox in the snow",
    "negative": "blurry",
    "seed": 5,
    "steps": 4,
    "cfg": 7.0,
    "width": 64,
    "height": 64,
}
"""The request behind most tests: small and fast, with CFG and a negative prompt."""


def txt2img_workflow(env, **overrides: Any) -> dict[str, Any]:
    """The txt2img template's workflow (ids 3 KSampler, 4 loader, 5 latent, 6/7 prompts,
    8 decode, 9 save) for ``TXT2IMG`` with ``overrides``."""
    from runner.templates import GenerationRequest

    return env.build_workflow(GenerationRequest(**{**TXT2IMG, **overrides}))


def image_of(result, node_id: str = "8") -> np.ndarray:
    """The IMAGE output of ``node_id`` (VAEDecode by default) as a float array [B, H, W, C]."""
    return result.values[node_id][0].detach().cpu().numpy()


def latent_of(result, node_id: str = "3") -> np.ndarray:
    """The LATENT output of ``node_id`` (KSampler by default) as an array."""
    return result.values[node_id][0]["samples"].detach().cpu().numpy()


def png_pixels(path: str | Path) -> np.ndarray:
    """The pixels of a PNG file as uint8 [H, W, C]."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def with_inputs(workflow: dict[str, Any], node_id: str, **inputs: Any) -> dict[str, Any]:
    """A copy of ``workflow`` with some inputs of one node changed."""
    out = copy.deepcopy(workflow)
    out[node_id]["inputs"].update(inputs)
    return out


def write_gradient_png(path: Path, width: int = 64, height: int = 64) -> Path:
    """A smooth, colourful test image (an init image for img2img)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack(
        [
            x * 255 // max(width - 1, 1),
            y * 255 // max(height - 1, 1),
            (x + y) * 127 // max(width + height - 2, 1),
        ],
        -1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path
