"""From what a user typed to the runner's request: :func:`build_request` merges the parsed
prompt (:mod:`bot.services.parsing`) with the slash command's options, the user's defaults
and the bot's limits into a :class:`~runner.templates.GenerationRequest` (LoRAs still by
the user's names; a LoRA whose weight was not given has ``strength_model`` unset, see
``LoraRef.weight``).

Precedence, as a user expects it: a slash-command option beats the same option typed
inline, which beats the user's saved default, which beats the bot's default. LoRAs and
negative prompts merge instead (inline and option LoRAs both apply; ``--no`` and the
negative option are joined). Size and aspect ratio are one choice: the most explicit level
that names either wins as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from bot.services.parsing import (
    MAX_CFG,
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    Defaults,
    Limits,
    ParsedPrompt,
    ParseError,
    Problems,
    collect_prompt,
    convert_option,
    parse_float,
    parse_int,
    parse_loras,
    shorten,
    size_for_aspect,
)
from runner.templates import DEFAULTS, MAX_SEED, GenerationRequest, LoraRef


def _normalise_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Slash-command options: None means "not given"; strings are converted like inline ones."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None or value == "":
            continue
        if key == "lora":
            out["lora"] = value if isinstance(value, list) else parse_loras(str(value))
        elif key in ("size", "aspect"):
            out[key] = convert_option(key, str(value))
        elif key in ("seed", "steps", "count", "cfg", "strength") and isinstance(value, str):
            out[key] = convert_option(key, value)
        else:
            out[key] = value
    return out


def names_hint(kind: str, value: str, names: Collection[str], shown: int = 8) -> str:
    """``there is no sampler named 'x'; try a, b, c and 30 more (see the option's
    suggestions).``: the names sorted, the first ``shown`` of them, and how many are left."""
    ordered = sorted(names)
    listed = ", ".join(ordered[:shown])
    more = len(ordered) - shown
    tail = f" and {more} more (see the {kind} option's suggestions)" if more > 0 else ""
    return f"there is no {kind} named {shorten(value)}; try {listed}{tail}."


def pair_problem(sampler: str, scheduler: str) -> str | None:
    """A sentence when ``sampler`` cannot run with ``scheduler`` (the runner's
    :func:`~runner.diffusion.samplers.check_combination`), naming the schedulers that
    fit; None when the pair runs (or the runner does not know the sampler)."""
    fitting = schedulers_for(sampler)
    if fitting is None:
        return None
    from runner.diffusion.samplers import check_combination

    try:
        problem = check_combination(sampler, scheduler)
    except Exception:  # a sampler the runner implements elsewhere: validation decides
        return None
    if problem is None:
        return None
    if not fitting:
        return f"sampler {sampler} cannot run with any scheduler here; choose another sampler."
    return (
        f"sampler {sampler} does not work with scheduler {scheduler}; "
        f"with {sampler} use {', '.join(fitting)}."
    )


def schedulers_for(sampler: str) -> list[str] | None:
    """The scheduler names ``sampler`` runs with (the runner's
    :func:`~runner.diffusion.samplers.supported_schedulers`), or None when the runner
    does not say (a sampler it does not list there)."""
    from runner.diffusion import samplers as runner_samplers

    try:
        return list(runner_samplers.supported_schedulers(sampler))
    except Exception:
        return None


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
    has_image: bool | None = None,
) -> GenerationRequest:
    """Parse ``prompt`` and merge it with the slash command's ``options`` (None or missing
    = not given; keys: negative, seed, steps, cfg, sampler, scheduler, size, aspect, count,
    model, lora, strength), the user's ``defaults`` and the bot's ``limits``.

    ``base_size(model)`` gives a model's default size (the pixel budget for ``--ar``);
    ``samplers``/``schedulers``/``models``, when given, are the names accepted (and a
    sampler/scheduler pair that cannot run together is refused). ``has_image`` False
    refuses a ``strength`` given without an image to start from (None: not checked).
    Every bad value is reported at once: raises :class:`ParseError` (one problem) or
    :class:`ParseErrors` (several), each problem one sentence for the user.
    """
    defaults = defaults or Defaults()
    limits = limits or Limits()
    problems = Problems()
    parsed = ParsedPrompt("")
    with problems.check():
        parsed = collect_prompt(prompt, problems)
    slash: dict[str, Any] = {}
    for key, value in (options or {}).items():
        with problems.check():
            slash.update(_normalise_options({key: value}))
    inline = parsed.options

    def pick(key: str, fallback: Any) -> Any:
        if key in slash:
            return slash[key]
        if key in inline:
            return inline[key]
        return fallback

    text = parsed.text.strip()
    if not text and not allow_empty_prompt and not problems.items:
        problems.add("the prompt is empty; describe the image you want.")

    model = str(pick("model", defaults.model)).strip()
    if not model:
        problems.add("the model name is empty.")
    elif models is not None and model not in models:
        problems.add(
            f"there is no model named {shorten(model)}; see the model option's suggestions."
        )

    seed = steps = cfg = strength = count = None
    with problems.check():
        seed = pick("seed", None)
        seed = None if seed is None else parse_int("seed", seed, 0, MAX_SEED)
    with problems.check():
        steps = parse_int("steps", pick("steps", defaults.steps), 1, 10_000)
        if steps > limits.max_steps:
            raise ParseError(f"steps {steps} is more than your limit of {limits.max_steps}.")
    with problems.check():
        cfg = parse_float("cfg", pick("cfg", defaults.cfg), 0.0, MAX_CFG)
    with problems.check():
        strength = parse_float(
            "strength", pick("strength", defaults.strength), 0.0, 1.0, low_open=True
        )
    if has_image is False and ("strength" in slash or "strength" in inline):
        problems.add(
            "strength only applies when you start from an image; attach one with the "
            "image option (or reply to an image), or leave strength out."
        )
    with problems.check():
        count = parse_int("count", pick("count", defaults.count), 1, 100)
        if count > limits.max_count:
            raise ParseError(f"count {count} is more than your limit of {limits.max_count} images.")

    sampler = str(pick("sampler", defaults.sampler)).strip()
    sampler_ok = samplers is None or sampler in samplers
    if not sampler_ok:
        problems.add(names_hint("sampler", sampler, samplers))
    scheduler = str(pick("scheduler", defaults.scheduler)).strip()
    scheduler_ok = schedulers is None or scheduler in schedulers
    if not scheduler_ok:
        problems.add(names_hint("scheduler", scheduler, schedulers))
    if samplers is not None and sampler_ok and scheduler_ok:
        problem = pair_problem(sampler, scheduler)
        if problem:
            problems.add(problem)

    width = height = 0
    with problems.check():
        width, height = _geometry(slash, inline, defaults, model, base_size)
        if width > limits.max_width or height > limits.max_height:
            raise ParseError(
                f"size {width}x{height} is larger than your limit of {limits.max_width}x{limits.max_height}."
            )

    negatives = [n for n in (inline.get("negative"), slash.get("negative")) if n]
    negative = ", ".join(str(n).strip() for n in negatives) if negatives else defaults.negative
    if len(negative) > MAX_PROMPT_CHARS:
        problems.add(
            f"the negative prompt is {len(negative)} characters long; the limit is {MAX_PROMPT_CHARS}."
        )

    loras: list[LoraRef] = []
    with problems.check():
        loras = _merge_loras(parsed.loras, slash.get("lora") or [])
    problems.raise_any()
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
