"""LoRAs: real LoRA files made with peft in diffusers and kohya/A1111 key formats, loaded
through LoraLoader, stacked, weighted, switched per job and recovered from when broken."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from runner_testlib import image_of, txt2img_workflow

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _make_lora_state_dict(model_folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA for the tiny model with random (non-zero) up and down weights, in diffusers'
    key format, as ``save_lora_weights`` writes it."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = StableDiffusionPipeline.from_pretrained(model_folder, local_files_only=True)
    torch.manual_seed(seed)
    # The default init makes lora_B zero (a no-op); init_lora_weights=False makes it change images.
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=UNET_TARGETS)
    )
    # peft's own injection (transformers' add_adapter insists on a newer peft than installed).
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TEXT_TARGETS),
        pipe.text_encoder,
    )
    return {
        "unet": get_peft_model_state_dict(pipe.unet),
        "text_encoder": get_peft_model_state_dict(pipe.text_encoder),
    }


@pytest.fixture(scope="module")
def lora_env(tmp_path_factory, cache_folder):
    """An environment whose models folder holds ``style`` and ``other`` (diffusers keys),
    ``style_kohya`` (the same weights as ``style`` in kohya/A1111 keys) and broken files."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    from runner.environment import Environment
    from runner.models.tiny import tiny_model_dir
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("lora-data")
    loras = root / "models" / "loras"
    loras.mkdir(parents=True)
    folder = tiny_model_dir(cache_folder)
    for name, seed in (("style", 1), ("other", 2)):
        layers = _make_lora_state_dict(folder, seed)
        StableDiffusionPipeline.save_lora_weights(
            loras,
            unet_lora_layers=layers["unet"],
            text_encoder_lora_layers=layers["text_encoder"],
            weight_name=f"{name}.safetensors",
            safe_serialization=True,
        )
    diffusers_keys = load_file(loras / "style.safetensors")
    kohya = convert_state_dict_to_kohya(diffusers_keys)
    # SD1 files from kohya's scripts and A1111 name the text encoder lora_te_text_model_*.
    kohya = {k.replace("lora_te1_", "lora_te_text_model_"): v for k, v in kohya.items()}
    assert any(k.startswith("lora_unet_") for k in kohya)
    assert any(k.startswith("lora_te_text_model_encoder_") for k in kohya)
    assert any(k.endswith(".alpha") for k in kohya)
    save_file(kohya, loras / "style_kohya.safetensors")
    # Broken: right keys with wrong shapes for the text encoder (the UNet part loads first).
    broken = {
        k: (torch.randn(4, 7) if k.startswith("text_encoder") and "lora_A" in k else v)
        for k, v in diffusers_keys.items()
    }
    save_file(broken, loras / "broken.safetensors")
    (loras / "garbage.safetensors").write_bytes(b"this is not a safetensors file")

    env = Environment(EngineSettings(data_dir=root, cache_folder=cache_folder))
    yield env
    env.close()


def run_image(env, loras=(), **overrides) -> np.ndarray:
    workflow = txt2img_workflow(env, steps=3, loras=list(loras), **overrides)
    return image_of(env.run(workflow))


@pytest.fixture(scope="module")
def base_image(lora_env):
    return run_image(lora_env)


def lora(name, strength_model=1.0, strength_clip=None):
    return {"name": name, "strength_model": strength_model, "strength_clip": strength_clip}


def test_lora_files_are_listed(lora_env):
    names = lora_env.models.lora_names()
    assert {"style.safetensors", "other.safetensors", "style_kohya.safetensors"} <= set(names)


def test_a_lora_changes_the_image(lora_env, base_image):
    styled = run_image(lora_env, [lora("style")])
    assert np.abs(styled - base_image).mean() > 1e-3


def test_weight_zero_equals_no_lora(lora_env, base_image):
    run_image(lora_env, [lora("style")])  # load the adapter first, so it is really switched off
    assert np.array_equal(run_image(lora_env, [lora("style", 0.0, 0.0)]), base_image)


def test_adapter_weight_zero_through_set_adapters_equals_no_lora(lora_env, base_image):
    """The same LoRA stacked at +1 and -1 sums to weight 0 on the loaded adapter."""
    image = run_image(lora_env, [lora("style", 1.0), lora("style", -1.0)])
    np.testing.assert_allclose(image, base_image, rtol=0, atol=1e-6)


def test_a_job_without_lora_after_one_with_gives_the_base_image(lora_env, base_image):
    run_image(lora_env, [lora("other", 0.8)])
    assert np.array_equal(run_image(lora_env), base_image)


def test_kohya_and_diffusers_formats_give_the_same_image(lora_env, base_image):
    diffusers_format = run_image(lora_env, [lora("style")])
    kohya_format = run_image(lora_env, [lora("style_kohya.safetensors")])
    assert np.abs(kohya_format - base_image).mean() > 1e-3
    np.testing.assert_allclose(kohya_format, diffusers_format, rtol=0, atol=1e-5)
    # ... also for the text encoder alone, so the lora_te_ keys were really applied.
    clip_only_diffusers = run_image(lora_env, [lora("style", 0.0, 1.0)])
    clip_only_kohya = run_image(lora_env, [lora("style_kohya", 0.0, 1.0)])
    assert np.abs(clip_only_kohya - base_image).mean() > 1e-4
    np.testing.assert_allclose(clip_only_kohya, clip_only_diffusers, rtol=0, atol=1e-5)


