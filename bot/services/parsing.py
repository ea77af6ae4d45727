"""The ``/imagine`` prompt and option parser.

People type everything into the prompt (``a fox <lora:ink:0.8> --ar 16:9 --no text``) or use
the slash command's own options; both end up here. :func:`parse_prompt` splits a prompt
into text, LoRA tags and inline options; :func:`build_request` merges those with the slash
command's options, the user's defaults and the bot's limits into the runner's
:class:`~runner.templates.GenerationRequest` (LoRAs still by the user's names; a LoRA
whose weight was not given has ``strength_model`` unset, see ``LoraRef.weight``).

Precedence, as a user expects it: a slash-command option beats the same option typed
inline, which beats the user's saved default, which beats the bot's default. LoRAs and
negative prompts merge instead (inline and option LoRAs both apply; ``--no`` and the
negative option are joined). Size and aspect ratio are one choice: the most explicit level
that names either wins as a whole.

Every problem is a :class:`ParseError` whose message is one sentence naming the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.templates import DEFAULTS, MAX_SEED, GenerationRequest, LoraRef

MAX_PROMPT_CHARS = 4000
MAX_LORAS = 8
MAX_CFG = 30.0
MIN_SIDE = 64
SIZE_MULTIPLE = 8
MAX_ASPECT = 4.0

OPTION_ALIASES: dict[str, str] = {
    "no": "negative",
    "neg": "negative",
    "negative": "negative",
    "ar": "aspect",
    "aspect": "aspect",
    "seed": "seed",
    "steps": "steps",
    "cfg": "cfg",
    "sampler": "sampler",
    "scheduler": "scheduler",
    "strength": "strength",
    "count": "count",
    "n": "count",
    "size": "size",
    "model": "model",
}
"""Inline option names (without ``--``) and the field each sets."""

_LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
_OPTION = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?$")
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×*]\s*(\d{1,6})\s*$")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:/xX]\s*(\d+(?:\.\d+)?)\s*$")
_LORA_NAME = re.compile(r"^[^\s<>:]{1,64}$")


class ParseError(ValueError):
    """A request that cannot be made; ``str(error)`` is one sentence for the user."""


@dataclass(frozen=True)
class Limits:
    """What one user may ask for (from configuration and their roles)."""

    max_steps: int = 150
    max_width: int = 2048
    max_height: int = 2048
    max_count: int = 4


@dataclass(frozen=True)
class Defaults:
    """Values used when neither the prompt nor the options name them.

    ``width``/``height`` None means the model's own default size (see ``base_size``);
    the rest default to the runner's :data:`~runner.templates.DEFAULTS`.
    """

    model: str = "tiny-random"
    width: int | None = None
    height: int | None = None
    steps: int = DEFAULTS.steps
    cfg: float = DEFAULTS.cfg
    sampler: str = DEFAULTS.sampler
    scheduler: str = DEFAULTS.scheduler
    negative: str = DEFAULTS.negative
    strength: float = DEFAULTS.strength
    count: int = DEFAULTS.batch_size


@dataclass
class ParsedPrompt:
    """A prompt split into its text, its LoRA tags and its inline options."""

    text: str
    loras: list[LoraRef] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


# -- values ------------------------------------------------------------------------------


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ParseError(f"{name} must be a whole number, not {value!r}.")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+]?\d{1,25}", text):
            raise ParseError(f"{name} must be a whole number, not {_show(text)}.")
        number = int(text)
    if not low <= number <= high:
        raise ParseError(f"{name} must be between {low} and {high}, not {number}.")
    return number


def _float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool):
        raise ParseError(f"{name} must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParseError(f"{name} must be a number, not {_show(str(value))}.") from None
    if not math.isfinite(number) or number > high or number < low or (low_open and number <= low):
        above = "above" if low_open else "from"
        raise ParseError(f"{name} must be {above} {low:g} to {high:g}, not {_show(str(value))}.")
    return number


def _show(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text)


def parse_size(value: str) -> tuple[int, int]:
    """``"768x512"`` -> (768, 512); both sides multiples of 8 and at least 64."""
    match = _SIZE.match(str(value))
    if not match:
        raise ParseError(f"size must look like 768x512, not {_show(str(value))}.")
    width, height = int(match.group(1)), int(match.group(2))
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ParseError(
            f"size {width}x{height} is too small; each side needs at least {MIN_SIDE} pixels."
        )
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise ParseError(
            f"size {width}x{height} must have both sides divisible by {SIZE_MULTIPLE}."
        )
    return width, height


def parse_aspect(value: str) -> float:
    """``"16:9"`` (or ``"1.5"``) -> width / height, between 1:4 and 4:1."""
    text = str(value).strip()
    match = _RATIO.match(text)
    try:
        if match:
            num, den = float(match.group(1)), float(match.group(2))
            ratio = num / den if den else math.inf
        else:
            ratio = float(text) if re.fullmatch(r"\d+(?:\.\d+)?", text) else math.nan
    except (ValueError, OverflowError):
        ratio = math.nan
    if not math.isfinite(ratio) or ratio <= 0:
        raise ParseError(f"aspect ratio must look like 16:9, not {_show(text)}.")
    if not 1 / MAX_ASPECT <= ratio <= MAX_ASPECT:
        raise ParseError(f"aspect ratio {text} is too extreme; use something between 1:4 and 4:1.")
    return ratio


def size_for_aspect(ratio: float, budget_pixels: int) -> tuple[int, int]:
    """Width and height with this width/height ratio, multiples of 8, within
    ``budget_pixels`` (the model's default width x height)."""
    width = math.sqrt(budget_pixels * ratio)
    height = width / ratio
    w = max(MIN_SIDE, int(width // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    h = max(MIN_SIDE, int(height // SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return w, h


def parse_lora_tag(text: str) -> LoraRef:
    """The inside of a ``<lora:...>`` tag: ``"name"``, ``"name:0.8"`` or ``"name:0.8:0.5"``
    (UNet then text-encoder weight, each from -10 to 10). A weight not given stays unset
    (``LoraRef.weight`` is None: the LoRA's own default weight applies)."""
    parts = [p.strip() for p in str(text).split(":")]
    name = parts[0]
    if not name or not _LORA_NAME.match(name):
        raise ParseError(
            f"LoRA name {_show(name)} is not valid; use letters, digits, '_', '-' or '.'."
        )
    if len(parts) > 3:
        raise ParseError(f"LoRA {_show(str(text))} has too many ':' parts; write <lora:name:0.8>.")
    weights = [
        _float(f"the weight of LoRA {name}", w, -10.0, 10.0) if w else None for w in parts[1:]
    ]
    weight = weights[0] if weights else None
    clip = weights[1] if len(weights) > 1 else None
    if weight is None:
        return LoraRef(name=name, strength_clip=clip)
    return LoraRef(name=name, strength_model=weight, strength_clip=clip)


def parse_loras(text: str) -> list[LoraRef]:
    """A comma- or space-separated list of LoRAs (the slash command's ``lora`` option)."""
    items = [t for t in re.split(r"[,\s]+", str(text)) if t]
    items = [t[6:-1] if t.lower().startswith("<lora:") and t.endswith(">") else t for t in items]
    return [parse_lora_tag(t) for t in items]


# -- prompt ------------------------------------------------------------------------------


def _convert(key: str, raw: str) -> Any:
    """An inline option's text -> its typed value (limits are checked later)."""
    if key == "seed":
        return _int("seed", raw, 0, MAX_SEED)
    if key == "steps":
        return _int("steps", raw, 1, 10_000)
    if key == "count":
        return _int("count", raw, 1, 100)
    if key == "cfg":
        return _float("cfg", raw, 0.0, MAX_CFG)
    if key == "strength":
        return _float("strength", raw, 0.0, 1.0, low_open=True)
    if key == "size":
        return parse_size(raw)
    if key == "aspect":
        return parse_aspect(raw)
    return raw.strip()


def parse_prompt(text: str) -> ParsedPrompt:
    """Split ``text`` into prompt words, ``<lora:name:w>`` tags and ``--option value`` pairs.

    ``--no`` takes every word up to the next option; the others take one word (or
    ``--name=value``). An option given twice keeps the last value, except ``--no``, whose
    values are joined.
    """
    if not isinstance(text, str):
        raise ParseError("the prompt must be text.")
    if len(text) > MAX_PROMPT_CHARS:
        raise ParseError(
            f"the prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}."
        )
    loras: list[LoraRef] = []

    def take_lora(match: re.Match[str]) -> str:
        loras.append(parse_lora_tag(match.group(1)))
        return " "

    rest = _LORA_TAG.sub(take_lora, text)
    if re.search(r"<lora:", rest, re.IGNORECASE):
        raise ParseError("a <lora:...> tag is not closed; write it as <lora:name:0.8>.")
    if len(loras) > MAX_LORAS:
        raise ParseError(f"{len(loras)} LoRAs is too many; use at most {MAX_LORAS}.")

    words: list[str] = []
    options: dict[str, Any] = {}
    negatives: list[str] = []
    tokens = rest.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        match = _OPTION.match(token)
        if not match:
            words.append(token)
            i += 1
            continue
        name = match.group(1).lower()
        key = OPTION_ALIASES.get(name)
        if key is None:
            known = ", ".join(
                f"--{n}" for n in sorted(set(OPTION_ALIASES) - {"neg", "negative", "aspect"})
            )
            raise ParseError(f"--{name} is not an option; known options are {known}.")
        inline = match.group(2)
        i += 1
        if key == "negative":
            taken = [inline] if inline else []
            while i < len(tokens) and not _OPTION.match(tokens[i]):
                taken.append(tokens[i])
                i += 1
            if not taken:
                raise ParseError("--no needs some words after it, e.g. --no text, watermark.")
            negatives.append(" ".join(taken))
            continue
        if inline is None:
            if i >= len(tokens) or _OPTION.match(tokens[i]):
                raise ParseError(f"--{name} needs a value, e.g. {_EXAMPLES[key]}.")
            inline = tokens[i]
            i += 1
        if not inline:
            raise ParseError(f"--{name} needs a value, e.g. {_EXAMPLES[key]}.")
        options[key] = _convert(key, inline)
    if negatives:
        options["negative"] = ", ".join(negatives)
    return ParsedPrompt(" ".join(words), loras, options)


_EXAMPLES = {
    "negative": "--no text",
    "aspect": "--ar 16:9",
    "seed": "--seed 5",
    "steps": "--steps 30",
    "cfg": "--cfg 7",
    "sampler": "--sampler euler",
    "scheduler": "--scheduler karras",
    "strength": "--strength 0.6",
    "count": "--count 2",
    "size": "--size 768x512",
    "model": "--model tiny-random",
}


# -- merging -----------------------------------------------------------------------------


def _normalise_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Slash-command options: None means "not given"; strings are converted like inline ones."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None or value == "":
            continue
        if key == "lora":
            out["lora"] = value if isinstance(value, list) else parse_loras(str(value))
        elif key in ("size", "aspect"):
            out[key] = _convert(key, str(value))
        elif key in ("seed", "steps", "count", "cfg", "strength") and isinstance(value, str):
            out[key] = _convert(key, value)
        else:
            out[key] = value
    return out


def build_request(
    prompt: str,
    *,
    options: Mapping[str, Any] | None = None,
    defaults: Defaults | None = None,
    limits: Limits | None = None,
    base_size: Callable[[str], tuple[int, int]] | None = None,
    samplers: Collection[str] | None = None,
    schedulers: Collection[str] | None = None,
    models: Collection[str] | None = None,
    allow_empty_prompt: bool = False,
) -> GenerationRequest:
    """Parse ``prompt`` and merge it with the slash command's ``options`` (None or missing
    = not given; keys: negative, seed, steps, cfg, sampler, scheduler, size, aspect, count,
    model, lora, strength), the user's ``defaults`` and the bot's ``limits``.

    ``base_size(model)`` gives a model's default size (the pixel budget for ``--ar``);
    ``samplers``/``schedulers``/``models``, when given, are the names accepted.
    Raises :class:`ParseError` with one sentence for the user.
    """
    defaults = defaults or Defaults()
    limits = limits or Limits()
    parsed = parse_prompt(prompt)
    slash = _normalise_options(options)
    inline = parsed.options

    def pick(key: str, fallback: Any) -> Any:
        if key in slash:
            return slash[key]
        if key in inline:
            return inline[key]
        return fallback

    text = parsed.text.strip()
    if not text and not allow_empty_prompt:
        raise ParseError("the prompt is empty; describe the image you want.")

    model = str(pick("model", defaults.model)).strip()
    if not model:
        raise ParseError("the model name is empty.")
    if models is not None and model not in models:
        raise ParseError(
            f"there is no model named {_show(model)}; see the model option's suggestions."
        )

    seed = pick("seed", None)
    seed = None if seed is None else _int("seed", seed, 0, MAX_SEED)
    steps = _int("steps", pick("steps", defaults.steps), 1, 10_000)
    if steps > limits.max_steps:
        raise ParseError(f"steps {steps} is more than your limit of {limits.max_steps}.")
    cfg = _float("cfg", pick("cfg", defaults.cfg), 0.0, MAX_CFG)
    strength = _float("strength", pick("strength", defaults.strength), 0.0, 1.0, low_open=True)
    count = _int("count", pick("count", defaults.count), 1, 100)
    if count > limits.max_count:
        raise ParseError(f"count {count} is more than your limit of {limits.max_count} images.")

    sampler = str(pick("sampler", defaults.sampler)).strip()
    if samplers is not None and sampler not in samplers:
        raise ParseError(
            f"there is no sampler named {_show(sampler)}; try {', '.join(sorted(samplers)[:6])}."
        )
    scheduler = str(pick("scheduler", defaults.scheduler)).strip()
    if schedulers is not None and scheduler not in schedulers:
        raise ParseError(
            f"there is no scheduler named {_show(scheduler)}; try {', '.join(sorted(schedulers)[:6])}."
        )

    width, height = _geometry(slash, inline, defaults, model, base_size)
    if width > limits.max_width or height > limits.max_height:
        raise ParseError(
            f"size {width}x{height} is larger than your limit of {limits.max_width}x{limits.max_height}."
        )

    negatives = [n for n in (inline.get("negative"), slash.get("negative")) if n]
    negative = ", ".join(str(n).strip() for n in negatives) if negatives else defaults.negative
    if len(negative) > MAX_PROMPT_CHARS:
        raise ParseError(
            f"the negative prompt is {len(negative)} characters long; the limit is {MAX_PROMPT_CHARS}."
        )

    loras = _merge_loras(parsed.loras, slash.get("lora") or [])
    return GenerationRequest(
        prompt=text,
        negative=negative,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        scheduler=scheduler,
        width=width,
        height=height,
        batch_size=count,
        model=model,
        strength=strength,
        loras=loras,
    )


def _geometry(
    slash: dict[str, Any],
    inline: dict[str, Any],
    defaults: Defaults,
    model: str,
    base_size: Callable[[str], tuple[int, int]] | None,
) -> tuple[int, int]:
    base = base_size(model) if base_size else (DEFAULTS.width, DEFAULTS.height)
    default_w = defaults.width or base[0]
    default_h = defaults.height or base[1]
    for level in (slash, inline):
        size, aspect = level.get("size"), level.get("aspect")
        if size is not None and aspect is not None:
            raise ParseError("give either a size or an aspect ratio, not both.")
        if size is not None:
            return size
        if aspect is not None:
            return size_for_aspect(aspect, default_w * default_h)
    return default_w, default_h


def _merge_loras(inline: list[LoraRef], slash: list[LoraRef]) -> list[LoraRef]:
    merged: dict[str, LoraRef] = {}
    for spec in [*inline, *slash]:
        merged[spec.name.casefold()] = spec  # a name given twice: the later (slash) one wins
    if len(merged) > MAX_LORAS:
        raise ParseError(f"{len(merged)} LoRAs is too many; use at most {MAX_LORAS}.")
    return list(merged.values())
