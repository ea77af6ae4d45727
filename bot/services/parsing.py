"""The ``/imagine`` prompt and option parser.

People type everything into the prompt (``a fox <lora:ink:0.8> --ar 16:9 --no text``) or use
the slash command's own options; both end up here. :func:`parse_prompt` splits a prompt
into text, LoRA tags and inline options, each checked and converted;
:func:`bot.services.request_builder.build_request` merges those with the slash command's
options, the user's defaults and the bot's limits.

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
from dataclasses import dataclass, field
from typing import Any

from runner.templates import DEFAULTS, MAX_SEED, LoraRef

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


class ParseErrors(ParseError):
    """Several problems found in one request, all reported at once (as workflow
    validation does). ``problems`` holds one sentence each; ``str()`` is one line: the
    only problem's sentence, or ``"3 problems: a; b; c."``."""

    def __init__(self, problems: list[str]):
        self.problems = [str(p) for p in problems]
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems: " + "; ".join(
                p.rstrip(".") for p in self.problems
            )
            text += "."
        super().__init__(text)


class Problems:
    """Collects :class:`ParseError` sentences so that every bad value is reported at
    once: ``with problems.check(): ...`` records a ParseError raised inside and goes on;
    :meth:`raise_any` raises them together as :class:`ParseErrors`."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, error: ParseError | str) -> None:
        """Record one problem (a :class:`ParseErrors` adds each of its own)."""
        if isinstance(error, ParseErrors):
            self.items.extend(error.problems)
        else:
            self.items.append(str(error))

    def check(self) -> _Checking:
        """A context manager recording a ParseError raised inside it."""
        return _Checking(self)

    def raise_any(self) -> None:
        """Raise the problems recorded so far, if any."""
        if self.items:
            raise ParseErrors(list(dict.fromkeys(self.items)))


class _Checking:
    def __init__(self, problems: Problems):
        self.problems = problems

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, ParseError):
            self.problems.add(error)
            return True
        return False


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


def parse_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ParseError(f"{name} must be a whole number, not {value!r}.")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+]?\d{1,25}", text):
            raise ParseError(f"{name} must be a whole number, not {shorten(text)}.")
        number = int(text)
    if not low <= number <= high:
        raise ParseError(f"{name} must be between {low} and {high}, not {number}.")
    return number


def parse_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool):
        raise ParseError(f"{name} must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParseError(f"{name} must be a number, not {shorten(str(value))}.") from None
    if not math.isfinite(number) or number > high or number < low or (low_open and number <= low):
        above = "above" if low_open else "from"
        raise ParseError(f"{name} must be {above} {low:g} to {high:g}, not {shorten(str(value))}.")
    return number


def shorten(text: str, limit: int = 40) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text)


def parse_size(value: str) -> tuple[int, int]:
    """``"768x512"`` -> (768, 512); both sides multiples of 8 and at least 64."""
    match = _SIZE.match(str(value))
    if not match:
        raise ParseError(f"size must look like 768x512, not {shorten(str(value))}.")
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
        raise ParseError(f"aspect ratio must look like 16:9, not {shorten(text)}.")
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
            f"LoRA name {shorten(name)} is not valid; use letters, digits, '_', '-' or '.'."
        )
    if len(parts) > 3:
        raise ParseError(
            f"LoRA {shorten(str(text))} has too many ':' parts; write <lora:name:0.8>."
        )
    weights = [
        parse_float(f"the weight of LoRA {name}", w, -10.0, 10.0) if w else None for w in parts[1:]
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


def convert_option(key: str, raw: str) -> Any:
    """An inline option's text -> its typed value (limits are checked later)."""
    if key == "seed":
        return parse_int("seed", raw, 0, MAX_SEED)
    if key == "steps":
        return parse_int("steps", raw, 1, 10_000)
    if key == "count":
        return parse_int("count", raw, 1, 100)
    if key == "cfg":
        return parse_float("cfg", raw, 0.0, MAX_CFG)
    if key == "strength":
        return parse_float("strength", raw, 0.0, 1.0, low_open=True)
    if key == "size":
        return parse_size(raw)
    if key == "aspect":
        return parse_aspect(raw)
    return raw.strip()


def parse_prompt(text: str) -> ParsedPrompt:
    """Split ``text`` into prompt words, ``<lora:name:w>`` tags and ``--option value`` pairs.

    ``--no`` takes every word up to the next option; the others take one word (or
    ``--name=value``). An option given twice keeps the last value, except ``--no``, whose
    values are joined. Every bad option is reported at once (:class:`ParseErrors`).
    """
    problems = Problems()
    parsed = collect_prompt(text, problems)
    problems.raise_any()
    return parsed


def collect_prompt(text: str, problems: Problems) -> ParsedPrompt:
    """:func:`parse_prompt` that records bad options in ``problems`` and returns what
    it could read (so a caller can report every problem of a request at once). A prompt
    that cannot be split at all (too long, an unclosed LoRA tag) still raises."""
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
    unknown: list[str] = []
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
            unknown.append(f"--{name}")
            i += 1
            if match.group(2) is None and i < len(tokens) and not _OPTION.match(tokens[i]):
                i += 1  # its value
            continue
        inline = match.group(2)
        i += 1
        if key == "negative":
            taken = [inline] if inline else []
            while i < len(tokens) and not _OPTION.match(tokens[i]):
                taken.append(tokens[i])
                i += 1
            if not taken:
                problems.add("--no needs some words after it, e.g. --no text, watermark.")
                continue
            negatives.append(" ".join(taken))
            continue
        if inline is None:
            if i >= len(tokens) or _OPTION.match(tokens[i]):
                problems.add(f"--{name} needs a value, e.g. {_EXAMPLES[key]}.")
                continue
            inline = tokens[i]
            i += 1
        if not inline:
            problems.add(f"--{name} needs a value, e.g. {_EXAMPLES[key]}.")
            continue
        with problems.check():
            options[key] = convert_option(key, inline)
    if unknown:
        known = ", ".join(
            f"--{n}" for n in sorted(set(OPTION_ALIASES) - {"neg", "negative", "aspect"})
        )
        names = ", ".join(dict.fromkeys(unknown))
        verb = "is not an option" if len(set(unknown)) == 1 else "are not options"
        problems.add(f"{names} {verb}; known options are {known}.")
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
