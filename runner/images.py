"""Images in and out: safe opening of untrusted files, tensor <-> PIL, and PNG metadata
as ComfyUI (``prompt``) and A1111 (``parameters``) write it."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from runner.errors import EaselError

MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192
ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class BadImage(EaselError):
    """An image file that is not an image, is too large, or is in a format easel refuses."""


def open_image(
    data: bytes | Path,
    *,
    max_bytes: int | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str = "",
) -> Image.Image:
    """Open an untrusted image: checks size in bytes, format, pixel count (decompression
    bombs) and decodes it fully. Returns an RGB or RGBA image with EXIF rotation applied."""
    label = name or (data.name if isinstance(data, Path) else "image")
    if isinstance(data, Path):
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            raise BadImage(f"{label}: file not found") from None
        if max_bytes is not None and size > max_bytes:
            raise BadImage(
                f"{label} is {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:.1f} MB allowed"
            )
        raw = data.read_bytes()
    else:
        raw = data
        if max_bytes is not None and len(raw) > max_bytes:
            raise BadImage(
                f"{label} is {len(raw) / 1e6:.1f} MB, more than the {max_bytes / 1e6:.1f} MB allowed"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in ACCEPTED_FORMATS:
                raise BadImage(
                    f"{label} is a {image.format} file; send PNG, JPEG, WebP, GIF or BMP"
                )
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"{label} is {width}x{height} px, more than the {max_pixels} pixels allowed"
                )
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{label} claims an enormous size (a decompression bomb?)") from None
    except Exception as exc:
        raise BadImage(f"{label} is not a readable image ({type(exc).__name__})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert(
            "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
        )
    return image


def pil_to_tensor(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE ``[1, H, W, 3]`` in 0..1, MASK ``[1, H, W]``) as ComfyUI's LoadImage gives them:
    the mask is 1 where the image is transparent."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(rgb.copy())[None]
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha.copy())[None]
    else:
        mask = torch.zeros((1, image.height, image.width), dtype=torch.float32)
    return tensor, mask


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """IMAGE ``[B, H, W, C]`` in 0..1 -> PIL images."""
    arr = (images.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a[..., :3] if a.shape[-1] >= 3 else a[..., 0]) for a in arr]


def a1111_parameters(params: dict[str, Any]) -> str:
    """The ``parameters`` text A1111 writes: prompt, negative, then ``Key: value`` pairs."""
    lines = [params.get("prompt", "")]
    if params.get("negative"):
        lines.append(f"Negative prompt: {params['negative']}")
    pairs = []
    for label, key in (
        ("Steps", "steps"),
        ("Sampler", "sampler"),
        ("Schedule type", "scheduler"),
        ("CFG scale", "cfg"),
        ("Seed", "seed"),
        ("Size", "size"),
        ("Model", "model"),
        ("Denoising strength", "denoise"),
        ("Lora", "loras"),
    ):
        if params.get(key) not in (None, ""):
            pairs.append(f"{label}: {params[key]}")
    lines.append(", ".join(pairs + ["Generator: easel"]))
    return "\n".join(lines)


def png_bytes(image: Image.Image, text: dict[str, str]) -> bytes:
    """PNG data with ``text`` chunks (``prompt``, ``parameters``...)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG file (``prompt``, ``parameters``...)."""
    with Image.open(path) as image:
        return dict(getattr(image, "text", {}) or {})


def workflow_from_png(path: Path) -> dict[str, Any] | None:
    """The API-format workflow stored in a PNG's ``prompt`` chunk, if any."""
    text = read_png_text(path).get("prompt")
    return json.loads(text) if text else None
