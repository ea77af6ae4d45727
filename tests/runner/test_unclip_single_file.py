"""SD 2.1 unCLIP from ONE file in the released layout (``embedder.model.visual.*`` OpenCLIP
image tower, UNet ``label_emb``, ``noise_augmentor.*``), loaded through the real loader
next to the same model as a diffusers folder: the UNet gets the same class labels and the
images are the same. And CLIPVisionLoader on a file in OpenCLIP's ``visual.*`` layout."""

from __future__ import annotations

import pytest
import torch

from runner.models.tokenizer import clip_tokenizer_dir
from tests.helpers.tiny_gaps12 import (
    save_openclip_vision_file,
    sd2_configs_only,
    write_unclip_single_file,
)
from tests.helpers.tiny_vision import make_tiny_unclip_pipeline, tiny_clip_vision

SEED = 11


@pytest.fixture(scope="module")
def pipe(cache_folder):
    return make_tiny_unclip_pipeline(clip_tokenizer_dir(cache_folder))


@pytest.fixture(scope="module")
def env(pipe, tmp_path_factory, cache_folder):
    from runner_testlib import write_gradient_png

    from runner.environment import Environment
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("models")
    ckpts = root / "checkpoints"
    pipe.save_pretrained(ckpts / "unclip-folder", safe_serialization=True)
    write_unclip_single_file(pipe, ckpts / "unclip-h.safetensors")
    sd2_configs_only(pipe, ckpts / "unclip-h.config")
    write_unclip_single_file(pipe, ckpts / "nostats.safetensors", with_stats=False)
    sd2_configs_only(pipe, ckpts / "nostats.config")
    save_openclip_vision_file(
        tiny_clip_vision(seed=9),
        root / "clip_vision" / "open_clip_visual.safetensors",
        extra={"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(8, 4)},
    )
    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder, models_dir=root
        )
    )
    write_gradient_png(env.settings.input_dir / "in.png", 48, 40)
    yield env
    env.close()


def _workflow(ckpt: str, strength: float = 0.8, aug: float = 0.25) -> dict:
    return {
        "4": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "10": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "11": {
            "class_type": "CLIPVisionEncode",
            "inputs": {"clip_vision": ["4", 3], "image": ["10", 0], "crop": "center"},
        },
        "20": {
            "class_type": "unCLIPConditioning",
            "inputs": {
                "conditioning": ["6", 0],
                "clip_vision_output": ["11", 0],
                "strength": strength,
                "noise_augmentation": aug,
            },
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": SEED,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["20", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def _run_capturing(env, ckpt: str):
    unet = env.models.checkpoint(ckpt).pipe.unet
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("class_labels").clone())

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = env.run(_workflow(ckpt))
    finally:
        handle.remove()
    return result, seen


def test_single_file_unclip_loads_as_the_folder_version(env, pipe):
    from runner_testlib import image_of

    folder, folder_labels = _run_capturing(env, "unclip-folder")
    single, single_labels = _run_capturing(env, "unclip-h.safetensors")
    loaded = env.models.checkpoint("unclip-h.safetensors")
    assert type(loaded.pipe).__name__ == "StableUnCLIPImg2ImgPipeline"
    assert loaded.family == "sd2-v"
    assert torch.equal(single.values["11"][0].image_embeds, folder.values["11"][0].image_embeds)
    assert len(single_labels) == len(folder_labels) == 2
    for a, b in zip(single_labels, folder_labels, strict=True):
        assert a.shape == (2, 64)
        assert torch.allclose(a, b, atol=1e-6)
        assert a[0].abs().sum() > 0  # the positive side carries the image
    assert (image_of(single) == image_of(folder)).all()
    # The image encoder's weights are the original model's (not a second conversion).
    for name, tensor in pipe.image_encoder.state_dict().items():
        if not name.endswith("position_ids"):
            assert torch.equal(loaded.pipe.image_encoder.state_dict()[name], tensor), name


def test_a_file_without_clip_stats_normalises_with_the_identity(env, pipe):
    # Released files carry no data_mean/data_std (non-persistent buffers): mean 0, std 1.
    loaded = env.models.checkpoint("nostats.safetensors").pipe
    assert torch.equal(loaded.image_normalizer.mean, torch.zeros(1, 32))
    assert torch.equal(loaded.image_normalizer.std, torch.ones(1, 32))
    expected = pipe.image_noising_scheduler.alphas_cumprod
    assert torch.allclose(loaded.image_noising_scheduler.alphas_cumprod, expected, atol=1e-6)


def test_clip_vision_loader_reads_openclip_visual_layout(env):
    # CLIPVisionLoader's loader on a visual.* file (with text-tower keys it must skip).
    from runner.models import clip_vision

    handle = clip_vision.load_named(env.models, "open_clip_visual.safetensors")
    assert "open_clip_visual.safetensors" in clip_vision.clip_vision_names(env.models)
    image = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    out = handle.encode(image, crop=False)
    reference = clip_vision.encode_image(tiny_clip_vision(seed=9), image, crop=False)
    assert torch.allclose(out.image_embeds, reference.image_embeds, atol=1e-5)
    assert torch.allclose(
        out.penultimate_hidden_states, reference.penultimate_hidden_states, atol=1e-5
    )


def test_openclip_tower_with_unknown_parts_is_refused():
    from runner.errors import ModelError
    from runner.models.clip_vision import clip_vision_from_state_dict
    from tests.helpers.tiny_gaps12 import hf_vision_to_openclip

    sd = hf_vision_to_openclip(tiny_clip_vision(seed=1))
    sd["visual.attn_pool.query"] = torch.zeros(4, 64)
    with pytest.raises(ModelError, match="visual.attn_pool.query"):
        clip_vision_from_state_dict(sd)


def test_a_ckpt_with_its_yaml_sidecar_loads_when_pickles_are_allowed(pipe, tmp_path, cache_folder):
    # The released form: sd21-unclip-h.ckpt (a Lightning state_dict) with the
    # v2-1-stable-unclip-h-inference.yaml saying parameterization "v", read through the
    # restricted unpickler into a safetensors copy.
    from runner.environment import Environment
    from runner.settings import EngineSettings
    from tests.helpers.tiny_gaps12 import unclip_original_state_dict

    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"state_dict": unclip_original_state_dict(pipe), "global_step": 1}, ckpts / "u.ckpt")
    (ckpts / "u.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    sd2_configs_only(pipe, ckpts / "u.config")
    env = Environment(
        EngineSettings(
            data_dir=tmp_path / "data",
            cache_folder=cache_folder,
            models_dir=tmp_path / "models",
            allow_pickle_weights=True,
        )
    )
    try:
        loaded = env.models.checkpoint("u.ckpt")
        assert type(loaded.pipe).__name__ == "StableUnCLIPImg2ImgPipeline"
        assert loaded.family == "sd2-v"
        w = loaded.pipe.unet.class_embedding.linear_1.weight
        assert torch.equal(w, pipe.unet.class_embedding.linear_1.weight)
    finally:
        env.close()
