"""ComfyUI's image nodes: LoadImage, SaveImage (PNG with the workflow in ``prompt`` and
``workflow`` chunks and A1111's ``parameters``), PreviewImage, SaveImageWebsocket,
SaveAnimatedWEBP, SaveAnimatedPNG, ImageScale and ImageScaleBy.

Output file names (``filename_prefix`` tokens, numbering) live in :mod:`runner.output_files`,
the text saved inside images in :mod:`runner.images_metadata`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from runner import Input, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.common import MAX_RESOLUTION, center_crop_nchw, resize_nchw, target_size
from runner.files import write_atomic
from runner.images import (
    ACCEPTED_FORMATS,
    BadImage,
    open_image,
    pil_to_tensor,
    png_bytes,
    tensor_to_pils,
)
from runner.images_metadata import output_text
from runner.images_metadata import parameters_for as _parameters_for  # noqa: F401 (tests)
from runner.output_files import (  # noqa: F401 (expand_prefix, format_date: re-exported)
    NumberedNames,
    expand_prefix,
    format_date,
    output_folder,
    prefix_problem,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def input_image_names(env) -> list[str]:
    """Image files in the input folder (what LoadImage accepts)."""
    base = env.settings.input_dir
    if not base.is_dir():
        return []
    return sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def input_image_path(env, name: str) -> Path:
    """The file for an input image name; names never escape the input folder."""
    base = env.settings.input_dir.resolve()
    path = (base / name).resolve()
    if base not in path.parents:
        raise ValueError(f"image name {name!r} points outside the input folder")
    if not path.is_file():
        raise FileNotFoundError(f"no image named {name!r} in the input folder {base}")
    return path


def image_too_big(path: Path, name: str, settings) -> str | None:
    """Why the image file at ``path`` is too big to load, or None; reads only its header.

    PIL's ``Image.open`` is lazy: it parses the header (size, format) and decodes nothing,
    so an 8000x8000 PNG is refused in microseconds instead of decoded into gigabytes."""
    max_bytes = int(settings.max_upload_mb * 1024 * 1024)
    size = path.stat().st_size
    if size > max_bytes:
        return f"image {name!r} is {size / 1e6:.1f} MB, more than the {max_bytes / 1e6:.1f} MB allowed (max_upload_mb)"
    try:
        with Image.open(path) as header:
            width, height, kind = header.width, header.height, header.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image {name!r} claims an enormous size (a decompression bomb?)"
    except Exception as exc:
        return f"{name!r} is not a readable image ({type(exc).__name__})"
    if kind not in ACCEPTED_FORMATS:
        return f"{name!r} is a {kind} file; LoadImage takes PNG, JPEG, WebP, GIF or BMP"
    if width > settings.max_width or height > settings.max_height:
        return (
            f"image {name!r} is {width}x{height} px, larger than the configured limit "
            f"{settings.max_width}x{settings.max_height} (max_width x max_height)"
        )
    return None


def _check_input_image(name: str, env) -> str | None:
    try:
        path = input_image_path(env, name)
        return image_too_big(path, name, env.settings)
    except (ValueError, FileNotFoundError) as exc:
        return str(exc)
    except OSError as exc:  # a name the file system cannot look up (too long...)
        return f"no image named {name!r}: {exc.strerror or exc}"


def _image_changed(ctx: NodeContext, image: str, **_) -> str:
    return hashlib.sha256(input_image_path(ctx.env, image).read_bytes()).hexdigest()


@node(
    "LoadImage",
    inputs=[Input("image", T.COMBO, choices=input_image_names, check=_check_input_image)],
    outputs=(T.IMAGE, T.MASK),
    output_names=("IMAGE", "MASK"),
    category="image",
    is_changed=_image_changed,
)
def load_image(ctx: NodeContext, image: str):
    """Loads an image from the input folder (checked for type, size and content)."""
    path = input_image_path(ctx.env, image)
    too_big = image_too_big(path, image, ctx.env.settings)  # the file may have changed since
    if too_big:
        raise BadImage(too_big)
    pil = open_image(path, max_bytes=int(ctx.env.settings.max_upload_mb * 1024 * 1024))
    return pil_to_tensor(pil)


def _check_prefix(filename_prefix: str, env) -> str | None:
    """Before the run: the tokens are known and the prefix, expanded with placeholders
    for the values only known when saving, stays inside the output folder."""
    try:
        expanded = expand_prefix(filename_prefix, workflow=None, width=None, height=None)
    except ValueError as exc:
        return str(exc)
    return prefix_problem(expanded.replace("%batch_num%", "0"), env.settings.output_dir)


def _check_prefix_nodes(literals: dict[str, Any], workflow: Any) -> list[tuple[str, str]]:
    """Before the run, with the whole workflow: every ``%Node.widget%`` token names a
    node's literal input (else saving would fail only after sampling)."""
    prefix = literals.get("filename_prefix")
    if not isinstance(prefix, str) or not isinstance(workflow, dict):
        return []
    try:
        expand_prefix(prefix, workflow=workflow, width=None, height=None)
    except ValueError as exc:
        return [("filename_prefix", str(exc))]
    return []


