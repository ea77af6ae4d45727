"""MASK nodes against independent computations (scipy's grey dilation for GrowMask,
per-pixel loops for FeatherMask, numpy for MaskComposite), LoadImageMask from real PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image


class Ctx:
    def __init__(self, env):
        self.env = env


def call(env, class_type, **inputs):
    return env.node_types[class_type].function(Ctx(env), **inputs)


def rand_mask(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_solid_and_invert(module_env):
    (m,) = call(module_env, "SolidMask", value=0.25, width=5, height=3)
    assert m.shape == (1, 3, 5) and torch.all(m == 0.25)
    (inv,) = call(module_env, "InvertMask", mask=m)
    assert torch.all(inv == 0.75)


@pytest.mark.parametrize("operation", ["multiply", "add", "subtract", "and", "or", "xor"])
def test_mask_composite(module_env, operation):
    dest, src = rand_mask(2, 6, 7, seed=1), rand_mask(2, 4, 5, seed=2)
    (out,) = call(
        module_env, "MaskComposite", destination=dest, source=src, x=4, y=3, operation=operation
    )
    d, s = dest.numpy().copy(), src.numpy()
    region, part = d[:, 3:6, 4:7], s[:, :3, :3]
    ops = {
        "multiply": lambda a, b: a * b,
        "add": lambda a, b: a + b,
        "subtract": lambda a, b: a - b,
        "and": lambda a, b: np.logical_and(np.round(a), np.round(b)),
        "or": lambda a, b: np.logical_or(np.round(a), np.round(b)),
        "xor": lambda a, b: np.logical_xor(np.round(a), np.round(b)),
    }
    d[:, 3:6, 4:7] = ops[operation](region, part)
    np.testing.assert_allclose(out.numpy(), np.clip(d, 0, 1), atol=1e-6)
    assert torch.equal(dest, rand_mask(2, 6, 7, seed=1))  # input unchanged


def test_image_to_mask_and_back(module_env):
    image = torch.rand(1, 4, 5, 4, generator=torch.Generator().manual_seed(0))
    for i, channel in enumerate(["red", "green", "blue", "alpha"]):
        (m,) = call(module_env, "ImageToMask", image=image, channel=channel)
        assert torch.equal(m, image[..., i])
    (img,) = call(module_env, "MaskToImage", mask=image[..., 0])
    assert img.shape == (1, 4, 5, 3) and all(
        torch.equal(img[..., c], image[..., 0]) for c in range(3)
    )
    with pytest.raises(ValueError, match="'alpha'"):
        call(module_env, "ImageToMask", image=image[..., :3], channel="alpha")


def test_feather_mask(module_env):
    mask = torch.ones(1, 6, 8)
    (out,) = call(module_env, "FeatherMask", mask=mask, left=3, top=0, right=2, bottom=10)
    expected = np.ones((6, 8))
    for y in range(6):
        for x in range(8):
            f = 1.0
            if x < 3:
                f *= (x + 1) / 3
            if 8 - 1 - x < 2:
                f *= (8 - x) / 2
            f *= (6 - y) / 6  # bottom 10 is cut to the height 6
            expected[y, x] = f
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("expand", [0, 1, 3, -1, -2])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_is_scipy_grey_dilation(module_env, expand, tapered):
    mask = (rand_mask(2, 9, 11, seed=5) > 0.8).float() * rand_mask(2, 9, 11, seed=6)
    if expand < 0:
        mask = 1 - mask
    (out,) = call(module_env, "GrowMask", mask=mask, expand=expand, tapered_corners=tapered)
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    expected = []
    for m in mask.numpy():
        for _ in range(abs(expand)):
            op = scipy.ndimage.grey_dilation if expand > 0 else scipy.ndimage.grey_erosion
            m = op(m, footprint=footprint)
        expected.append(m)
    np.testing.assert_allclose(out.numpy(), np.stack(expected), atol=1e-6)


def _png(env, name: str, rgba: np.ndarray) -> str:
    folder = env.settings.input_dir
    folder.mkdir(parents=True, exist_ok=True)
    mode = "RGBA" if rgba.shape[-1] == 4 else "RGB"
    Image.fromarray(rgba.astype(np.uint8), mode).save(folder / name)
    return name


def test_load_image_mask_channels(env):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 7, 4))
    name = _png(env, "mask.png", rgba)
    for channel, expected in [
        ("alpha", 1 - rgba[..., 3] / 255.0),
        ("red", rgba[..., 0] / 255.0),
        ("green", rgba[..., 1] / 255.0),
        ("blue", rgba[..., 2] / 255.0),
    ]:
        (m,) = call(env, "LoadImageMask", image=name, channel=channel)
        assert m.shape == (1, 6, 7)
        np.testing.assert_allclose(m[0].numpy(), expected, atol=1e-6)


def test_load_image_mask_in_a_workflow(env):
    rgb = np.zeros((8, 8, 3))
    rgb[:, 4:, 0] = 255
    name = _png(env, "red.png", rgb)
    spec = env.node_types["LoadImageMask"]
    assert name in spec.input("image").allowed(env)
    workflow = {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": "red"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = env.run(workflow)
    mask = result.values["1"][0]
    assert mask[0, :, :4].sum() == 0 and torch.all(mask[0, :, 4:] == 1)
    bad = {
        **workflow,
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "nope.png", "channel": "red"}},
    }
    from runner import WorkflowInvalid

    with pytest.raises(WorkflowInvalid, match="nope.png"):
        env.run(bad)
