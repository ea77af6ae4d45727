"""One workflow per category of what ComfyUI users share, in ComfyUI's API format as
ComfyUI exports them (tests/fixtures/workflows/), run unchanged on tiny models made in code:
area composition, noisy latent composition, inpaint, outpaint, ControlNet, mixed ControlNet
+ T2I-Adapter, SDXL base + refiner, SD turbo with SamplerCustom, LCM with
ModelSamplingDiscrete, hires fix.

Each test checks what the category is for (the size it makes, the part it keeps, that the
control changes the image) on top of running; the exact semantics of each node are tested
in the node's own test module."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_control as tc
from tests.helpers.tiny import make_tiny_sdxl_pipeline
from tests.helpers.tiny_condnodes import make_tiny_sdxl_refiner_pipeline
from tests.runner.runner_testlib import image_of, write_gradient_png

WORKFLOWS = Path(__file__).resolve().parent.parent / "fixtures" / "workflows"

NAMES = {
    "CONTROLNET": "tiny-cn",
    "T2I_ADAPTER": "tiny-t2i.safetensors",
    "SDXL_BASE": "xl",
    "SDXL_REFINER": "refiner",
}


def load(name: str) -> dict:
    """A fixture workflow with the tiny models' names filled in."""
    text = (WORKFLOWS / f"{name}.json").read_text()
    for placeholder, real in NAMES.items():
        text = text.replace(f'"{placeholder}"', json.dumps(real))
    return json.loads(text)


def _write_rgba_with_hole(path: Path, size: int = 64) -> Path:
    """A gradient with a transparent square in the middle (ComfyUI's inpaint example: the
    alpha channel is the mask LoadImage gives)."""
    from PIL import Image

    write_gradient_png(path, size, size)
    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA")).copy()
    rgba[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 0
    Image.fromarray(rgba).save(path)
    return path


def _write_square(path: Path, size: int = 64) -> Path:
    from PIL import Image

    arr = np.zeros((size, size, 3), np.uint8)
    arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, cache_folder):
    """tiny-random, a ControlNet made from its UNet, a T2I-Adapter, a tiny SDXL base and
    refiner, and the input images the workflows load."""
    from diffusers import UNet2DConditionModel

    from runner.environment import Environment
    from runner.models.tiny import tiny_model_dir
    from runner.models.tokenizer import clip_tokenizer_dir
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("workflows-data")
    models = root / "models"
    unet = UNet2DConditionModel.from_pretrained(
        tiny_model_dir(cache_folder), subfolder="unet", local_files_only=True
    )
    tc.save_folder(tc.controlnet_from_unet(unet, seed=4), models / "controlnet" / "tiny-cn")
    tc.save_original_adapter(tc.tiny_adapter(), models / "t2i_adapter" / "tiny-t2i.safetensors")
    tokenizer_dir = clip_tokenizer_dir(cache_folder)
    make_tiny_sdxl_pipeline(tokenizer_dir).save_pretrained(models / "checkpoints" / "xl")
    make_tiny_sdxl_refiner_pipeline(tokenizer_dir).save_pretrained(
        models / "checkpoints" / "refiner"
    )
    _write_rgba_with_hole(root / "input" / "inpaint_source.png")
    write_gradient_png(root / "input" / "outpaint_source.png", 64, 64)
    _write_square(root / "input" / "control_source.png")
    environment = Environment(EngineSettings(data_dir=root, cache_folder=cache_folder))
    yield environment
    environment.close()


def _size(result, node_id: str = "8") -> tuple[int, int]:
    """(width, height) of the decoded image."""
    image = image_of(result, node_id)
    return image.shape[2], image.shape[1]


def test_area_composition(env):
    workflow = load("area_composition")
    result = env.run(workflow)
    assert _size(result) == (128, 64) and len(result.images) == 1
    # The two areas change the picture: the same graph with only the background prompt.
    plain = copy.deepcopy(workflow)
    plain["3"]["inputs"]["positive"] = ["6", 0]
    assert not np.allclose(image_of(env.run(plain)), image_of(result))


def test_noisy_latent_composition(env):
    result = env.run(load("noisy_latent_composition"))
    assert _size(result) == (96, 64) and len(result.images) == 1


def test_inpaint_keeps_what_is_outside_the_mask(env):
    result = env.run(load("inpaint"))
    assert _size(result) == (64, 64)
    encoded = result.values["21"][0]
    sampled = result.values["3"][0]["samples"]
    # The noise mask is at pixel size; at latent size, cells it does not touch at all are kept.
    mask = torch.nn.functional.interpolate(
        encoded["noise_mask"].float(), size=sampled.shape[-2:], mode="bilinear"
    )
    keep = mask == 0
    assert keep.any() and (~keep).any()
    keep4 = keep.expand_as(sampled)
    assert torch.equal(sampled[keep4], encoded["samples"][keep4])
    assert not torch.equal(sampled[~keep4], encoded["samples"][~keep4])


def test_outpaint_grows_the_image(env):
    result = env.run(load("outpaint"))
    assert _size(result) == (128, 64)
    mask = result.values["22"][1]
    assert float(mask[0, :, :16].min()) == 1.0 and float(mask[0, :, 48:80].max()) == 0.0


def test_controlnet_changes_the_image_and_strength_zero_does_not(env):
    workflow = load("controlnet")
    with_control = image_of(env.run(workflow))
    off = copy.deepcopy(workflow)
    off["23"]["inputs"]["strength"] = 0.0
    without = copy.deepcopy(workflow)
    without["3"]["inputs"]["positive"], without["3"]["inputs"]["negative"] = ["6", 0], ["7", 0]
    assert np.array_equal(image_of(env.run(off)), image_of(env.run(without)))
    assert not np.allclose(with_control, image_of(env.run(without)))


def test_mixed_controlnet_and_t2i_adapter(env):
    workflow = load("controlnet_t2i_mixed")
    result = env.run(workflow)
    assert _size(result) == (64, 64)
    only_cn = copy.deepcopy(workflow)
    only_cn["3"]["inputs"]["positive"], only_cn["3"]["inputs"]["negative"] = ["23", 0], ["23", 1]
    assert not np.allclose(image_of(result), image_of(env.run(only_cn)))


@pytest.mark.slow
def test_sdxl_base_and_refiner(env):
    result = env.run(
        load("sdxl_base_refiner"),
    )
    image = image_of(result, "17")
    assert image.shape[1:3] == (64, 64) and np.isfinite(image).all()
    assert len(result.images) == 1


def test_hires_fix(env):
    result = env.run(load("hires_fix"))
    assert _size(result) == (96, 96) and len(result.images) == 1


def test_sd_turbo_with_sampler_custom(env):
    workflow = load("sd_turbo_sampler_custom")
    result = env.run(workflow)
    assert _size(result) == (64, 64) and len(result.images) == 1
    # One step of SDTurboScheduler: two sigmas, the first its 1-step level, the last 0.
    sigmas = result.values["20"][0]
    assert sigmas.shape == (2,) and float(sigmas[-1]) == 0.0


def test_lcm_with_model_sampling_discrete(env):
    workflow = load("lcm_model_sampling")
    result = env.run(workflow)
    assert _size(result) == (64, 64) and len(result.images) == 1
    # ModelSamplingDiscrete(lcm) changes the result against the checkpoint's own (eps).
    eps = copy.deepcopy(workflow)
    eps["20"]["inputs"]["sampling"] = "eps"
    eps["3"]["inputs"]["sampler_name"] = "lcm"
    assert not np.allclose(image_of(result), image_of(env.run(eps)))