def test_two_stacked_lora_loaders(lora_env, base_image):
    workflow = txt2img_workflow(lora_env, steps=3, loras=[lora("style"), lora("other", 0.7)])
    assert workflow["20"]["class_type"] == workflow["21"]["class_type"] == "LoraLoader"
    assert workflow["21"]["inputs"]["model"] == ["20", 0]
    both = image_of(lora_env.run(workflow))
    style = run_image(lora_env, [lora("style")])
    other = run_image(lora_env, [lora("other", 0.7)])
    for single in (style, other, base_image):
        assert np.abs(both - single).mean() > 1e-4
    swapped = run_image(lora_env, [lora("other", 0.7), lora("style")])
    np.testing.assert_allclose(swapped, both, rtol=0, atol=1e-5)


def test_strength_clip_only_affects_the_text_encoder(lora_env, base_image):
    def encode(loras):
        workflow = txt2img_workflow(lora_env, steps=3, loras=loras)
        result = lora_env.run(workflow)
        return result.values["6"][0].embeds, image_of(result)

    base_embeds, _ = encode([])
    model_only_embeds, model_only_image = encode([lora("style", 1.0, 0.0)])
    clip_only_embeds, _ = encode([lora("style", 0.0, 1.0)])
    assert torch.equal(model_only_embeds, base_embeds)
    assert np.abs(model_only_image - base_image).mean() > 1e-3
    assert not torch.allclose(clip_only_embeds, base_embeds)

    # The sampler fed by a LoRA with strength_model 0 and strength_clip 1, but with prompts
    # encoded without it, gives the base image: the clip strength never reaches the UNet.
    workflow = txt2img_workflow(lora_env, steps=3, loras=[lora("style", 0.0, 1.0)])
    workflow["6"]["inputs"]["clip"] = ["4", 1]
    workflow["7"]["inputs"]["clip"] = ["4", 1]
    assert workflow["3"]["inputs"]["model"] == ["20", 0]
    assert np.array_equal(image_of(lora_env.run(workflow)), base_image)


def test_adapters_stay_loaded_between_jobs(lora_env):
    checkpoint = lora_env.models.checkpoint("tiny-random")
    run_image(lora_env, [lora("style", 0.5)])
    loaded = dict(checkpoint.adapters)
    run_image(lora_env, [lora("style", 0.9)], seed=77)
    run_image(lora_env, [lora("style", 0.3)], seed=78)
    assert checkpoint.adapters == loaded  # weights switched, files not read again


def test_changing_a_lora_strength_reruns_only_what_follows(lora_env):
    workflow = txt2img_workflow(lora_env, steps=2, loras=[lora("style", 0.5)])
    lora_env.run(workflow)
    changed = copy.deepcopy(workflow)
    changed["20"]["inputs"]["strength_model"] = 0.6
    result = lora_env.run(changed)
    assert result.executed == ["20", "6", "7", "3", "8", "9"]
    assert result.cached == ["4", "5"]


def test_unknown_lora_is_a_validation_error_listing_the_available_ones(lora_env):
    from runner.validation import validate

    workflow = txt2img_workflow(lora_env, loras=[lora("nope")])
    issues = validate(workflow, lora_env.node_types, lora_env).issues
    assert [(i.type, i.node_id, i.input_name, i.value) for i in issues] == [
        ("value_not_in_list", "20", "lora_name", "nope")
    ]
    assert "style.safetensors" in issues[0].message


@pytest.mark.parametrize("name", ["broken", "garbage"])
def test_a_broken_lora_fails_its_node_and_the_next_jobs_are_unaffected(lora_env, base_image, name):
    from runner.errors import NodeExecutionError

    style = run_image(lora_env, [lora("style")])
    with pytest.raises(NodeExecutionError) as caught:
        run_image(lora_env, [lora("style"), lora(name)])
    assert caught.value.node_id == "21" and caught.value.class_type == "LoraLoader"
    assert f"{name}.safetensors" in caught.value.message
    checkpoint = lora_env.models.checkpoint("tiny-random")
    unet_adapters = set(getattr(checkpoint.pipe.unet, "peft_config", {}))
    assert unet_adapters == set(checkpoint.adapters.values())  # nothing half-loaded left behind
    # The next jobs: no LoRA gives the base image, a good LoRA loads and gives its image.
    assert np.array_equal(run_image(lora_env), base_image)
    np.testing.assert_allclose(run_image(lora_env, [lora("style")]), style, rtol=0, atol=1e-6)
    assert np.abs(run_image(lora_env, [lora("other")]) - base_image).mean() > 1e-3
