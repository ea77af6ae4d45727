"""Model merging nodes and CheckpointSave on two tiny SD1 models of one architecture (the
built-in tiny-random and a perturbed copy): merged weights against the formulas computed
here per tensor from the two models' own state dicts, LoRAs baked in against diffusers'
``fuse_lora``, families refused by name, and a saved checkpoint that loads back through
CheckpointLoaderSimple and gives the merged model's image."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from runner_testlib import image_of, txt2img_workflow

from runner.context import CancelToken, NodeContext
from runner.errors import ModelError
from runner.models.tiny import tiny_model_dir
from tests.helpers.tiny import make_tiny_sdxl_pipeline
from tests.helpers.tiny_loaders2 import perturbed_copy, write_unet_lora


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, cache_folder):
    from diffusers import StableDiffusionPipeline

    from runner.models.tokenizer import clip_tokenizer_dir

    root = tmp_path_factory.mktemp("models")
    folder = tiny_model_dir(cache_folder)
    base = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    perturbed_copy(base, root / "checkpoints" / "tiny-b")
    make_tiny_sdxl_pipeline(clip_tokenizer_dir(cache_folder)).save_pretrained(
        root / "checkpoints" / "tiny-xl"
    )
    write_unet_lora(folder, root / "loras" / "style.safetensors")
    return root


@pytest.fixture(scope="module")
def menv(tmp_path_factory, cache_folder, models_root):
    """One environment for the module: each model loads once."""
    from runner.environment import Environment
    from runner.settings import EngineSettings

    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"),
            cache_folder=cache_folder,
            models_dir=models_root,
        )
    )
    yield env
    env.close()


def call(env, node_type: str, **inputs):
    ctx = NodeContext(env, "job", "1", node_type, lambda e: None, CancelToken())
    return env.node_types[node_type].function(ctx, **inputs)


def load(env, name: str):
    return call(env, "CheckpointLoaderSimple", ckpt_name=name)


def unet_sd(model):
    return {k: v.detach().clone() for k, v in model.checkpoint.pipe.unet.state_dict().items()}


def test_simple_merge_is_the_weighted_sum_per_tensor(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    w1, w2 = unet_sd(m1), unet_sd(m2)
    (merged,) = call(menv, "ModelMergeSimple", model1=m1, model2=m2, ratio=0.3)
    out = merged.checkpoint.pipe.unet.state_dict()
    assert set(out) == set(w1)
    for key in w1:
        torch.testing.assert_close(out[key], 0.3 * w1[key] + 0.7 * w2[key])
    assert merged.checkpoint.pipe.text_encoder is None  # a MODEL only: no shared encoder


def test_ratio_one_is_model1_and_samples_like_it(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (merged,) = call(menv, "ModelMergeSimple", model1=m1, model2=m2, ratio=1.0)
    w1 = unet_sd(m1)
    for key, value in merged.checkpoint.pipe.unet.state_dict().items():
        assert torch.equal(value, w1[key]), key
    workflow = txt2img_workflow(menv, steps=2)
    own = image_of(menv.run(workflow))
    workflow["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-b"}}
    workflow["21"] = {
        "class_type": "ModelMergeSimple",
        "inputs": {"model1": ["4", 0], "model2": ["20", 0], "ratio": 1.0},
    }
    workflow["3"]["inputs"]["model"] = ["21", 0]
    assert np.array_equal(image_of(menv.run(workflow)), own)


def test_add_then_subtract_gives_model1_back(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (added,) = call(menv, "ModelMergeAdd", model1=m1, model2=m2)
    (back,) = call(menv, "ModelMergeSubtract", model1=added, model2=m2, multiplier=1.0)
    w1, w2, a = unet_sd(m1), unet_sd(m2), unet_sd(added)
    for key, value in back.checkpoint.pipe.unet.state_dict().items():
        torch.testing.assert_close(a[key], w1[key] + w2[key])
        torch.testing.assert_close(value, w1[key], atol=1e-6, rtol=1e-5)


def test_subtract_multiplier_scales_the_difference_as_comfyui(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (out,) = call(menv, "ModelMergeSubtract", model1=m1, model2=m2, multiplier=0.5)
    w1, w2 = unet_sd(m1), unet_sd(m2)
    for key, value in out.checkpoint.pipe.unet.state_dict().items():
        torch.testing.assert_close(value, 0.5 * w1[key] - 0.5 * w2[key])


def _part(key: str) -> str:
    """The block part of a diffusers UNet key, by diffusers' own names."""
    if key.startswith(("down_blocks.", "conv_in.")):
        return "input"
    if key.startswith("mid_block."):
        return "middle"
    if key.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")):
        return "out"
    return "input"  # time embedding: ComfyUI's first ratio


