"""ComfyUI's conditioning nodes: the transforms (combine, average, concat, areas, masks,
zero-out, timestep ranges) against values computed here another way, and the SDXL
encoders (CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner on a tiny refiner loaded from a
diffusers folder, CLIPSetLastLayer) against the text encoders run directly."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from runner_testlib import image_of, txt2img_workflow  # noqa: E402

from runner import Area, ClipHandle, CondEntry, Conditioning  # noqa: E402
from runner.context import CancelToken, NodeContext  # noqa: E402
from runner.models import families  # noqa: E402
from runner.models.tokenizer import clip_tokenizer_dir  # noqa: E402
from tests.helpers.tiny import make_tiny_sdxl_pipeline  # noqa: E402
from tests.helpers.tiny_condnodes import make_tiny_sdxl_refiner_pipeline  # noqa: E402


def call(env, node_type: str, **inputs):
    """Run one node's function as the executor does; returns (outputs, events)."""
    events: list = []
    ctx = NodeContext(
        env=env,
        job_id="job",
        node_id="1",
        class_type=node_type,
        emit=events.append,
        cancel=CancelToken(),
    )
    return env.node_types[node_type].function(ctx, **inputs), events


def _cond(seed: int, tokens: int = 77, width: int = 8, pooled: int | None = None, **options):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, tokens, width, generator=g)
    pool = None if pooled is None else torch.randn(1, pooled, generator=g)
    return Conditioning(entries=[CondEntry(embeds, pool, **options)])


# ------------------------------------------------------------------ transforms


def test_combine_keeps_both_lists_in_order(module_env):
    a, b = _cond(1), _cond(2) + _cond(3)
    (out,), _ = call(module_env, "ConditioningCombine", conditioning_1=a, conditioning_2=b)
    assert len(out) == 3
    assert [e.embeds for e in out] == [a.embeds, *[e.embeds for e in b]]


def test_average_blends_tokens_and_pooled(module_env):
    s = 0.3
    to = _cond(1, tokens=154, pooled=6, strength=0.5)
    short_from = _cond(2, tokens=77, pooled=6)
    (out,), events = call(
        module_env,
        "ConditioningAverage",
        conditioning_to=to,
        conditioning_from=short_from + _cond(9),
        conditioning_to_strength=s,
    )
    entry = out.entries[0]
    # Element by element: positions past the "from" length blend with zeros.
    expected = torch.empty_like(to.embeds)
    for i in range(154):
        other = short_from.embeds[0, i] if i < 77 else torch.zeros(8)
        expected[0, i] = to.embeds[0, i] * s + other * (1 - s)
    assert torch.allclose(entry.embeds, expected)
    assert torch.allclose(entry.pooled, to.pooled * s + short_from.pooled * (1 - s))
    assert entry.strength == 0.5  # the "to" entry's options stay
    assert [e.type for e in events] == ["warning"] and "only the first" in events[0].message

    long_from = _cond(3, tokens=231)
    (cut,), _ = call(
        module_env,
        "ConditioningAverage",
        conditioning_to=_cond(4),
        conditioning_from=long_from,
        conditioning_to_strength=0.0,
    )
    assert torch.equal(cut.embeds, long_from.embeds[:, :77])
    # A "to" entry without pooled output takes the "from" one.
    (took,), _ = call(
        module_env,
        "ConditioningAverage",
        conditioning_to=_cond(4),
        conditioning_from=_cond(5, pooled=6),
        conditioning_to_strength=0.7,
    )
    assert torch.allclose(took.pooled, _cond(5, pooled=6).pooled)


def test_concat_appends_the_first_from_entry(module_env):
    to = _cond(1) + _cond(2, area=Area(4, 4, 0, 0))
    source = _cond(3)
    (out,), _ = call(module_env, "ConditioningConcat", conditioning_to=to, conditioning_from=source)
    for before, after in zip(to, out, strict=True):
        assert after.embeds.shape == (1, 154, 8)
        assert torch.equal(after.embeds[:, :77], before.embeds)
        assert torch.equal(after.embeds[:, 77:], source.embeds)
        assert after.area == before.area
    with pytest.raises(ValueError, match="conditioning_from is empty"):
        call(module_env, "ConditioningConcat", conditioning_to=to, conditioning_from=Conditioning())
    with pytest.raises(ValueError, match="different text encoders"):
        call(
            module_env,
            "ConditioningConcat",
            conditioning_to=to,
            conditioning_from=_cond(4, width=16),
        )


