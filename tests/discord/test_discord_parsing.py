"""The /imagine prompt and option parser: examples, precedence, limits, and property-based
tests that any input gives a request or one clear sentence."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.services.parsing import (
    Defaults,
    Limits,
    ParseError,
    parse_prompt,
    size_for_aspect,
)
from bot.services.request_builder import build_request
from runner.templates import GenerationRequest


def loras(refs) -> list[tuple]:
    """(name, weight, clip weight) of each LoRA; weight None = the LoRA's default."""
    return [(ref.name, ref.weight, ref.strength_clip) for ref in refs]


SAMPLERS = {"euler", "euler_ancestral", "dpmpp_2m"}
SCHEDULERS = {"normal", "karras"}


def test_inline_syntax_is_taken_out_of_the_prompt():
    parsed = parse_prompt(
        "a fox <lora:ink:0.8> in snow --ar 16:9 --no text, watermark --seed 5 --steps 30"
    )
    assert parsed.text == "a fox in snow"
    assert loras(parsed.loras) == [("ink", 0.8, None)]
    assert parsed.options["negative"] == "text, watermark"
    assert parsed.options["seed"] == 5
    assert parsed.options["steps"] == 30
    assert parsed.options["aspect"] == pytest.approx(16 / 9)


def test_every_inline_option():
    request = build_request(
        "castle --cfg 5.5 --sampler dpmpp_2m --scheduler karras --strength 0.6 --n 3 --size 768x512 --model tiny-random",
        samplers=SAMPLERS,
        schedulers=SCHEDULERS,
    )
    assert (request.cfg, request.sampler, request.scheduler) == (5.5, "dpmpp_2m", "karras")
    assert (request.strength, request.batch_size, request.width, request.height) == (
        0.6,
        3,
        768,
        512,
    )
    assert request.model == "tiny-random"


def test_equals_form_and_lora_without_weight_and_with_clip_weight():
    parsed = parse_prompt("x --steps=12 <lora:a> <LORA:b:0.5:0.25>")
    assert parsed.options["steps"] == 12
    assert loras(parsed.loras) == [("a", None, None), ("b", 0.5, 0.25)]


def test_slash_options_override_inline_and_merge_loras_and_negatives():
    request = build_request(
        "a cat <lora:ink:0.8> <lora:paper:0.3> --steps 30 --no blur",
        options={"steps": 12, "lora": "paper:0.9", "negative": "text", "seed": None},
    )
    assert request.steps == 12
    assert request.negative == "blur, text"
    assert loras(request.loras) == [("ink", 0.8, None), ("paper", 0.9, None)]
    assert request.seed is None


def test_user_defaults_apply_when_nothing_is_given():
    defaults = Defaults(model="m", width=640, height=384, steps=25, cfg=6.0, negative="ugly")
    request = build_request("a cat", defaults=defaults, base_size=lambda m: (512, 512))
    assert (request.width, request.height, request.steps, request.cfg, request.negative) == (
        640,
        384,
        25,
        6.0,
        "ugly",
    )


def test_aspect_ratio_stays_within_the_models_pixel_budget():
    request = build_request("a cat --ar 16:9", base_size=lambda m: (1024, 1024))
    assert request.width % 8 == 0 and request.height % 8 == 0
    assert request.width * request.height <= 1024 * 1024
    assert request.width > request.height
    assert abs(request.width / request.height - 16 / 9) < 0.05
    # the slash option's size beats an inline aspect ratio as a whole
    request = build_request("a cat --ar 16:9", options={"size": "512x512"})
    assert (request.width, request.height) == (512, 512)