def test_blocks_merge_uses_each_parts_ratio(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    ratios = {"input": 0.2, "middle": 0.5, "out": 0.9}
    (merged,) = call(menv, "ModelMergeBlocks", model1=m1, model2=m2, **ratios)
    w1, w2 = unet_sd(m1), unet_sd(m2)
    seen = set()
    for key, value in merged.checkpoint.pipe.unet.state_dict().items():
        r = ratios[_part(key)]
        seen.add(_part(key))
        torch.testing.assert_close(value, r * w1[key] + (1 - r) * w2[key])
    assert seen == {"input", "middle", "out"}


def test_equal_merges_share_one_module_in_the_model_cache(menv):
    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (a,) = call(menv, "ModelMergeSimple", model1=m1, model2=m2, ratio=0.4)
    (b,) = call(menv, "ModelMergeSimple", model1=m1, model2=m2, ratio=0.4)
    (c,) = call(menv, "ModelMergeSimple", model1=m1, model2=m2, ratio=0.6)
    assert a.checkpoint is b.checkpoint and a.checkpoint is not c.checkpoint
    assert a.checkpoint in menv.models.loaded()
    assert a.checkpoint.size_bytes == sum(
        p.numel() * p.element_size() for p in a.checkpoint.pipe.unet.parameters()
    )


def test_different_families_are_refused_naming_both(menv):
    (m1, *_), (xl, *_) = load(menv, "tiny-random"), load(menv, "tiny-xl")
    with pytest.raises(
        ModelError, match=r"model1 \(tiny-random\) is sd1 but model2 \(tiny-xl\) is sdxl"
    ):
        call(menv, "ModelMergeSimple", model1=m1, model2=xl, ratio=0.5)


def test_loras_on_the_inputs_are_baked_in_first(menv, models_root, cache_folder):
    from diffusers import StableDiffusionPipeline

    (m1, *_), (m2, *_) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (with_lora,) = call(
        menv, "LoraLoaderModelOnly", model=m1, lora_name="style.safetensors", strength_model=0.7
    )
    (merged,) = call(menv, "ModelMergeSimple", model1=with_lora, model2=m2, ratio=1.0)
    fused = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir(cache_folder), local_files_only=True
    )
    plain = {k: v.clone() for k, v in fused.unet.state_dict().items()}
    fused.load_lora_weights(str(models_root / "loras" / "style.safetensors"), adapter_name="s")
    fused.fuse_lora(components=["unet"], lora_scale=0.7)
    fused.unload_lora_weights()
    expected = fused.unet.state_dict()
    out = merged.checkpoint.pipe.unet.state_dict()
    changed = 0
    for key, value in out.items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5)
        changed += not torch.equal(value, plain[key])
    assert changed > 0


def test_clip_merge_blends_encoders_and_keeps_position_ids(menv):
    (_, c1, _), (_, c2, _) = load(menv, "tiny-random"), load(menv, "tiny-b")
    (merged,) = call(menv, "CLIPMergeSimple", clip1=c1, clip2=c2, ratio=0.25)
    t1 = c1.checkpoint.pipe.text_encoder.state_dict()
    t2 = c2.checkpoint.pipe.text_encoder.state_dict()
    out = merged.checkpoint.pipe.text_encoder.state_dict()
    for key, value in out.items():
        if key.endswith("position_ids"):
            assert torch.equal(value, t1[key])
        else:
            torch.testing.assert_close(value, 0.25 * t1[key] + 0.75 * t2[key])
    assert merged.checkpoint.pipe.unet is None
    (cond,) = call(menv, "CLIPTextEncode", text="a fox", clip=merged)
    assert torch.isfinite(cond.embeds).all()


def test_checkpoint_save_round_trip_gives_the_merged_image(menv, models_root, cache_folder):
    workflow = txt2img_workflow(menv, steps=2)
    workflow["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-b"}}
    workflow["21"] = {
        "class_type": "ModelMergeSimple",
        "inputs": {"model1": ["4", 0], "model2": ["20", 0], "ratio": 0.5},
    }
    workflow["3"]["inputs"]["model"] = ["21", 0]
    workflow["22"] = {
        "class_type": "CheckpointSave",
        "inputs": {
            "model": ["21", 0],
            "clip": ["4", 1],
            "vae": ["4", 2],
            "filename_prefix": "checkpoints/merged",
        },
    }
    result = menv.run(workflow)
    merged_image = image_of(result)
    (saved,) = result.outputs["22"]["checkpoints"]
    assert saved["filename"] == "merged_00001_.safetensors"
    from runner.files import read_safetensors_header
    from runner.models.families import family_of_keys

    header = read_safetensors_header(menv.settings.output_dir / "checkpoints" / saved["filename"])
    assert family_of_keys(header) == "sd1"
    assert header.metadata["modelspec.predict_key"] == "epsilon"
    assert "CheckpointSave" in header.metadata["prompt"]
    # Put it where the loaders look, with the tiny model's configs as its companion folder.
    target = models_root / "checkpoints" / "roundtrip.safetensors"
    shutil.copy(menv.settings.output_dir / "checkpoints" / saved["filename"], target)
    shutil.copytree(tiny_model_dir(cache_folder), target.with_suffix(".config"), dirs_exist_ok=True)
    again = txt2img_workflow(menv, steps=2)
    again["4"]["inputs"]["ckpt_name"] = "roundtrip.safetensors"
    assert np.array_equal(image_of(menv.run(again)), merged_image)
