"""LATENTs say which scale they are in (``latent_format`` / ``latent_scale``), so SaveLatent
writes ComfyUI's raw latents for SDXL too: an SDXL KSampler latent saved and loaded
round-trips, and the file's tensor is the latents / 0.13025; SD1's / 0.18215."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open

from runner.models.tokenizer import clip_tokenizer_dir
from tests.helpers.tiny import make_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def xl_root(tmp_path_factory, cache_folder):
    root = tmp_path_factory.mktemp("models")
    make_tiny_sdxl_pipeline(clip_tokenizer_dir(cache_folder)).save_pretrained(
        root / "checkpoints" / "tiny-xl"
    )
    return root


def _workflow(ckpt: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 1,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "9": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["3", 0], "filename_prefix": "latents/t"},
        },
    }


@pytest.mark.parametrize(
    ("ckpt", "fmt", "scale"), [("tiny-xl", "SDXL", 0.13025), ("tiny-random", "SD15", 0.18215)]
)
def test_saved_latent_is_comfyuis_raw_scale_and_round_trips(make_env, xl_root, ckpt, fmt, scale):
    env = make_env(models_dir=xl_root)
    result = env.run(_workflow(ckpt))
    latent = result.values["3"][0]
    assert latent["latent_format"] == fmt and latent["latent_scale"] == pytest.approx(scale)
    (saved,) = result.outputs["9"]["latents"]
    with safe_open(saved["path"], framework="pt") as fh:
        raw = fh.get_tensor("latent_tensor")
    torch.testing.assert_close(raw, latent["samples"] / scale)
    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved["path"], env.settings.input_dir / "back.latent")
    again = env.run(
        {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": "back.latent"}},
            "2": {
                "class_type": "SaveLatent",
                "inputs": {"samples": ["1", 0], "filename_prefix": "again"},
            },
        }
    )
    loaded = again.values["1"][0]
    torch.testing.assert_close(loaded["samples"], latent["samples"])
    assert loaded["latent_format"] == fmt
    (resaved,) = again.outputs["2"]["latents"]
    with safe_open(resaved["path"], framework="pt") as fh:
        assert torch.equal(fh.get_tensor("latent_tensor"), raw)


def test_vae_encode_tags_its_vaes_scale(env):
    import torch as t

    (vae,) = env.node_types["CheckpointLoaderSimple"].function(_ctx(env), ckpt_name="tiny-random")[
        2:
    ]
    (out,) = env.node_types["VAEEncode"].function(_ctx(env), pixels=t.rand(1, 64, 64, 3), vae=vae)
    assert out["latent_format"] == "SD15"
    assert out["latent_scale"] == vae.checkpoint.pipe.vae.config.scaling_factor


def _ctx(env):
    from runner.context import CancelToken, NodeContext

    return NodeContext(env, "job", "1", "x", lambda e: None, CancelToken())
