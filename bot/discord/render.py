"""What the bot shows: one-line summaries, status lines, the details embed, and image
attachments that fit the upload limit (PNG, else WebP, else JPEG, else smaller)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_CONTENT = 2000


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """Text safe to show inside Discord markdown (no mentions, no formatting)."""
    import discord

    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def summary_line(
    params: dict[str, Any], *, generation_id: int | None = None, prompt_limit: int = 300
) -> str:
    """``**prompt** · seed 5 · 20 steps · cfg 7 · euler/normal · 512×512 · model · LoRAs · #id``."""
    parts = [f"**{escape(_clip(params.get('prompt') or '(no prompt)', prompt_limit))}**"]
    if params.get("seed") is not None:
        parts.append(f"seed {params['seed']}")
    parts.append(f"{params.get('steps')} steps")
    parts.append(
        f"cfg {params.get('cfg'):g}"
        if isinstance(params.get("cfg"), int | float)
        else f"cfg {params.get('cfg')}"
    )
    parts.append(f"{params.get('sampler')}/{params.get('scheduler')}")
    parts.append(f"{params.get('width')}×{params.get('height')}")
    if params.get("model"):
        parts.append(escape(str(params["model"])))
    if params.get("init_image") and params.get("strength") is not None:
        parts.append(f"strength {params['strength']:g}")
    loras = params.get("loras") or []
    if loras:
        parts.append(
            " ".join(escape(f"<lora:{n}{'' if w is None else f':{w:g}'}>") for n, w in loras)
        )
    if generation_id is not None:
        parts.append(f"#{generation_id}")
    return " · ".join(parts)


def result_content(
    mention: str, params: dict[str, Any], generation_id: int, notes: list[str] = ()
) -> str:
    """The text of a result message: who asked, the summary, and any notes."""
    text = f"{mention} {summary_line(params, generation_id=generation_id)}"
    for note in notes:
        text += f"\n-# {note}"
    if len(text) > MAX_CONTENT:
        text = f"{mention} {summary_line(params, generation_id=generation_id, prompt_limit=100)}"
    return text[:MAX_CONTENT]


def wait_text(seconds: float | None) -> str | None:
    """``about 12 s`` / ``about 3 min`` / None when unknown."""
    if seconds is None:
        return None
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def queued_text(
    position: int,
    *,
    wait_s: float | None = None,
    job_id: int | None = None,
    paused: bool = False,
) -> str:
    """Status line while waiting: the place in the queue, the estimated wait and the
    job's number (for ``/cancel``)."""
    text = "⏳ Queued: you are next" if position <= 1 else f"⏳ Queued: position {position}"
    wait = wait_text(wait_s) if position > 1 or (wait_s or 0) >= 1 else None
    if paused:
        text += " (the queue is paused by an owner)"
    elif wait:
        text += f", {wait} to wait"
    text += "."
    if job_id is not None:
        text += f" Job #{job_id}."
    return text


def progress_text(step: int, total: int) -> str:
    """Status line while sampling: a bar and ``step i of n``."""
    width = 12
    filled = round(width * step / total) if total else 0
    return f"🎨 Generating: step {step} of {total} `{'█' * filled}{'░' * (width - filled)}`"


def details_embed(generation) -> Any:
    """Every parameter of a generation, as an embed (shown ephemerally)."""
    import discord

    params = dict(generation.parameters or {})
    embed = discord.Embed(
        title=f"Generation #{generation.id}", description=escape(_clip(generation.prompt, 3500))
    )
    if generation.negative_prompt:
        embed.add_field(
            name="Negative", value=escape(_clip(generation.negative_prompt, 1000)), inline=False
        )
    fields = [
        ("Seed", generation.seed),
        ("Steps", params.get("steps")),
        ("CFG", params.get("cfg")),
        ("Sampler", f"{params.get('sampler')} / {params.get('scheduler')}"),
        ("Size", f"{params.get('width')}×{params.get('height')}"),
        ("Images", params.get("batch_size") or params.get("count")),
        ("Model", generation.model),
        ("Template", generation.template),
        ("Status", getattr(generation.status, "value", generation.status)),
    ]
    if params.get("init_image"):
        fields.append(("Strength", params.get("strength")))
    if params.get("loras"):
        fields.append(("LoRAs", ", ".join(_lora_text(item) for item in params["loras"])))
    if generation.parent_id:
        fields.append(("From", f"#{generation.parent_id}"))
    if generation.duration_s is not None:
        fields.append(("Time", f"{generation.duration_s:.1f} s"))
    for name, value in fields:
        if value not in (None, ""):
            embed.add_field(name=name, value=escape(str(value))[:1024], inline=True)
    # A mention renders as the member's name (embeds never ping anyone).
    embed.add_field(name="By", value=f"<@{int(generation.user_id)}>", inline=True)
    return embed


