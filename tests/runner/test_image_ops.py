"""Image nodes against independent computations: EmptyImage's colour, ImageInvert,
ImageBatch (resize + alpha), ImageCrop, every ImageBlend mode, ImageCompositeMasked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


class Ctx:
    def __init__(self, env):
        self.env = env


def call(env, class_type, **inputs):
    return env.node_types[class_type].function(Ctx(env), **inputs)


def img(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_empty_image(module_env):
    (out,) = call(module_env, "EmptyImage", width=3, height=2, batch_size=2, color=0x12AB40)
    assert out.shape == (2, 2, 3, 3)
    assert out[1, 1, 2].tolist() == pytest.approx([0x12 / 255, 0xAB / 255, 0x40 / 255])


def test_image_invert_keeps_alpha(module_env):
    x = img(1, 2, 2, 4)
    (out,) = call(module_env, "ImageInvert", image=x)
    torch.testing.assert_close(out[..., :3], 1 - x[..., :3])
    assert torch.equal(out[..., 3], x[..., 3])


def test_image_batch_resizes_the_second(module_env):
    a, b = img(2, 8, 8, 3, seed=1), img(1, 4, 8, 3, seed=2)
    (out,) = call(module_env, "ImageBatch", image1=a, image2=b)
    assert out.shape == (3, 8, 8, 3) and torch.equal(out[:2], a)
    # center crop to square (columns 2..5), then bilinear to 8x8
    expected = torch.nn.functional.interpolate(
        b.permute(0, 3, 1, 2)[..., 2:6], size=(8, 8), mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(out[2:], expected)
    (rgba,) = call(module_env, "ImageBatch", image1=img(1, 2, 2, 4), image2=img(1, 2, 2, 3))
    assert rgba.shape == (2, 2, 2, 4) and torch.all(rgba[1, ..., 3] == 1)


def test_image_crop(module_env):
    x = img(1, 10, 12, 3)
    (out,) = call(module_env, "ImageCrop", image=x, width=5, height=4, x=9, y=3)
    assert torch.equal(out, x[:, 3:7, 9:12])
    (corner,) = call(module_env, "ImageCrop", image=x, width=5, height=5, x=100, y=100)
    assert torch.equal(corner, x[:, 9:, 11:])


def blend_ref(a: float, b: float, mode: str) -> float:
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return 2 * a * b if a <= 0.5 else 1 - 2 * (1 - a) * (1 - b)
    if mode == "soft_light":
        if b <= 0.5:
            return a - (1 - 2 * b) * a * (1 - a)
        d = ((16 * a - 12) * a + 4) * a if a <= 0.25 else math.sqrt(a)
        return a + (2 * b - 1) * (d - a)
    return a - b  # difference


@pytest.mark.parametrize(
    "mode", ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
)
def test_image_blend_modes(module_env, mode):
    a, b = img(1, 3, 4, 3, seed=3), img(1, 3, 4, 3, seed=4)
    (out,) = call(module_env, "ImageBlend", image1=a, image2=b, blend_factor=0.3, blend_mode=mode)
    ref = np.vectorize(
        lambda p, q: min(1, max(0, p * 0.7 + blend_ref(p, q, mode) * 0.3)), otypes=[float]
    )(a.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)


def test_image_blend_bad_mode(module_env):
    with pytest.raises(ValueError, match="'burn'"):
        call(
            module_env,
            "ImageBlend",
            image1=img(1, 2, 2, 3),
            image2=img(1, 2, 2, 3),
            blend_factor=0.5,
            blend_mode="burn",
        )


def test_image_composite_masked(module_env):
    dest, src = img(1, 6, 6, 3, seed=5), img(1, 3, 4, 3, seed=6)
    mask = torch.zeros(3, 4)
    mask[1:, :] = 1
    (out,) = call(
        module_env,
        "ImageCompositeMasked",
        destination=dest,
        source=src,
        x=4,
        y=1,
        resize_source=False,
        mask=mask,
    )
    expected = dest.clone()
    expected[:, 2:4, 4:6] = src[:, 1:3, 0:2]  # 2 visible columns, mask rows 1..2
    torch.testing.assert_close(out, expected)
    (plain,) = call(
        module_env,
        "ImageCompositeMasked",
        destination=dest,
        source=src,
        x=0,
        y=0,
        resize_source=False,
    )
    expected = dest.clone()
    expected[:, :3, :4] = src
    torch.testing.assert_close(plain, expected)
