"""ComfyUI's prompt syntax in CLIPTextEncode: emphasis weights and prompts over 75 tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from runner.diffusion.prompt_encoding import (
    encode_weighted,
    needs_custom_encoding,
    parse_weights,
    weighted_chunks,
)
from runner.templates import GenerationRequest


def weights(prompt: str) -> list[tuple[str, float]]:
    return [(s.text, round(s.weight, 4)) for s in parse_weights(prompt)]


def test_parse_like_comfyui():
    assert weights("a cat") == [("a cat", 1.0)]
    assert weights("(a cat)") == [("a cat", 1.1)]
    assert weights("((red)) hat") == [("red", 1.21), (" hat", 1.0)]
    assert weights("(masterpiece:1.2), best") == [("masterpiece", 1.2), (", best", 1.0)]
    assert weights("(outer (inner:0.5) more)") == [("outer ", 1.1), ("inner", 0.5), (" more", 1.1)]
    assert weights(r"a \(literal\) thing") == [("a (literal) thing", 1.0)]
    assert weights("x (y:abc) z") == [("x ", 1.0), ("y:abc", 1.1), (" z", 1.0)]
    assert weights("a (big dog") == [("a (big dog", 1.0)]
    assert weights("(huge:1e999)") == [("huge:1e999", 1.1)]  # not a finite weight: kept as text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab :()\\.019e-")), max_size=40))
def test_parser_never_raises_and_weights_are_finite(prompt):
    for seg in parse_weights(prompt):
        assert math.isfinite(seg.weight)


@pytest.fixture
def pipe(env):
    checkpoint = env.models.checkpoint("tiny-random")
    return checkpoint.pipe


def test_plain_prompt_matches_diffusers_encoding(pipe):
    prompt = "a lighthouse at dawn, oil painting"
    assert not needs_custom_encoding(prompt, pipe.tokenizer)
    with torch.inference_mode():
        ours, _ = encode_weighted(pipe, prompt, device="cpu", clip_skip=None, xl=False)
        theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        assert torch.allclose(ours, theirs, atol=1e-6)
        # Clip skip 1: the penultimate layer through the final layer norm.
        ours_skip, _ = encode_weighted(pipe, prompt, device="cpu", clip_skip=1, xl=False)
        ids = pipe.tokenizer(
            prompt, padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        encoder = pipe.text_encoder
        expected = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
        assert torch.allclose(ours_skip, expected, atol=1e-6)
        assert not torch.allclose(ours_skip, ours, atol=1e-3)


def test_long_prompts_are_chunked_not_truncated(pipe):
    long = " ".join(["lighthouse"] * 40 + ["storm"] * 60)
    chunks = weighted_chunks(long, pipe.tokenizer)
    assert len(chunks) == 2 and all(len(c) <= 75 for c in chunks)
    assert sum(len(c) for c in chunks) == len(
        pipe.tokenizer(long, add_special_tokens=False).input_ids
    )
    with torch.inference_mode():
        embeds, _ = encode_weighted(pipe, long, device="cpu", clip_skip=None, xl=False)
    assert embeds.shape == (1, 154, 32)


def _image(env, prompt: str, negative: str = "blurry") -> np.ndarray:
    request = GenerationRequest(
        prompt=prompt, negative=negative, seed=9, steps=2, width=64, height=64
    )
    with Image.open(env.run(env.build_workflow(request)).images[0]) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_weights_and_long_prompts_change_the_image(env):
    plain = _image(env, "a red barn")
    assert np.array_equal(plain, _image(env, "a (red:1.0) barn"))
    assert not np.array_equal(plain, _image(env, "a (red:1.6) barn"))
    head = " ".join(["meadow"] * 80)
    # Words after the 75th token still count, and a long positive works beside a short negative.
    assert not np.array_equal(_image(env, head + " volcano"), _image(env, head + " glacier"))
    assert _image(env, "short", negative=head).shape == (64, 64, 3)