def test_areas_strength_and_timestep_range(module_env):
    base = _cond(1) + _cond(2)
    (out,), _ = call(
        module_env,
        "ConditioningSetArea",
        conditioning=base,
        width=200,
        height=136,
        x=64,
        y=20,
        strength=1.5,
    )
    for entry in out:
        assert entry.area == Area(height=136 // 8, width=200 // 8, y=20 // 8, x=64 // 8)
        assert (entry.area.height, entry.area.width, entry.area.y, entry.area.x) == (17, 25, 2, 8)
        assert entry.strength == 1.5 and entry.set_area_to_bounds is False
    assert out.entries[0].area.in_latent(64, 64) == (17, 25, 2, 8)
    (pct,), _ = call(
        module_env,
        "ConditioningSetAreaPercentage",
        conditioning=base,
        width=0.5,
        height=0.25,
        x=0.5,
        y=0.0,
        strength=2.0,
    )
    assert pct.entries[0].area == Area(0.25, 0.5, 0.0, 0.5, percentage=True)
    assert pct.entries[0].area.in_latent(64, 64) == (16, 32, 0, 32)
    (strong,), _ = call(module_env, "ConditioningSetAreaStrength", conditioning=out, strength=0.2)
    assert [e.strength for e in strong] == [0.2, 0.2] and strong.entries[0].area == out.entries[
        0
    ].area
    (ranged,), _ = call(
        module_env, "ConditioningSetTimestepRange", conditioning=base, start=0.25, end=0.75
    )
    assert [(e.start_percent, e.end_percent) for e in ranged] == [(0.25, 0.75)] * 2
    # The inputs are never changed (outputs are cached and shared).
    assert all(e.plain for e in base)


def test_set_mask(module_env):
    mask = torch.zeros(16, 16)
    mask[4:8, 2:10] = 1.0
    (out,), _ = call(
        module_env,
        "ConditioningSetMask",
        conditioning=_cond(1),
        mask=mask,
        strength=0.8,
        set_cond_area="mask bounds",
    )
    entry = out.entries[0]
    assert entry.mask.shape == (1, 16, 16) and torch.equal(entry.mask[0], mask)
    assert entry.mask_strength == 0.8 and entry.set_area_to_bounds is True
    (default,), _ = call(
        module_env,
        "ConditioningSetMask",
        conditioning=_cond(1),
        mask=mask[None].repeat(2, 1, 1),
        strength=1.0,
        set_cond_area="default",
    )
    assert default.entries[0].mask.shape == (2, 16, 16)
    assert default.entries[0].set_area_to_bounds is False
    for bad, message in ((torch.zeros(1, 1, 4, 4), "batch, height, width"), (mask * 3, "0..1")):
        with pytest.raises(ValueError, match=message):
            call(
                module_env,
                "ConditioningSetMask",
                conditioning=_cond(1),
                mask=bad,
                strength=1.0,
                set_cond_area="default",
            )


def test_zero_out_keeps_options(module_env):
    source = _cond(1, pooled=6, start_percent=0.5)
    (out,), _ = call(module_env, "ConditioningZeroOut", conditioning=source)
    entry = out.entries[0]
    assert torch.count_nonzero(entry.embeds) == 0 and entry.embeds.shape == source.embeds.shape
    assert torch.count_nonzero(entry.pooled) == 0 and entry.pooled.shape == (1, 6)
    assert entry.start_percent == 0.5
    assert torch.count_nonzero(source.embeds) > 0


@pytest.mark.slow
def test_transforms_in_a_workflow(env):
    """ConditioningAverage with strength 1 is the "to" prompt (same pixels); a zeroed
    negative runs and changes the image."""
    plain = txt2img_workflow(env)
    averaged = txt2img_workflow(env)
    averaged["20"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a blue lake", "clip": ["4", 1]},
    }
    averaged["21"] = {
        "class_type": "ConditioningAverage",
        "inputs": {
            "conditioning_to": ["6", 0],
            "conditioning_from": ["20", 0],
            "conditioning_to_strength": 1.0,
        },
    }
    averaged["3"]["inputs"]["positive"] = ["21", 0]
    zeroed = txt2img_workflow(env)
    zeroed["22"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    zeroed["3"]["inputs"]["negative"] = ["22", 0]
    first = image_of(env.run(plain))
    assert np.array_equal(first, image_of(env.run(averaged)))
    assert not np.array_equal(first, image_of(env.run(zeroed)))


# ------------------------------------------------------------------ SDXL encoders


@pytest.fixture(scope="module")
def xl_env(tmp_path_factory, cache_folder):
    """An environment whose models folder holds the tiny SDXL and the tiny SDXL refiner as
    diffusers folders."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("models")
    tokenizer_dir = clip_tokenizer_dir(cache_folder)
    make_tiny_sdxl_pipeline(tokenizer_dir).save_pretrained(root / "checkpoints" / "xl")
    make_tiny_sdxl_refiner_pipeline(tokenizer_dir).save_pretrained(root / "checkpoints" / "refiner")
    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder, models_dir=root
        )
    )
    yield env
    env.close()


def _hidden(encoder, tokenizer, text: str, layer: int):
    ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[layer], getattr(out, "text_embeds", None)


def test_clip_text_encode_sdxl_texts_and_size(xl_env):
    ckpt = xl_env.models.checkpoint("xl")
    pipe = ckpt.pipe
    (out,), _ = call(
        xl_env,
        "CLIPTextEncodeSDXL",
        clip=ClipHandle(ckpt),
        width=1024,
        height=768,
        crop_w=16,
        crop_h=8,
        target_width=512,
        target_height=384,
        text_g="a castle on a hill",
        text_l="oil painting",
    )
    entry = out.entries[0]
    with torch.inference_mode():
        l_part, _ = _hidden(pipe.text_encoder, pipe.tokenizer, "oil painting", -2)
        g_part, g_pooled = _hidden(pipe.text_encoder_2, pipe.tokenizer_2, "a castle on a hill", -2)
    assert torch.allclose(entry.embeds, torch.cat([l_part, g_part], dim=-1), atol=1e-6)
    assert torch.allclose(entry.pooled, g_pooled, atol=1e-6)
    assert entry.size == (1024, 768, 16, 8, 512, 384)

    # A text_g of two chunks: text_l gets an empty-prompt chunk to match.
    long_g = " ".join(["castle"] * 90)
    (two,), _ = call(
        xl_env,
        "CLIPTextEncodeSDXL",
        clip=ClipHandle(ckpt),
        width=1024,
        height=1024,
        crop_w=0,
        crop_h=0,
        target_width=1024,
        target_height=1024,
        text_g=long_g,
        text_l="oil painting",
    )
    with torch.inference_mode():
        empty_l, _ = _hidden(pipe.text_encoder, pipe.tokenizer, "", -2)
    assert two.embeds.shape == (1, 154, 32 + 64)
    assert torch.allclose(two.embeds[:, :77, :32], l_part, atol=1e-6)
    assert torch.allclose(two.embeds[:, 77:, :32], empty_l, atol=1e-6)


def test_clip_set_last_layer_on_sdxl(xl_env):
    ckpt = xl_env.models.checkpoint("xl")
    pipe = ckpt.pipe
    text = "a castle"
    results = {}
    for layer in (-1, -2):
        (clip,), _ = call(
            xl_env, "CLIPSetLastLayer", clip=ClipHandle(ckpt), stop_at_clip_layer=layer
        )
        (cond,), _ = call(xl_env, "CLIPTextEncode", text=text, clip=clip)
        results[layer] = cond.embeds
    (default,), _ = call(xl_env, "CLIPTextEncode", text=text, clip=ClipHandle(ckpt))
    with torch.inference_mode():
        for layer in (-1, -2):
            l_part, _ = _hidden(pipe.text_encoder, pipe.tokenizer, text, layer)
            g_part, _ = _hidden(pipe.text_encoder_2, pipe.tokenizer_2, text, layer)
            assert torch.allclose(results[layer], torch.cat([l_part, g_part], -1), atol=1e-6)
    assert torch.equal(default.embeds, results[-2])  # -2 is SDXL's default
    assert not torch.allclose(results[-1], results[-2], atol=1e-3)


def test_sdxl_refiner_loads_and_encodes(xl_env):
    root = xl_env.settings.models_root / "checkpoints"
    assert "refiner" in xl_env.models.checkpoint_names()
    assert families.is_sdxl_refiner_folder(root / "refiner")
    assert not families.is_sdxl_refiner_folder(root / "xl")
    assert xl_env.models.family("refiner") == "sdxl"
    ckpt = xl_env.models.checkpoint("refiner")
    assert families.is_sdxl_refiner(ckpt.pipe) and not families.is_sdxl_refiner(
        xl_env.models.checkpoint("xl").pipe
    )
    assert ckpt.pipe.unet.config.projection_class_embeddings_input_dim == 5 * 8 + 64
    (out,), _ = call(
        xl_env,
        "CLIPTextEncodeSDXLRefiner",
        ascore=2.5,
        width=896,
        height=640,
        text="a (castle:1.0)",
        clip=ClipHandle(ckpt),
    )
    entry = out.entries[0]
    with torch.inference_mode():
        g_part, g_pooled = _hidden(ckpt.pipe.text_encoder_2, ckpt.pipe.tokenizer_2, "a castle", -2)
    assert torch.allclose(entry.embeds, g_part, atol=1e-6)
    assert torch.allclose(entry.pooled, g_pooled, atol=1e-6)
    assert entry.aesthetic_score == 2.5
    assert entry.size == (896, 640, 0, 0, 896, 640)
    (plain,), _ = call(xl_env, "CLIPTextEncode", text="a castle", clip=ClipHandle(ckpt))
    assert torch.allclose(plain.embeds, g_part, atol=1e-6)
