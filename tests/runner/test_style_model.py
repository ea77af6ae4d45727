"""StyleModelLoader + StyleModelApply: a tiny T2I style adapter in TencentARC's key layout,
loaded through the real loader; the network checked against the transformer written out
by hand from its weights, the node against the concatenation it should make."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.errors import ModelError
from runner.models.style_models import style_adapter_from_state_dict
from tests.helpers.tiny_vision import (
    save_clip_vision_file,
    save_style_adapter,
    tiny_clip_vision,
    tiny_style_adapter,
)


def _by_hand(sd: dict, hidden: torch.Tensor, heads: int = 8) -> torch.Tensor:
    """The style adapter from its weights, with explicit attention (no nn modules)."""

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

    n_tok = sd["style_embedding"].shape[1]
    x = torch.cat([hidden, sd["style_embedding"].expand(hidden.shape[0], -1, -1)], 1)
    x = ln(x, "ln_pre")
    b, length, width = x.shape
    d = width // heads
    layer = 0
    while f"transformer_layes.{layer}.ln_1.weight" in sd:
        p = f"transformer_layes.{layer}"
        h = ln(x, f"{p}.ln_1")
        qkv = h @ sd[f"{p}.attn.in_proj_weight"].T + sd[f"{p}.attn.in_proj_bias"]
        q, k, v = (t.reshape(b, length, heads, d).transpose(1, 2) for t in qkv.chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1) @ v
        att = att.transpose(1, 2).reshape(b, length, width)
        x = x + att @ sd[f"{p}.attn.out_proj.weight"].T + sd[f"{p}.attn.out_proj.bias"]
        h = ln(x, f"{p}.ln_2") @ sd[f"{p}.mlp.c_fc.weight"].T + sd[f"{p}.mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[f"{p}.mlp.c_proj.weight"].T + sd[f"{p}.mlp.c_proj.bias"]
        layer += 1
    return ln(x[:, -n_tok:], "ln_post") @ sd["proj"]


def test_the_adapter_is_the_published_transformer():
    model = tiny_style_adapter(seed=2)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    loaded = style_adapter_from_state_dict(sd, "tiny")
    hidden = torch.randn(2, 17, 64)
    with torch.no_grad():
        out = loaded(hidden)
    assert out.shape == (2, 8, 32)
    assert torch.allclose(out, _by_hand(sd, hidden), atol=1e-5)


def test_other_files_are_refused_with_reason():
    with pytest.raises(ModelError, match="not a T2I style adapter"):
        style_adapter_from_state_dict({"x": torch.zeros(1)}, "odd.safetensors")
    with pytest.raises(ModelError, match="FLUX Redux"):
        style_adapter_from_state_dict({"redux_down.weight": torch.zeros(1)}, "redux")


@pytest.fixture(scope="module")
def style_env(tmp_path_factory, cache_folder):
    from runner_testlib import write_gradient_png

    from runner.environment import Environment
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("models")
    save_clip_vision_file(tiny_clip_vision(seed=4), root / "clip_vision" / "vit.safetensors")
    adapter = tiny_style_adapter(seed=6)
    save_style_adapter(adapter, root / "style_models" / "t2iadapter_style_tiny.safetensors")
    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder, models_dir=root
        )
    )
    write_gradient_png(env.settings.input_dir / "in.png", 40, 40)
    yield env, adapter
    env.close()


def _workflow(strength=1.0, strength_type="multiply", styled=True):
    wf = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "10": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "13": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit.safetensors"}},
        "11": {
            "class_type": "CLIPVisionEncode",
            "inputs": {"clip_vision": ["13", 0], "image": ["10", 0], "crop": "center"},
        },
        "14": {
            "class_type": "StyleModelLoader",
            "inputs": {"style_model_name": "t2iadapter_style_tiny.safetensors"},
        },
        "12": {
            "class_type": "StyleModelApply",
            "inputs": {
                "conditioning": ["6", 0],
                "style_model": ["14", 0],
                "clip_vision_output": ["11", 0],
                "strength": strength,
                "strength_type": strength_type,
            },
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 2,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["12", 0] if styled else ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "s"}},
    }
    if not styled:
        for k in ("10", "11", "12", "13", "14"):
            del wf[k]
    return wf


def test_style_tokens_follow_the_prompt_tokens(style_env):
    env, adapter = style_env
    result = env.run(_workflow(strength=0.5))
    text = result.values["6"][0].embeds
    vision = result.values["11"][0]
    styled = result.values["12"][0].embeds
    with torch.no_grad():
        tokens = adapter(vision.last_hidden_state)
    assert styled.shape == (1, text.shape[1] + 8, 32)
    assert torch.equal(styled[:, : text.shape[1]], text)
    assert torch.allclose(styled[:, text.shape[1] :], tokens * 0.5, atol=1e-5)


def test_the_style_changes_the_image_and_attn_bias_at_one_is_multiply_at_one(style_env):
    from runner_testlib import image_of

    env, _ = style_env
    plain = image_of(env.run(_workflow(styled=False)))
    multiply = image_of(env.run(_workflow()))
    bias = image_of(env.run(_workflow(strength_type="attn_bias")))
    assert not (plain == multiply).all()
    assert (multiply == bias).all()


def test_attn_bias_with_another_strength_is_refused_clearly(style_env):
    from runner.errors import NodeExecutionError

    env, _ = style_env
    with pytest.raises(NodeExecutionError, match="attn_bias with strength 0.5"):
        env.run(_workflow(strength=0.5, strength_type="attn_bias"))
