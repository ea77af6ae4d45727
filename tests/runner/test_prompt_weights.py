"""ComfyUI's prompt syntax in CLIPTextEncode: emphasis weights, prompts over 75 tokens
(ComfyUI's chunking) and the stop layer (CLIPSetLastLayer) on SD1 and SDXL, each against
hidden states computed directly from the text encoders."""

from __future__ import annotations

import math
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from runner.diffusion.prompt_encoding import (  # noqa: E402
    encode_text,
    needs_custom_encoding,
    parse_weights,
    weighted_chunks,
)
from runner.models.tokenizer import clip_tokenizer_dir  # noqa: E402
from runner.templates import GenerationRequest  # noqa: E402
from tests.helpers.tiny import make_tiny_sdxl_pipeline  # noqa: E402


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
    # ComfyUI: a stray ")" takes the depth below zero, so the group after it is plain text.
    assert weights("a) (b)") == [("a) (b)", 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab :()\\.019e-")), max_size=40))
def test_parser_never_raises_and_weights_are_finite(prompt):
    for seg in parse_weights(prompt):
        assert math.isfinite(seg.weight)


@pytest.fixture(scope="module")
def pipe(module_env):
    checkpoint = module_env.models.checkpoint("tiny-random")
    return checkpoint.pipe


@pytest.fixture(scope="module")
def xl_pipe(cache_folder):
    return make_tiny_sdxl_pipeline(clip_tokenizer_dir(cache_folder))


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids


def test_plain_prompt_matches_diffusers_encoding(pipe):
    prompt = "a lighthouse at dawn, oil painting"
    assert not needs_custom_encoding(prompt, pipe.tokenizer)
    with torch.inference_mode():
        ours, pooled = encode_text(pipe, prompt, device="cpu")
        theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        assert pooled is None
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_sd1_stop_layers_are_comfyuis(pipe):
    """SD1: -1 is the last layer (the default), -2 the penultimate through the final norm."""
    prompt = "a lighthouse at dawn"
    encoder = pipe.text_encoder
    with torch.inference_mode():
        out = encoder(_ids(pipe.tokenizer, prompt), output_hidden_states=True)
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        for layer, expected in (
            (None, out.last_hidden_state),
            (-1, out.last_hidden_state),
            (-2, norm(out.hidden_states[-2])),
        ):
            ours, _ = encode_text(pipe, prompt, device="cpu", stop_at_layer=layer)
            assert torch.allclose(ours, expected, atol=1e-6), layer
        assert not torch.allclose(out.last_hidden_state, norm(out.hidden_states[-2]), atol=1e-3)


def test_sdxl_stop_layers_are_comfyuis(xl_pipe):
    """SDXL: the default is the penultimate layer of both encoders without the final norm,
    so -2 changes nothing, and -1 is the last layer (not normed either); the pooled output
    is OpenCLIP-G's projection whatever the layer."""
    prompt = "a lighthouse at dawn"
    with torch.inference_mode():
        out_l = xl_pipe.text_encoder(_ids(xl_pipe.tokenizer, prompt), output_hidden_states=True)
        out_g = xl_pipe.text_encoder_2(_ids(xl_pipe.tokenizer_2, prompt), output_hidden_states=True)
        diffusers_embeds, _, diffusers_pooled, _ = xl_pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt, device="cpu", do_classifier_free_guidance=False
        )
        for layer, index in ((None, -2), (-2, -2), (-1, -1)):
            expected = torch.cat([out_l.hidden_states[index], out_g.hidden_states[index]], dim=-1)
            ours, pooled = encode_text(xl_pipe, prompt, device="cpu", stop_at_layer=layer)
            assert torch.allclose(ours, expected, atol=1e-6), layer
            assert torch.allclose(pooled, out_g.text_embeds, atol=1e-6)
        default, _ = encode_text(xl_pipe, prompt, device="cpu")
    assert torch.allclose(default, diffusers_embeds, atol=1e-6)


# ------------------------------------------------------------------------ chunking


def comfy_batches(groups: list[list[int]], bos: int, eos: int, pad: int) -> list[list[int]]:
    """ComfyUI's ``tokenize_with_weights`` packing, written out as it states it: batches of
    77 that start with the start token; a group that would pass position 76 either breaks
    (8 tokens or more) or closes the batch with end + padding and goes whole to the next."""
    batches, batch = [], [bos]
    batches.append(batch)
    for group in groups:
        large = len(group) >= 8
        while group:
            if len(group) + len(batch) > 76:
                remaining = 77 - len(batch) - 1
                if large:
                    batch.extend(group[:remaining])
                    batch.append(eos)
                    group = group[remaining:]
                else:
                    batch.append(eos)
                    batch.extend([pad] * remaining)
                batch = [bos]
                batches.append(batch)
            else:
                batch.extend(group)
                group = []
    batch.append(eos)
    batch.extend([pad] * (77 - len(batch)))
    return batches


def _strip(batch: list[int], bos: int, eos: int) -> list[int]:
    assert batch[0] == bos and len(batch) == 77
    return batch[1 : batch.index(eos, 1)]


def _word(rng: np.random.Generator, tokenizer, tokens: int) -> str:
    """A made-up word that the CLIP tokenizer splits into exactly ``tokens`` tokens."""
    while True:
        word = "".join(rng.choice(list("qxzjkvwy"), size=tokens * 2))
        if len(tokenizer(word, add_special_tokens=False).input_ids) == tokens:
            return word


def _chunk_cases(tokenizer) -> list[tuple[str, list[str]]]:
    """Prompts (and their segments, in order) where ComfyUI's rule and a word-by-word
    rule disagree: multi-token words at the chunk border, long weighted segments."""
    rng = np.random.default_rng(3)
    w3, w5 = _word(rng, tokenizer, 3), _word(rng, tokenizer, 5)
    filler = " ".join(["meadow"] * 73)  # 73 tokens: a 3-token word no longer fits
    cases = [
        # one segment of 76+ tokens: ComfyUI cuts it at exactly 75 (a word-by-word rule
        # would move the straddling word to the next chunk)
        (f"{filler} {w3} end", [f"{filler} {w3} end"]),
        # a short weighted segment at the border moves whole to the next chunk
        (f"{filler} ({w3}:1.2) end", [f"{filler} ", w3, " end"]),
        # a long weighted segment (8+ tokens) at the border is split
        (
            f"{filler} ({w5} {w5}:1.3) tail",
            [f"{filler} ", f"{w5} {w5}", " tail"],
        ),
        # neighbouring segments of one weight stay separate groups
        (f"{filler} (a {w3}:1.1)(b {w3}:1.1) x", [f"{filler} ", f"a {w3}", f"b {w3}", " x"]),
    ]
    return cases


def test_long_prompts_are_chunked_like_comfyui(pipe):
    tok = pipe.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pad = tok.pad_token_id
    for prompt, segs in _chunk_cases(tok):
        groups = [tok(s, add_special_tokens=False).input_ids for s in segs]
        expected = [_strip(b, bos, eos) for b in comfy_batches(groups, bos, eos, pad)]
        chunks = weighted_chunks(prompt, tok)
        assert [[t for t, _ in c] for c in chunks] == expected, prompt
        assert len(expected) >= 2
    # The first case is one plain segment: cut at exactly 75 tokens.
    prompt, _ = _chunk_cases(tok)[0]
    flat = tok(prompt, add_special_tokens=False).input_ids
    chunks = weighted_chunks(prompt, tok)
    assert [t for t, _ in chunks[0]] == flat[:75] and [t for t, _ in chunks[1]] == flat[75:]


def test_long_prompt_encoding_is_chunk_by_chunk(pipe):
    tok = pipe.tokenizer
    prompt, _ = _chunk_cases(tok)[0]
    flat = tok(prompt, add_special_tokens=False).input_ids
    rows = []
    for part in (flat[:75], flat[75:]):
        ids = [tok.bos_token_id] + part + [tok.eos_token_id]
        rows.append(ids + [tok.pad_token_id] * (77 - len(ids)))
    with torch.inference_mode():
        expected = pipe.text_encoder(torch.tensor(rows)).last_hidden_state.reshape(1, 154, -1)
        ours, _ = encode_text(pipe, prompt, device="cpu")
    assert ours.shape == (1, 154, 32)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_weighted_tokens_move_away_from_the_empty_prompt(pipe):
    tok = pipe.tokenizer
    prompt = "a (red:1.5) barn"
    with torch.inference_mode():
        ours, _ = encode_text(pipe, prompt, device="cpu")
        ids = [tok.bos_token_id] + tok("a red barn", add_special_tokens=False).input_ids
        ids += [tok.eos_token_id]
        ids += [tok.pad_token_id] * (77 - len(ids))
        empty = [tok.bos_token_id, tok.eos_token_id] + [tok.pad_token_id] * 75
        z, z_empty = pipe.text_encoder(torch.tensor([ids, empty])).last_hidden_state
    red = 2  # position of "red" after the start token and "a"
    expected = z.clone()
    expected[red] = (z[red] - z_empty[red]) * 1.5 + z_empty[red]
    assert torch.allclose(ours[0], expected, atol=1e-6)


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
