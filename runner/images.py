"""Images in and out: safe opening of untrusted files, tensor <-> PIL, and image metadata
as ComfyUI (``prompt``, ``workflow``) and A1111 (``parameters``) write it."""

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


NO_ALPHA_MASK_SIZE = (64, 64)
"""``(height, width)`` of the all-zero MASK LoadImage gives for an image without alpha
(ComfyUI's ``LoadImage``)."""


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
    """(IMAGE ``[1, H, W, 3]`` in 0..1, MASK) as ComfyUI's LoadImage gives them: the mask
    is ``[1, H, W]``, 1 where the image is transparent; an image without alpha gets
    :data:`NO_ALPHA_MASK_SIZE` zeros (``[1, 64, 64]``, ComfyUI's placeholder, whatever the
    image's size: every mask consumer resizes its mask to what it masks)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(rgb.copy())[None]
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha.copy())[None]
    else:
        mask = torch.zeros((1, *NO_ALPHA_MASK_SIZE), dtype=torch.float32)
    return tensor, mask


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """IMAGE ``[B, H, W, C]`` in 0..1 -> PIL images."""
    arr = (images.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a[..., :3] if a.shape[-1] >= 3 else a[..., 0]) for a in arr]


A1111_SAMPLERS = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "restart": "Restart",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "lcm": "LCM",
}
"""ComfyUI sampler name -> the label A1111 writes (its ``sd_samplers_*`` lists); names A1111
has no sampler for are written as they are."""

A1111_SCHEDULES = {
    "normal": "Normal",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "ddim_uniform": "DDIM",
    "beta": "Beta",
    "kl_optimal": "KL Optimal",
}
"""ComfyUI scheduler name -> A1111's "Schedule type" label (A1111 1.9+, ``sd_schedulers``)."""


def a1111_quote(value: Any) -> str:
    """A value as A1111 writes it in ``parameters``: as is, unless it holds a comma, a
    colon or a newline, then as a JSON string (double quotes, backslash escapes)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_parameters(params: dict[str, Any]) -> str:
    """The ``parameters`` text A1111 writes: prompt, ``Negative prompt: ...``, then
    ``Key: value`` pairs (values quoted as A1111 does, A1111's sampler and schedule labels)."""
    lines = [params.get("prompt", "")]
    if params.get("negative"):
        lines.append(f"Negative prompt: {params['negative']}")
    shown = dict(params)
    if shown.get("sampler") is not None:
        shown["sampler"] = A1111_SAMPLERS.get(str(shown["sampler"]), shown["sampler"])
    if shown.get("scheduler") is not None:
        shown["scheduler"] = A1111_SCHEDULES.get(str(shown["scheduler"]), shown["scheduler"])
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
        if shown.get(key) not in (None, ""):
            pairs.append(f"{label}: {a1111_quote(shown[key])}")
    lines.append(", ".join(pairs + ["Generator: easel"]))
    return "\n".join(lines)


def png_bytes(
    image: Image.Image,
    text: dict[str, str],
    *,
    compress_level: int = 4,
    append_images: list[Image.Image] | None = None,
    duration: int | None = None,
) -> bytes:
    """PNG data with ``text`` chunks (``prompt``, ``workflow``, ``parameters``...); with
    ``append_images``, an animated PNG whose frames last ``duration`` ms each."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    extra: dict[str, Any] = {}
    if append_images is not None:
        extra = {"save_all": True, "append_images": append_images, "duration": duration}
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level, **extra)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHUNK = 32 * 1024 * 1024
"""Largest text a compressed chunk may expand to (a zip bomb is refused)."""


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The text chunks of PNG data (``tEXt``, ``zTXt``, ``iTXt``, and ComfyUI's ``comf``
    chunks of animated PNGs), parsed from the bytes without decoding any pixel.
    Raises ValueError for data that is not a PNG or is cut short."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise ValueError("the PNG file is cut short")
        pos += 12 + length
        if kind == b"IEND":
            break
        if kind in (b"tEXt", b"comf"):
            key, _, text = body.partition(b"\0")
            out[key.decode("latin-1")] = text.decode(
                "latin-1" if kind == b"tEXt" else "utf-8", "replace"
            )
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[:1] == b"\1", rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            out[key.decode("latin-1")] = (_inflate(text) if compressed else text).decode(
                "utf-8", "replace"
            )
    return out


def _inflate(data: bytes) -> bytes:
    import zlib

    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT_CHUNK)
    except zlib.error as exc:
        raise ValueError(f"a compressed text chunk is corrupt ({exc})") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"a compressed text chunk expands to more than {MAX_TEXT_CHUNK} bytes")
    return text


def webp_workflow_text(data: bytes) -> dict[str, str]:
    """``prompt`` / ``workflow`` from a WebP's EXIF as ComfyUI writes them (tags 0x0110
    ``prompt:{...}`` and 0x010F downwards ``workflow:{...}``); reads no pixel."""
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
    out: dict[str, str] = {}
    for tag in (0x0110, 0x010F, 0x010E, 0x010D):
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and ":" in value:
            key, _, text = value.partition(":")
            out.setdefault(key.strip(), text)
    return out


def image_workflow_text(data: bytes) -> dict[str, str]:
    """The text metadata of a PNG or WebP file's bytes (``prompt``, ``workflow``,
    ``parameters``...). Raises ValueError for other data."""
    if data.startswith(PNG_SIGNATURE):
        return png_text_chunks(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        try:
            return webp_workflow_text(data)
        except Exception as exc:
            raise ValueError(f"not a readable WebP file ({type(exc).__name__})") from None
    raise ValueError("not a PNG or WebP file")


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG file (``prompt``, ``workflow``, ``parameters``...)."""
    return png_text_chunks(Path(path).read_bytes())


def workflow_from_png(path: Path) -> dict[str, Any] | None:
    """The API-format workflow stored in a PNG's ``prompt`` chunk, if any."""
    text = read_png_text(path).get("prompt")
    return json.loads(text) if text else None
