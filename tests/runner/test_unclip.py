"""unCLIPCheckpointLoader + unCLIPConditioning on a tiny SD 2.1 unCLIP pipeline (a diffusers
folder with its image encoder, normaliser and noising schedule), loaded through the real
loader: the class labels the UNet receives are computed here again from the formulas
(squaredcos schedule, sinusoidal level embedding, the sampler's seed minus 10)."""

from __future__ import annotations

import math

import pytest
import torch

from runner.models.tokenizer import clip_tokenizer_dir
from tests.helpers.tiny_vision import make_tiny_unclip_pipeline

SEED = 11


@pytest.fixture(scope="module")
def unclip_root(tmp_path_factory, cache_folder):
    root = tmp_path_factory.mktemp("models")
    pipe = make_tiny_unclip_pipeline(clip_tokenizer_dir(cache_folder))
    pipe.save_pretrained(root / "checkpoints" / "unclip-tiny", safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def unclip_env(unclip_root, tmp_path_factory, cache_folder):
    from runner.environment import Environment
    from runner.settings import EngineSettings

    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"),
            cache_folder=cache_folder,
            models_dir=unclip_root,
        )
    )
    from runner_testlib import write_gradient_png

    write_gradient_png(env.settings.input_dir / "in.png", 48, 40)
    yield env
    env.close()


def _workflow(unclips=((1.0, 0.0),), loader="unCLIPCheckpointLoader", ckpt="unclip-tiny"):
    wf = {
        "4": {"class_type": loader, "inputs": {"ckpt_name": ckpt}},
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
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": SEED,
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
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "u"}},
    }
    source = ["6", 0]
    for i, (strength, aug) in enumerate(unclips):
        wf[f"2{i}"] = {
            "class_type": "unCLIPConditioning",
            "inputs": {
                "conditioning": source,
                "clip_vision_output": ["11", 0],
                "strength": strength,
                "noise_augmentation": aug,
            },
        }
        source = [f"2{i}", 0]
    wf["3"]["inputs"]["positive"] = source
    return wf


def _captured_labels(env, workflow):
    unet = env.models.checkpoint("unclip-tiny").pipe.unet
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("class_labels"))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = env.run(workflow)
    finally:
        handle.remove()
    return result, seen


def _alphas_cumprod(steps: int = 1000) -> list[float]:
    """The squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021), written out."""

    def abar(t):
        return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    out, prod = [], 1.0
    for i in range(steps):
        beta = min(1 - abar(i + 1) / abar(i), 0.999)
        prod *= 1 - beta
        out.append(prod)
    return out


def _level_embedding(level: int, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
    return torch.tensor(
        [math.cos(level * f) for f in freqs] + [math.sin(level * f) for f in freqs]
    )[None]


def _augmented(x, level, mean, std, seed):
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    a = _alphas_cumprod()[level]
    z = ((x - mean) / std) * math.sqrt(a) + math.sqrt(1 - a) * noise
    return z * std + mean


def _normalizer(env):
    norm = env.models.checkpoint("unclip-tiny").pipe.image_normalizer
    return norm.mean.detach().float(), norm.std.detach().float()


def test_class_labels_are_the_noise_augmented_image_embeds(unclip_env):
    result, seen = _captured_labels(unclip_env, _workflow(((0.7, 0.3),)))
    embeds = result.values["11"][0].image_embeds
    mean, std = _normalizer(unclip_env)
    level = round(999 * 0.3)
    expected = (
        torch.cat([_augmented(embeds, level, mean, std, SEED - 10), _level_embedding(level, 32)], 1)
        * 0.7
    )
    assert len(seen) == 2  # two steps, both sides in one UNet call
    for labels in seen:
        assert labels.shape == (2, 64)
        assert torch.allclose(labels[0:1], expected, atol=1e-5)
        assert torch.equal(labels[1], torch.zeros(64))  # the negative side: no unCLIP


def test_two_images_add_up_and_are_augmented_again_at_the_merge_level(unclip_env):
    result, seen = _captured_labels(unclip_env, _workflow(((1.0, 0.0), (0.5, 0.2))))
    embeds = result.values["11"][0].image_embeds
    mean, std = _normalizer(unclip_env)
    rows = []
    for strength, aug in ((1.0, 0.0), (0.5, 0.2)):
        level = round(999 * aug)
        aug_x = _augmented(embeds, level, mean, std, SEED - 10)
        rows.append(torch.cat([aug_x, _level_embedding(level, 32)], 1) * strength)
    total = rows[0] + rows[1]
    merge = round(999 * 0.05)
    expected = torch.cat(
        [_augmented(total[:, :32], merge, mean, std, SEED - 10), _level_embedding(merge, 32)], 1
    )
    assert torch.allclose(seen[0][0:1], expected, atol=1e-5)


def test_strength_zero_is_no_unclip_conditioning(unclip_env):
    from runner_testlib import image_of

    plain = unclip_env.run(_workflow(()))
    zero = unclip_env.run(_workflow(((0.0, 0.5),)))
    some = unclip_env.run(_workflow(((1.0, 0.0),)))
    assert (image_of(plain) == image_of(zero)).all()
    assert not (image_of(plain) == image_of(some)).all()


def test_checkpoint_loader_gives_the_same_model_without_the_encoder(unclip_env):
    # CheckpointLoaderSimple loads the unCLIP folder as well (an SD2 v-prediction model)
    # and samples it with zero class labels, as ComfyUI does without unCLIPConditioning.
    from runner_testlib import image_of

    wf = _workflow(())
    del wf["10"], wf["11"]
    wf["4"]["class_type"] = "CheckpointLoaderSimple"
    via_simple = unclip_env.run(wf)
    via_unclip = unclip_env.run(_workflow(()))
    assert (image_of(via_simple) == image_of(via_unclip)).all()
    assert unclip_env.models.family("unclip-tiny") == "sd2-v"


def test_a_checkpoint_without_an_image_encoder_is_refused(unclip_env):
    from runner.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="not an unCLIP checkpoint"):
        unclip_env.run(_workflow((), ckpt="tiny-random"))
