"""CLIPLoader and DualCLIPLoader: tiny text encoders made in code, saved in every key form
shared files use (Hugging Face keys with and without ``text_model.``, ComfyUI's old
CLIPSave projection, OpenCLIP's text tower, prefixes left from a checkpoint), loaded
through the real loaders; their prompt embeddings equal the in-memory encoders' run here
directly, and a CLIP from CLIPLoader drives KSampler with a checkpoint's MODEL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runner_testlib import image_of, txt2img_workflow

from runner.context import CancelToken, NodeContext
from runner.errors import ModelError
from runner.models import text_encoders as te
from runner.models.tokenizer import load_clip_tokenizer
from tests.helpers.tiny_loaders2 import key_forms, save_tensors, tiny_text_encoder

PROMPT = "a lighthouse at dawn"


@pytest.fixture(scope="module")
def encoders():
    """CLIP-L (64 wide, quick GELU), OpenCLIP-H-like (128, GELU) and OpenCLIP-G-like (128,
    GELU, projection): SD1's, SD2's and SDXL's second encoder in miniature."""
    return {
        "l": tiny_text_encoder(64, seed=1),
        "h": tiny_text_encoder(128, act="gelu", seed=2),
        "g": tiny_text_encoder(128, act="gelu", projection=True, seed=3),
        "l32": tiny_text_encoder(32, seed=4),
        "g32": tiny_text_encoder(64, act="gelu", projection=True, seed=5, layers=32),
    }


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, encoders):
    root = tmp_path_factory.mktemp("models")
    for form, sd in key_forms(encoders["l"]).items():
        if form != "openclip":  # OpenCLIP keys are OpenCLIP models' (H, G), not CLIP-L's
            save_tensors(sd, root / "text_encoders" / f"l-{form}.safetensors")
    save_tensors(key_forms(encoders["h"])["openclip"], root / "text_encoders" / "h.safetensors")
    for form, sd in key_forms(encoders["g"]).items():
        save_tensors(sd, root / "clip" / "sdxl" / f"g-{form}.safetensors")  # the old folder
    save_tensors(key_forms(encoders["l32"])["hf"], root / "text_encoders" / "l32.safetensors")
    save_tensors(key_forms(encoders["g32"])["hf"], root / "text_encoders" / "g32.safetensors")
    save_tensors(
        {"encoder.block.0.layer.0.SelfAttention.k.weight": torch.zeros(4, 4)},
        root / "text_encoders" / "t5.safetensors",
    )
    return root


@pytest.fixture
def menv(make_env, models_root):
    return make_env(models_dir=models_root)


def call(env, node_type: str, **inputs):
    ctx = NodeContext(env, "job", "1", node_type, lambda e: None, CancelToken())
    return env.node_types[node_type].function(ctx, **inputs)