def _target(
    ctx: NodeContext, images: torch.Tensor, filename_prefix: str, folder: Path
) -> tuple[Path, str, str]:
    """(folder to write in, subfolder, file stem) for ``filename_prefix`` with its tokens
    expanded for this workflow and these images; refuses names outside ``folder``."""
    expanded = expand_prefix(
        filename_prefix,
        workflow=ctx.extra.get("workflow") or {},
        width=int(images.shape[2]) if images.dim() == 4 else None,
        height=int(images.shape[1]) if images.dim() == 4 else None,
    )
    problem = prefix_problem(expanded.replace("%batch_num%", "0"), folder)
    if problem:
        raise ValueError(problem)
    return output_folder(folder, expanded)


def _save(
    ctx: NodeContext,
    images: torch.Tensor,
    filename_prefix: str,
    folder: Path,
    kind: str,
    compress_level: int = 4,
) -> dict:
    target, sub, stem = _target(ctx, images, filename_prefix, folder)
    text = output_text(ctx, images)
    results = []
    names = NumberedNames(target, stem.replace("%batch_num%", "0"), ".png")
    for index, pil in enumerate(tensor_to_pils(images)):
        data = png_bytes(pil, text, compress_level=compress_level)
        path = names.claim(stem.replace("%batch_num%", str(index)))
        write_atomic(path, data)
        results.append({"filename": path.name, "subfolder": sub, "type": kind, "path": str(path)})
    return {"ui": {"images": results}, "result": ()}


@node(
    "SaveImage",
    inputs=[
        Input("images", T.IMAGE),
        Input("filename_prefix", T.STRING, default="ComfyUI", check=_check_prefix),
    ],
    outputs=(),
    output_node=True,
    validate_graph=_check_prefix_nodes,
    category="image",
)
def save_image(ctx: NodeContext, images: torch.Tensor, filename_prefix: str):
    """Saves images as PNG in the output folder, with the workflow (``prompt`` and UI-format
    ``workflow``) and A1111 ``parameters`` text chunks. ``filename_prefix`` takes ComfyUI's
    tokens (``%date:yyyy-MM-dd%``, ``%width%``, ``%KSampler.seed%``...) and subfolders."""
    return _save(ctx, images, filename_prefix, ctx.env.settings.output_dir, "output")


@node(
    "PreviewImage",
    inputs=[Input("images", T.IMAGE)],
    outputs=(),
    output_node=True,
    category="image",
)
def preview_image(ctx: NodeContext, images: torch.Tensor):
    """Saves images to the temporary folder for a quick look."""
    return _save(ctx, images, "preview", ctx.env.settings.cache_dir / "temp", "temp", 1)


@node(
    "SaveImageWebsocket",
    inputs=[Input("images", T.IMAGE)],
    outputs=(),
    output_node=True,
    category="api node/image",
)
def save_image_websocket(ctx: NodeContext, images: torch.Tensor):
    """Hands the images to the caller rather than the output folder (ComfyUI's websocket
    output): they land in the temporary folder and in the job's outputs."""
    return _save(ctx, images, "websocket", ctx.env.settings.cache_dir / "temp", "temp", 1)


WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
"""SaveAnimatedWEBP's ``method`` names -> libwebp's effort (0 fast .. 6 slow, smaller)."""


def _frame_ms(fps: float) -> int:
    return int(1000.0 / fps)


@node(
    "SaveAnimatedWEBP",
    inputs=[
        Input("images", T.IMAGE),
        Input("filename_prefix", T.STRING, default="ComfyUI", check=_check_prefix),
        Input("fps", T.FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01),
        Input("lossless", T.BOOLEAN, default=True),
        Input("quality", T.INT, default=80, min=0, max=100),
        Input("method", T.COMBO, choices=tuple(WEBP_METHODS)),
    ],
    outputs=(),
    output_node=True,
    validate_graph=_check_prefix_nodes,
    category="image/animation",
)
def save_animated_webp(
    ctx: NodeContext,
    images: torch.Tensor,
    filename_prefix: str,
    fps: float,
    lossless: bool,
    quality: int,
    method: str,
):
    """Saves an image batch as one animated WebP (each image a frame, 1000/fps ms each),
    with the workflow in its EXIF as ComfyUI writes it (``prompt:``, ``workflow:``)."""
    target, sub, stem = _target(ctx, images, filename_prefix, ctx.env.settings.output_dir)
    stem = stem.replace("%batch_num%", "0")
    text = output_text(ctx, images)
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + text["prompt"]
    if "workflow" in text:
        exif[0x010F] = "workflow:" + text["workflow"]
    frames = tensor_to_pils(images)
    buf = io.BytesIO()
    frames[0].save(
        buf,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=_frame_ms(fps),
        exif=exif,
        lossless=bool(lossless),
        quality=int(quality),
        method=WEBP_METHODS[method],
    )
    path = NumberedNames(target, stem, ".webp").claim(stem)
    write_atomic(path, buf.getvalue())
    result = {"filename": path.name, "subfolder": sub, "type": "output", "path": str(path)}
    return {"ui": {"images": [result], "animated": (True,)}, "result": ()}


