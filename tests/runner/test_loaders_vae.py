"""VAELoader: a tiny VAE saved in every layout (original single file with and without the
``first_stage_model.`` prefix, diffusers keys, diffusers folder, ``.pt`` pickle) and TAESD
in ``vae_approx``, loaded through the real loader and decoded in a real workflow."""

from __future__ import annotations

import pytest
import torch
from runner_testlib import image_of, txt2img_workflow

from tests.helpers.tiny_loaders import (
    tiny_taesd,
    tiny_vae,
    write_taesd_original,
    write_vae_layouts,
)


@pytest.fixture(scope="module")
def vae_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vae = tiny_vae()
    names = write_vae_layouts(vae, root / "vae")
    taesd = tiny_taesd()
    write_taesd_original(taesd, root / "vae_approx")
    return root, vae, taesd, names


def _with_vae(env, vae_name: str) -> dict:
    workflow = txt2img_workflow(env, steps=2)
    workflow["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
    workflow["8"]["inputs"]["vae"] = ["10", 0]
    return workflow


def _expected(module, latents: torch.Tensor, scale: float) -> torch.Tensor:
    with torch.no_grad():
        out = module.decode(latents / scale)
        images = out.sample if hasattr(out, "sample") else out[0]
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def test_vae_names_list_every_layout_and_taesd(make_env, vae_models):
    root, _, _, names = vae_models
    listed = make_env(models_dir=root).models.vae_names()
    assert set(names) <= set(listed)
    assert "taesd" in listed and "taesdxl" not in listed


@pytest.mark.parametrize(
    "name",
    [
        "cut-from-checkpoint.safetensors",
        "sd15/original.safetensors",
        "sd15\\original.safetensors",
        "diffusers-keys.safetensors",
        "diffusers-folder",
        "ema-pruned.pt",
    ],
)
def test_every_layout_decodes_as_the_module_in_memory(make_env, vae_models, name):
    root, vae, _, _ = vae_models
    env = make_env(models_dir=root)
    result = env.run(_with_vae(env, name))
    latents = result.values["3"][0]["samples"]
    expected = _expected(vae, latents, 0.18215)
    assert torch.allclose(torch.from_numpy(image_of(result)), expected, atol=1e-5)
    # The checkpoint's own VAE gives a different image: the external one was used.
    own = env.models.checkpoint("tiny-random").pipe.vae
    assert not torch.allclose(expected, _expected(own, latents, own.config.scaling_factor))


def test_taesd_from_vae_approx_decodes_and_encodes(make_env, vae_models):
    root, _, taesd, _ = vae_models
    env = make_env(models_dir=root)
    workflow = _with_vae(env, "taesd")
    workflow["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["10", 0]}}
    workflow["12"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": ["11", 0], "vae": ["10", 0]},
    }
    workflow["13"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["12", 0], "filename_prefix": "re"},
    }
    result = env.run(workflow)
    latents = result.values["3"][0]["samples"]
    # TAESD decodes UNet-scale latents directly (scaling factor 1).
    expected = _expected(taesd, latents, 1.0)
    assert torch.allclose(torch.from_numpy(image_of(result)), expected, atol=1e-5)
    pixels = torch.from_numpy(image_of(result)).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        encoded = taesd.encoder(pixels)
    assert torch.allclose(result.values["11"][0]["samples"], encoded, atol=1e-5)


def test_vae_loaded_once_and_cached(make_env, vae_models):
    root, _, _, _ = vae_models
    env = make_env(models_dir=root)
    first = env.models.vae("diffusers-folder")
    assert env.models.vae("diffusers-folder") is first
    assert first.pipe.vae.__class__.__name__ == "AutoencoderKL"


def test_unknown_vae_is_a_validation_error_naming_it(make_env, vae_models):
    from runner.errors import WorkflowInvalid

    root, _, _, _ = vae_models
    env = make_env(models_dir=root)
    with pytest.raises(WorkflowInvalid, match="no VAE named 'nope.safetensors'"):
        env.run(_with_vae(env, "nope.safetensors"))


def test_not_a_vae_file_is_refused_with_reason(make_env, vae_models, tmp_path):
    from safetensors.torch import save_file

    from runner.errors import NodeExecutionError

    root, _, _, _ = vae_models
    save_file({"foo.weight": torch.zeros(2)}, str(root / "vae" / "junk.safetensors"))
    env = make_env(models_dir=root)
    with pytest.raises(NodeExecutionError, match="not a VAE"):
        env.run(_with_vae(env, "junk.safetensors"))
    (root / "vae" / "junk.safetensors").unlink()