def _tokens(cache, text: str, pad: str) -> torch.Tensor:
    tok = load_clip_tokenizer(cache, pad_token=pad)
    return tok(
        text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


def _encode(env, clip, text: str = PROMPT):
    (cond,) = call(env, "CLIPTextEncode", text=text, clip=clip)
    return cond


def test_names_list_both_folders(menv):
    names = menv.models.text_encoder_names()
    assert "l-hf.safetensors" in names and "sdxl/g-hf.safetensors" in names


@pytest.mark.parametrize("form", ["hf", "bare", "checkpoint-prefix"])
def test_clip_l_every_key_form_gives_the_encoders_embeddings(menv, encoders, form):
    (clip,) = call(menv, "CLIPLoader", clip_name=f"l-{form}.safetensors", type="stable_diffusion")
    assert clip.checkpoint.family == "sd1"
    ids = _tokens(menv.settings.cache_dir, PROMPT, "<|endoftext|>")
    with torch.no_grad():
        expected = encoders["l"](ids).last_hidden_state
    cond = _encode(menv, clip)
    assert cond.pooled is None
    torch.testing.assert_close(cond.embeds, expected, rtol=0, atol=0)


def test_openclip_h_is_sd2_with_bang_padding(menv, encoders):
    (clip,) = call(menv, "CLIPLoader", clip_name="h.safetensors", type="stable_diffusion")
    assert clip.checkpoint.family == "sd2"
    ids = _tokens(menv.settings.cache_dir, PROMPT, "!")
    with torch.no_grad():
        expected = encoders["h"](ids).last_hidden_state
    torch.testing.assert_close(_encode(menv, clip).embeds, expected, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["hf", "clipsave-old", "openclip", "sgm-prefix"])
def test_dual_clip_sdxl_every_g_form_either_order(menv, encoders, form):
    cache = menv.settings.cache_dir
    ids_l = _tokens(cache, PROMPT, "<|endoftext|>")
    ids_g = _tokens(cache, PROMPT, "!")
    with torch.no_grad():
        hidden_l = encoders["l"](ids_l, output_hidden_states=True).hidden_states[-2]
        out_g = encoders["g"](ids_g, output_hidden_states=True)
    expected = torch.cat([hidden_l, out_g.hidden_states[-2]], dim=-1)
    g_name = f"sdxl\\g-{form}.safetensors"  # Windows separators work too
    for first, second in (("l-hf.safetensors", g_name), (g_name, "l-hf.safetensors")):
        (clip,) = call(menv, "DualCLIPLoader", clip_name1=first, clip_name2=second, type="sdxl")
        assert clip.checkpoint.family == "sdxl"
        cond = _encode(menv, clip)
        torch.testing.assert_close(cond.embeds, expected, rtol=0, atol=0)
        torch.testing.assert_close(cond.pooled, out_g.text_embeds, rtol=1e-5, atol=1e-6)


def test_lone_g_is_the_sdxl_refiners_encoder(menv, encoders):
    """A lone OpenCLIP-G (known by its 32 layers, as ComfyUI knows it) is the refiner's."""
    (clip,) = call(menv, "CLIPLoader", clip_name="g32.safetensors", type="stable_diffusion")
    pipe = clip.checkpoint.pipe
    assert pipe.text_encoder is None and pipe.text_encoder_2 is not None
    ids = _tokens(menv.settings.cache_dir, PROMPT, "!")
    with torch.no_grad():
        out = encoders["g32"](ids, output_hidden_states=True)
    cond = _encode(menv, clip)
    torch.testing.assert_close(cond.embeds, out.hidden_states[-2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond.pooled, out.text_embeds, rtol=1e-5, atol=1e-6)


def test_loaded_once_and_cached(menv):
    (a,) = call(menv, "CLIPLoader", clip_name="l-hf.safetensors", type="stable_diffusion")
    (b,) = call(menv, "CLIPLoader", clip_name="l-hf.safetensors", type="stable_diffusion")
    assert a.checkpoint is b.checkpoint
    assert a.checkpoint in menv.models.loaded()


def test_clip_from_cliploader_drives_ksampler(menv, encoders):
    workflow = txt2img_workflow(menv, steps=2)
    own = image_of(menv.run(workflow))
    workflow["11"] = {
        "class_type": "CLIPLoader",
        "inputs": {"clip_name": "l32.safetensors", "type": "stable_diffusion"},
    }
    for node_id in ("6", "7"):
        workflow[node_id]["inputs"]["clip"] = ["11", 0]
    first = image_of(menv.run(workflow))
    assert first.shape == own.shape and np.isfinite(first).all()
    assert not np.array_equal(first, own)  # the prompts went through the other encoder
    menv.node_cache.clear()
    assert np.array_equal(first, image_of(menv.run(workflow)))


@pytest.mark.parametrize(
    ("node_type", "inputs", "message"),
    [
        ("CLIPLoader", {"clip_name": "l-hf.safetensors", "type": "sd3"}, "'sd3' is not supported"),
        ("CLIPLoader", {"clip_name": "l-hf.safetensors", "type": "nope"}, "not one of"),
        (
            "DualCLIPLoader",
            {"clip_name1": "l-hf.safetensors", "clip_name2": "h.safetensors", "type": "flux"},
            "'flux' is not supported",
        ),
        (
            "CLIPLoader",
            {"clip_name": "missing.safetensors", "type": "stable_diffusion"},
            "no text encoder named 'missing.safetensors'",
        ),
    ],
)
def test_validation_names_the_bad_value(menv, node_type, inputs, message):
    from runner.errors import WorkflowInvalid

    workflow = txt2img_workflow(menv, steps=2)
    workflow["11"] = {"class_type": node_type, "inputs": inputs}
    workflow["6"]["inputs"]["clip"] = ["11", 0]
    with pytest.raises(WorkflowInvalid, match=message):
        menv.run(workflow)


def test_not_a_clip_file_is_refused_by_name(menv):
    with pytest.raises(ModelError, match="t5.safetensors: not a CLIP text encoder"):
        menv.models.text_encoders(("t5.safetensors",))


def test_two_clip_l_are_not_an_sdxl_pair(menv):
    with pytest.raises(ModelError, match="cannot tell which"):
        menv.models.text_encoders(("l-hf.safetensors", "l-bare.safetensors"))


def test_layer_rule_follows_comfyui():
    def fake(layers: int) -> dict:
        return {f"text_model.encoder.layers.{i}.mlp.fc1.weight": None for i in range(layers)}

    assert te.encoder_kind(fake(12), "hf") == te.CLIP_L
    assert te.encoder_kind(fake(24), "hf") == te.CLIP_H
    assert te.encoder_kind(fake(32), "openclip") == te.CLIP_G
    assert te.encoder_kind(fake(2), "openclip") == te.CLIP_H