def _lora_text(item: Any) -> str:
    if isinstance(item, dict):
        return f"{item.get('name')}:{item.get('strength_model')}"
    name, weight = (list(item) + [None])[:2]
    return f"{name}:{'default' if weight is None else weight}"


# -- attachments ------------------------------------------------------------------------


@dataclass
class Prepared:
    """Encoded images ready to attach, and a note when they had to change to fit."""

    files: list[tuple[str, bytes]]
    note: str | None = None


def _encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "WEBP":
        image.save(buf, format="WEBP", quality=90, method=4)
    elif fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=88, optimize=True)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def fit_images(
    paths: list[Path], limit_bytes: int = DEFAULT_UPLOAD_LIMIT, *, stem: str = "easel"
) -> Prepared:
    """The images as PNG when they fit ``limit_bytes`` together; else WebP, else JPEG,
    else JPEG scaled down until they fit. The note says what was done."""
    from PIL import Image

    raw = [Path(p).read_bytes() for p in paths]
    names = [f"{stem}_{i + 1}" if len(paths) > 1 else stem for i in range(len(paths))]
    if sum(len(r) for r in raw) <= limit_bytes:
        return Prepared([(f"{n}.png", r) for n, r in zip(names, raw, strict=True)])
    images = [Image.open(io.BytesIO(r)) for r in raw]
    for image in images:
        image.load()
    for fmt, suffix, label in (("WEBP", "webp", "WebP"), ("JPEG", "jpg", "JPEG")):
        data = [_encode(im, fmt) for im in images]
        if sum(len(d) for d in data) <= limit_bytes:
            return Prepared(
                [(f"{n}.{suffix}", d) for n, d in zip(names, data, strict=True)],
                f"The PNG was larger than this channel's upload limit, so it is sent as {label}; "
                "use Details or /show for the parameters.",
            )
    scale = 0.75
    while scale > 0.05:
        small = [
            im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
            for im in images
        ]
        data = [_encode(im, "JPEG") for im in small]
        if sum(len(d) for d in data) <= limit_bytes:
            w, h = small[0].size
            return Prepared(
                [(f"{n}.jpg", d) for n, d in zip(names, data, strict=True)],
                f"The image was larger than this channel's upload limit, so it is sent as a {w}×{h} JPEG.",
            )
        scale *= 0.75
    return Prepared([], "The image is too large to upload here, even scaled down.")


MAX_FILES_PER_MESSAGE = 10


def full_size_parts(
    paths: list[Path], limit_bytes: int, *, stem: str = "easel"
) -> list[list[tuple[str, bytes]]]:
    """The stored PNGs, unchanged when each fits ``limit_bytes``; an image that does
    not is cut into a grid of PNG tiles (2x2, 3x3, ... until every tile fits), named
    ``<stem>_r<row>c<col>.png``. Returned as messages: each at most 10 files and
    ``limit_bytes`` in all. Raises ValueError when even 8x8 tiles do not fit."""
    from PIL import Image

    files: list[tuple[str, bytes]] = []
    for i, path in enumerate(paths):
        name = f"{stem}_{i + 1}" if len(paths) > 1 else stem
        raw = Path(path).read_bytes()
        if len(raw) <= limit_bytes:
            files.append((f"{name}.png", raw))
            continue
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            files += _tiles(image, name, limit_bytes)
    messages: list[list[tuple[str, bytes]]] = []
    for item in files:
        last = messages[-1] if messages else None
        if (
            last is None
            or len(last) >= MAX_FILES_PER_MESSAGE
            or sum(len(d) for _, d in last) + len(item[1]) > limit_bytes
        ):
            messages.append([item])
        else:
            last.append(item)
    return messages


def _tiles(image, name: str, limit_bytes: int) -> list[tuple[str, bytes]]:
    for n in range(2, 9):
        tiles = []
        for row in range(n):
            for col in range(n):
                box = (
                    image.width * col // n,
                    image.height * row // n,
                    image.width * (col + 1) // n,
                    image.height * (row + 1) // n,
                )
                tiles.append((f"{name}_r{row + 1}c{col + 1}.png", _encode(image.crop(box), "PNG")))
        if all(len(d) <= limit_bytes for _, d in tiles):
            return tiles
    raise ValueError(
        f"the image is too large to send here even in 64 parts ({limit_bytes} bytes each at most)"
    )


def to_discord_files(prepared: Prepared, *, spoiler: bool = False) -> list[Any]:
    """discord.File objects for prepared images."""
    import discord

    return [
        discord.File(io.BytesIO(data), filename=name, spoiler=spoiler)
        for name, data in prepared.files
    ]
