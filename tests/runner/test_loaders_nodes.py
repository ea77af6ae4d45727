"""SaveLatent / LoadLatent (ComfyUI's .latent format), LoadImageOutput, CheckpointLoader
with its config, and LoraLoaderModelOnly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from runner_testlib import image_of, txt2img_workflow
from safetensors.torch import load_file, save_file


def test_save_latent_writes_comfyui_format_and_load_latent_reads_it_back(env):
    workflow = txt2img_workflow(env, steps=2)
    workflow["20"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["3", 0], "filename_prefix": "latents/ComfyUI"},
    }
    result = env.run(workflow)
    saved = env.settings.output_dir / "latents" / "ComfyUI_00001_.latent"
    data = load_file(str(saved))
    assert set(data) == {"latent_tensor", "latent_format_version_0"}
    samples = result.values["3"][0]["samples"]
    # Version 0 holds raw VAE latents: easel's UNet-scale latents / 0.18215.
    assert torch.allclose(data["latent_tensor"] * 0.18215, samples, atol=1e-6)

    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved, env.settings.input_dir / "mine.latent")
    back = env.run(
        {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": "mine.latent"}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 2]}},
            "4": {
                "class_type": "SaveImage",
                "inputs": {"images": ["3", 0], "filename_prefix": "l"},
            },
        }
    )
    assert torch.allclose(back.values["1"][0]["samples"], samples, atol=1e-6)
    assert torch.allclose(back.values["3"][0], result.values["8"][0], atol=1e-5)


def test_old_latent_format_is_already_scaled(env):
    env.settings.input_dir.mkdir(parents=True, exist_ok=True)
    tensor = torch.randn(1, 4, 8, 8)
    save_file({"latent_tensor": tensor}, str(env.settings.input_dir / "old.latent"))
    result = env.run(
        {
            "1": {"class_type": "LoadLatent", "inputs": {"latent": "old.latent"}},
            "2": {
                "class_type": "SaveLatent",
                "inputs": {"samples": ["1", 0], "filename_prefix": "x"},
            },
        }
    )
    assert torch.equal(result.values["1"][0]["samples"], tensor)


def test_load_latent_unknown_name_is_a_validation_error(env):
    from runner.errors import WorkflowInvalid

    with pytest.raises(WorkflowInvalid, match="no latent file named 'nope.latent'"):
        env.run(
            {
                "1": {"class_type": "LoadLatent", "inputs": {"latent": "nope.latent"}},
                "2": {
                    "class_type": "SaveLatent",
                    "inputs": {"samples": ["1", 0], "filename_prefix": "x"},
                },
            }
        )


def test_load_image_output_reads_a_saved_result(env):
    first = env.run(txt2img_workflow(env, steps=2))
    name = Path(first.images[0]).name
    result = env.run(
        {
            "1": {"class_type": "LoadImageOutput", "inputs": {"image": f"{name} [output]"}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "again"},
            },
        }
    )
    expected = (image_of(first) * 255).round() / 255
    assert torch.allclose(result.values["1"][0], torch.from_numpy(expected).float(), atol=1 / 255)
    assert f"{name} [output]" in env.node_types["LoadImageOutput"].input("image").allowed(env)


def test_checkpoint_loader_with_a_v_config_predicts_v(env, tmp_path):
    configs = env.settings.models_root / "configs"
    configs.mkdir(parents=True)
    (configs / "my-v.yaml").write_text(
        'model:\n  params:\n    parameterization: "v"\n'
        "    cond_stage_config:\n      params:\n        layer: hidden\n        layer_idx: -2\n"
    )
    workflow = txt2img_workflow(env, steps=2)
    workflow["4"] = {
        "class_type": "CheckpointLoader",
        "inputs": {"config_name": "my-v.yaml", "ckpt_name": "tiny-random"},
    }
    result = env.run(workflow)
    model, clip, _ = result.values["4"]
    assert model.prediction == "v_prediction" and clip.stop_at_layer == -2
    plain = txt2img_workflow(env, steps=2)
    plain["4"] = {
        "class_type": "CheckpointLoader",
        "inputs": {"config_name": "v1-inference.yaml", "ckpt_name": "tiny-random"},
    }
    base = env.run(plain)
    assert base.values["4"][0].prediction is None
    assert torch.equal(base.values["8"][0], env.run(txt2img_workflow(env, steps=2)).values["8"][0])
    assert not torch.equal(base.values["8"][0], result.values["8"][0])


def test_lora_loader_model_only_equals_lora_loader_with_clip_strength_zero(env):
    from diffusers import StableDiffusionPipeline
    from test_lora import _make_lora_state_dict

    from runner.models.tiny import tiny_model_dir

    loras = env.settings.models_root / "loras"
    layers = _make_lora_state_dict(tiny_model_dir(env.settings.cache_dir), 1)
    StableDiffusionPipeline.save_lora_weights(
        loras, unet_lora_layers=layers["unet"], weight_name="s.safetensors", safe_serialization=True
    )
    both = txt2img_workflow(env, steps=2)
    both["20"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "s.safetensors",
            "strength_model": 0.8,
            "strength_clip": 0.0,
        },
    }
    both["3"]["inputs"]["model"] = ["20", 0]
    only = txt2img_workflow(env, steps=2)
    only["20"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["4", 0], "lora_name": "s.safetensors", "strength_model": 0.8},
    }
    only["3"]["inputs"]["model"] = ["20", 0]
    a, b = env.run(both), env.run(only)
    plain = env.run(txt2img_workflow(env, steps=2))
    assert torch.equal(a.values["8"][0], b.values["8"][0])
    assert not torch.equal(a.values["8"][0], plain.values["8"][0])
