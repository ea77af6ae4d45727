"""ComfyUI's image nodes: LoadImage, SaveImage (PNG with the workflow in ``prompt`` and
``workflow`` chunks and A1111's ``parameters``), PreviewImage, SaveImageWebsocket,
SaveAnimatedWEBP, SaveAnimatedPNG, ImageScale and ImageScaleBy."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from datetime import datetime
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
    a1111_parameters,
    open_image,
    pil_to_tensor,
    png_bytes,
    tensor_to_pils,
)
from runner.ui_layout import api_to_ui

log = logging.getLogger(__name__)

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


def _parameters_for(workflow: dict[str, Any], node_id: str) -> dict[str, Any]:
    """Generation parameters for the A1111 chunk, read from the sampler this output comes from."""

    def upstream(start: str) -> list[str]:
        seen, order, stack = set(), [], [start]
        while stack:
            nid = stack.pop(0)
            if nid in seen or nid not in workflow:
                continue
            seen.add(nid)
            order.append(nid)
            for value in (workflow[nid].get("inputs") or {}).values():
                if isinstance(value, list) and len(value) == 2:
                    stack.append(str(value[0]))
        return order

    def literal(nid: str, name: str):
        value = (workflow.get(nid, {}).get("inputs") or {}).get(name)
        return None if isinstance(value, list) else value

    def text_of(link) -> str | None:
        if not isinstance(link, list):
            return None
        for nid in upstream(str(link[0])):
            if workflow[nid].get("class_type") == "CLIPTextEncode":
                text = literal(nid, "text")
                return None if text is None else str(text)
        return None

    params: dict[str, Any] = {}
    chain = upstream(node_id)
    sampler = next(
        (n for n in chain if workflow[n].get("class_type") in ("KSampler", "KSamplerAdvanced")),
        None,
    )
    if sampler is None:
        return params
    inputs = workflow[sampler].get("inputs") or {}
    params["prompt"] = text_of(inputs.get("positive")) or ""
    params["negative"] = text_of(inputs.get("negative")) or ""
    params["seed"] = (
        literal(sampler, "seed")
        if literal(sampler, "seed") is not None
        else literal(sampler, "noise_seed")
    )
    for key, name in (
        ("steps", "steps"),
        ("cfg", "cfg"),
        ("sampler", "sampler_name"),
        ("scheduler", "scheduler"),
    ):
        params[key] = literal(sampler, name)
    try:  # literals are as written in the workflow ("0.5" is a valid denoise)
        denoise = float(literal(sampler, "denoise"))
    except (TypeError, ValueError):
        denoise = None
    if denoise is not None and denoise < 1:
        params["denoise"] = denoise
    loras = []
    for nid in upstream(sampler):
        cls = workflow[nid].get("class_type")
        if cls == "CheckpointLoaderSimple":
            params["model"] = literal(nid, "ckpt_name")
        elif cls == "LoraLoader":
            loras.append(f"{literal(nid, 'lora_name')}:{literal(nid, 'strength_model')}")
        elif cls == "EmptyLatentImage":
            params["size"] = f"{literal(nid, 'width')}x{literal(nid, 'height')}"
    if loras:
        params["loras"] = " ".join(loras)
    return params


_PREFIX_OK = re.compile(r"^[\w\-. /]{1,120}$")
_TOKEN = re.compile(r"%([^%]*)%")
_DATE_PART = re.compile(r"yyyy|yy|dd?|MM?|hh?|mm?|ss?")
_CLOCK_TOKENS = ("year", "month", "day", "hour", "minute", "second")
_UNSAFE_IN_VALUE = re.compile(r"[^\w\-. ]")


def format_date(pattern: str, when: datetime) -> str:
    """ComfyUI's ``%date:...%`` format: yyyy, yy, M/MM (month), d/dd, h/hh (0-23), m/mm,
    s/ss; a doubled letter pads to two digits; other characters stay as they are."""

    def part(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "yyyy":
            return f"{when.year:04d}"
        if token == "yy":
            return f"{when.year % 100:02d}"
        value = {
            "d": when.day,
            "M": when.month,
            "h": when.hour,
            "m": when.minute,
            "s": when.second,
        }[token[0]]
        return f"{value:02d}" if len(token) == 2 else str(value)

    return _DATE_PART.sub(part, pattern)


def _node_widget(workflow: dict[str, Any], ref: str) -> str:
    """The literal value behind ``%Node.widget%``: the node by id, else by title
    (``_meta.title``), else by class type (ComfyUI's "Node name for S&R")."""
    name, _, widget = ref.rpartition(".")
    nodes = [n for n in workflow.values() if isinstance(n, dict)]
    candidates = [workflow[name]] if isinstance(workflow.get(name), dict) else []
    candidates = candidates or [n for n in nodes if (n.get("_meta") or {}).get("title") == name]
    candidates = candidates or [n for n in nodes if n.get("class_type") == name]
    if not candidates:
        raise ValueError(
            f"filename_prefix token %{ref}%: no node with id, title or type {name!r} in the workflow"
        )
    inputs = candidates[0].get("inputs") or {}
    if widget not in inputs:
        raise ValueError(f"filename_prefix token %{ref}%: node {name!r} has no input {widget!r}")
    value = inputs[widget]
    if isinstance(value, list):
        raise ValueError(
            f"filename_prefix token %{ref}%: input {widget!r} of node {name!r} is a link, not a value"
        )
    return _UNSAFE_IN_VALUE.sub("_", str(value))


def expand_prefix(
    filename_prefix: str,
    *,
    workflow: dict[str, Any] | None,
    width: int | None,
    height: int | None,
    when: datetime | None = None,
) -> str:
    """``filename_prefix`` with ComfyUI's tokens replaced: ``%date:yyyy-MM-dd%``,
    ``%width%``, ``%height%``, ``%year%`` ... ``%second%``, and ``%NodeTitle.widget%`` or
    ``%node_id.widget%`` (the literal input of that node; characters that cannot be in a
    file name become ``_``). ``%batch_num%`` is left for the caller (one per image).
    With ``workflow`` None, node references become ``x`` (for checks before a run)."""
    when = when or datetime.now()

    def token(match: re.Match[str]) -> str:
        body = match.group(1)
        if body.startswith("date:"):
            return format_date(body[5:], when)
        if body in ("width", "height"):
            value = width if body == "width" else height
            return "x" if value is None else str(value)
        if body in _CLOCK_TOKENS:
            value = getattr(when, body)
            return str(value) if body == "year" else f"{value:02d}"
        if body == "batch_num":
            return match.group(0)
        if "." in body and not body.startswith(".") and not body.endswith("."):
            return "x" if workflow is None else _node_widget(workflow, body)
        raise ValueError(
            f"filename_prefix {filename_prefix!r}: unknown token %{body}%; use %date:yyyy-MM-dd%, "
            "%width%, %height%, %year%..%second%, %batch_num% or %NodeTitle.widget%"
        )

    return _TOKEN.sub(token, filename_prefix)


def prefix_problem(filename_prefix: str, folder: Path) -> str | None:
    """Why ``filename_prefix`` (tokens already expanded) cannot name files inside
    ``folder``, or None."""
    if filename_prefix.startswith("/") or re.match(r"^[A-Za-z]:", filename_prefix):
        return f"filename_prefix {filename_prefix!r} is an absolute path; give a name (and subfolders) inside the output folder"
    if ".." in filename_prefix.split("/"):
        return f"filename_prefix {filename_prefix!r} goes up a folder with '..'; give a name (and subfolders) inside the output folder"
    if not _PREFIX_OK.match(filename_prefix) or filename_prefix.endswith("/"):
        return (
            f"filename_prefix {filename_prefix!r} may hold only letters, digits, '-', '_', '.', "
            "spaces and '/' between subfolders, and must end in a name (at most 120 characters)"
        )
    sub = filename_prefix.rpartition("/")[0]
    base = folder.resolve()
    target = (base / sub).resolve() if sub else base
    if target != base and base not in target.parents:  # a subfolder that is a symlink out
        return f"filename_prefix {filename_prefix!r} points outside the output folder"
    return None


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
    sub, _, stem = expanded.rpartition("/")
    target = (folder / sub).resolve() if sub else folder.resolve()
    target.mkdir(parents=True, exist_ok=True)
    return target, sub, stem


def _claim(target: Path, stem: str, suffix: str, counter: list[int]) -> Path:
    """A new file name ``{stem}_{counter:05d}_{suffix}``, claimed atomically (O_EXCL)."""
    while True:
        path = target / f"{stem}_{counter[0]:05d}_{suffix}"
        counter[0] += 1
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def _first_counter(target: Path, stem: str, suffix: str) -> list[int]:
    pattern = re.compile(re.escape(stem) + r"_(\d{5})_" + re.escape(suffix) + "$")
    return [
        1
        + max(
            (int(m.group(1)) for p in target.iterdir() if (m := pattern.match(p.name))), default=0
        )
    ]


def _metadata(ctx: NodeContext, images: torch.Tensor) -> dict[str, str]:
    """The text chunks of a saved image: ``prompt`` (API format), ``workflow`` (UI format,
    laid out from the prompt and the node specs) and A1111's ``parameters``."""
    workflow = ctx.extra.get("workflow") or {}
    text = {"prompt": json.dumps(workflow)}
    ui = ctx.extra.get("ui_workflow")
    try:
        text["workflow"] = json.dumps(
            ui if isinstance(ui, dict) else api_to_ui(workflow, ctx.env.node_types)
        )
    except Exception:  # pragma: no cover - never lose the image over its layout
        log.warning("could not lay out the workflow chunk", exc_info=True)
    params = _parameters_for(workflow, ctx.node_id)
    if params:
        if images.dim() == 4:  # the saved image's size, not the first pass's
            params["size"] = f"{int(images.shape[2])}x{int(images.shape[1])}"
        text["parameters"] = a1111_parameters(params)
    for key, value in (ctx.extra.get("png_text") or {}).items():
        text[str(key)] = str(value)
    return text


def _save(
    ctx: NodeContext,
    images: torch.Tensor,
    filename_prefix: str,
    folder: Path,
    kind: str,
    compress_level: int = 4,
) -> dict:
    target, sub, stem = _target(ctx, images, filename_prefix, folder)
    text = _metadata(ctx, images)
    results = []
    counter = _first_counter(target, stem.replace("%batch_num%", "0"), ".png")
    for index, pil in enumerate(tensor_to_pils(images)):
        data = png_bytes(pil, text, compress_level=compress_level)
        path = _claim(target, stem.replace("%batch_num%", str(index)), ".png", counter)
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
    text = _metadata(ctx, images)
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
    path = _claim(target, stem, ".webp", _first_counter(target, stem, ".webp"))
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
        _metadata(ctx, images),
        compress_level=int(compress_level),
        append_images=frames[1:],
        duration=_frame_ms(fps),
    )
    path = _claim(target, stem, ".png", _first_counter(target, stem, ".png"))
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