@pytest.mark.parametrize(
    ("text", "options", "needle"),
    [
        ("a cat --steps 500", None, "steps 500 is more than your limit of 150"),
        ("a cat --size 4096x4096", None, "size 4096x4096 is larger than your limit of 2048x2048"),
        ("a cat --count 9", None, "count 9 is more than your limit of 4"),
        ("a cat", {"steps": 151}, "steps 151"),
        ("a cat --steps lots", None, "steps must be a whole number, not 'lots'"),
        ("a cat --size 770x512", None, "divisible by 8"),
        ("a cat --ar 20:1", None, "too extreme"),
        ("a cat --cfg nan", None, "cfg must be"),
        ("a cat --strength 0", None, "strength must be above 0"),
        ("a cat --bogus 3", None, "--bogus is not an option"),
        ("a cat --steps", None, "--steps needs a value"),
        ("a cat <lora:ink", None, "not closed"),
        ("a cat <lora::0.5>", None, "LoRA name"),
        ("--steps 3", None, "the prompt is empty"),
        ("a cat --size 512x512 --ar 1:1", None, "either a size or an aspect ratio"),
        ("a cat --sampler nope", None, "no sampler named 'nope'"),
        ("a cat --seed -1", None, "seed must be a whole number"),
    ],
)
def test_errors_are_one_sentence_naming_the_value(text, options, needle):
    with pytest.raises(ParseError) as info:
        build_request(text, options=options, samplers=SAMPLERS, schedulers=SCHEDULERS)
    message = str(info.value)
    assert needle in message
    assert message.endswith(".") and "\n" not in message


def test_role_limits_are_named_in_the_error():
    with pytest.raises(ParseError, match="more than your limit of 40"):
        build_request("a cat --steps 41", limits=Limits(max_steps=40))


def test_size_for_aspect_rounds_to_multiples_of_eight():
    for ratio in (1.0, 16 / 9, 9 / 16, 2 / 3, 4.0, 0.25):
        w, h = size_for_aspect(ratio, 512 * 512)
        assert w % 8 == 0 and h % 8 == 0 and w * h <= 512 * 512


# -- properties --------------------------------------------------------------------------

OPTION_WORDS = [
    "--ar",
    "--no",
    "--seed",
    "--steps",
    "--cfg",
    "--size",
    "--n",
    "--count",
    "--strength",
    "--sampler",
    "--scheduler",
    "--model",
    "--x",
    "--",
    "<lora:",
    ">",
    ":",
    "16:9",
    "64x64",
    "0.5",
    "-1",
    "1e309",
    "nan",
    "<lora:a:0.5>",
    "<lora:b>",
    "9" * 30,
]
prompt_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(OPTION_WORDS), st.text(max_size=8)), max_size=20).map(
        " ".join
    ),
)
option_values = st.one_of(
    st.none(), st.integers(-10, 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
slash_options = st.dictionaries(
    st.sampled_from(
        [
            "negative",
            "seed",
            "steps",
            "cfg",
            "sampler",
            "scheduler",
            "size",
            "aspect",
            "count",
            "model",
            "lora",
            "strength",
        ]
    ),
    option_values,
    max_size=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=prompt_text, options=slash_options)
def test_any_input_gives_a_request_or_a_parse_error(text, options):
    try:
        request = build_request(
            text, options=options, samplers=SAMPLERS | {"x"}, base_size=lambda m: (512, 512)
        )
    except ParseError as exc:
        message = str(exc)
        # One line; several problems are all reported, each a sentence of its own.
        problems = getattr(exc, "problems", [message])
        assert message and message[-1] in ".?" and "\n" not in message
        assert len(message) < 400 * len(problems)
        assert all(p and len(p) < 400 for p in problems)
        return
    assert isinstance(request, GenerationRequest)
    assert 1 <= request.steps <= 150 and 1 <= request.batch_size <= 4
    assert 64 <= request.width <= 2048 and 64 <= request.height <= 2048
    assert request.width % 8 == 0 and request.height % 8 == 0
    assert math.isfinite(request.cfg) and 0 < request.strength <= 1
    assert request.prompt.strip()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_plain_text_without_options_is_kept_word_for_word(text):
    if "--" in text or "<lora:" in text.lower():
        return
    try:
        parsed = parse_prompt(text)
    except ParseError:
        return
    assert parsed.text == " ".join(text.split())
