"""Images on disk: uploads checked and stored as init images (results are stored by the
history service). Names never come from users."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from runner.files import write_atomic
from runner.images import BadImage, open_image, sha256_bytes


def store_input_image(settings, data: bytes, *, label: str = "image") -> str:
    """Check an uploaded image (type, size, pixels, content) and save it as PNG in the
    input folder under its hash; returns the name LoadImage takes. Raises BadImage."""
    image = open_image(data, max_bytes=int(settings.max_upload_mb * 1024 * 1024), name=label)
    if image.width > settings.max_width or image.height > settings.max_height:
        # LoadImage refuses images over the limit; an init image is scaled to the requested
        # size anyway, so a large photo is fitted inside the limit once, here.
        image.thumbnail((settings.max_width, settings.max_height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    png = buf.getvalue()
    name = f"{sha256_bytes(png)[:24]}.png"
    target = settings.input_dir / name
    if not target.exists():
        write_atomic(target, png)
    return name


def input_from_output(settings, stored_path: str) -> str:
    """Make a stored result image usable as an init image (variations, upscale)."""
    source = output_path(settings, stored_path)
    return store_input_image(settings, source.read_bytes(), label="result image")


def output_path(settings, stored_path: str) -> Path:
    """The file of a stored image path; paths never leave the data folder."""
    base = settings.data_dir.resolve()
    path = (base / stored_path).resolve()
    if base not in path.parents:
        raise BadImage(f"stored image path {stored_path!r} points outside the data folder")
    return path