@node(
    "SaveAnimatedPNG",
    inputs=[
        Input("images", T.IMAGE),
        Input("filename_prefix", T.STRING, default="ComfyUI", check=_check_prefix),
        Input("fps", T.FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01),
        Input("compress_level", T.INT, default=4, min=0, max=9),
    ],
    outputs=(),
    output_node=True,
    validate_graph=_check_prefix_nodes,
    category="image/animation",
)
def save_animated_png(
    ctx: NodeContext, images: torch.Tensor, filename_prefix: str, fps: float, compress_level: int
):
    """Saves an image batch as one animated PNG (APNG, 1000/fps ms a frame) with the
    ``prompt``, ``workflow`` and ``parameters`` text chunks."""
    target, sub, stem = _target(ctx, images, filename_prefix, ctx.env.settings.output_dir)
    stem = stem.replace("%batch_num%", "0")
    frames = tensor_to_pils(images)
    data = png_bytes(
        frames[0],
        output_text(ctx, images),
        compress_level=int(compress_level),
        append_images=frames[1:],
        duration=_frame_ms(fps),
    )
    path = NumberedNames(target, stem, ".png").claim(stem)
    write_atomic(path, data)
    result = {"filename": path.name, "subfolder": sub, "type": "output", "path": str(path)}
    return {"ui": {"images": [result], "animated": (True,)}, "result": ()}


IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def scale_images(
    images: torch.Tensor, width: int, height: int, method: str, crop: str
) -> torch.Tensor:
    """Resize IMAGE ``[B, H, W, C]``; lanczos goes through PIL."""
    if method != "lanczos":
        return (
            resize_nchw(images.permute(0, 3, 1, 2), width, height, method, crop)
            .permute(0, 2, 3, 1)
            .clamp(0, 1)
        )
    width, height = target_size(images.shape[2], images.shape[1], width, height)
    nchw = images.permute(0, 3, 1, 2)
    if crop == "center":
        nchw = center_crop_nchw(nchw, width, height)
    out = []
    for pil in tensor_to_pils(nchw.permute(0, 2, 3, 1)):
        out.append(pil_to_tensor(pil.resize((width, height), Image.Resampling.LANCZOS))[0])
    return torch.cat(out)


@node(
    "ImageScale",
    inputs=[
        Input("image", T.IMAGE),
        Input("upscale_method", T.COMBO, choices=IMAGE_UPSCALE_METHODS),
        Input("width", T.INT, default=512, min=0, max=MAX_RESOLUTION, step=1, limit="max_width"),
        Input("height", T.INT, default=512, min=0, max=MAX_RESOLUTION, step=1, limit="max_height"),
        Input("crop", T.COMBO, choices=("disabled", "center")),
    ],
    outputs=(T.IMAGE,),
    category="image",
)
def image_scale(
    ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
):
    """Resizes images (0 keeps the aspect ratio from the other side)."""
    return (scale_images(image, width, height, upscale_method, crop),)


@node(
    "ImageScaleBy",
    inputs=[
        Input("image", T.IMAGE),
        Input("upscale_method", T.COMBO, choices=IMAGE_UPSCALE_METHODS),
        Input("scale_by", T.FLOAT, default=1.0, min=0.01, max=8.0, step=0.01),
    ],
    outputs=(T.IMAGE,),
    category="image",
)
def image_scale_by(ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float):
    """Resizes images by a factor."""
    w, h = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
    if w > ctx.env.settings.max_width or h > ctx.env.settings.max_height:
        raise ValueError(
            f"scaling to {w}x{h} px exceeds the configured limit {ctx.env.settings.max_width}x{ctx.env.settings.max_height}"
        )
    return (scale_images(image, max(w, 1), max(h, 1), upscale_method, "disabled"),)


@hookimpl
def easel_node_types():
    """ComfyUI's image loading, saving and scaling nodes."""
    return [
        load_image,
        save_image,
        preview_image,
        save_image_websocket,
        save_animated_webp,
        save_animated_png,
        image_scale,
        image_scale_by,
    ]
