"""Latent nodes: LatentUpscale's size rule (every size 512..2048), bislerp, composite,
blend, crop, flip, rotate, from-batch (noise_mask / batch_index carried), tiled VAE."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from runner import VaeHandle
from runner.diffusion.common import bislerp, latent_upscale_size


class Ctx:
    def __init__(self, env):
        self.env = env


def call(env, class_type, **inputs):
    return env.node_types[class_type].function(Ctx(env), **inputs)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# LatentUpscale's size rule ------------------------------------------------------------


def comfy_rule(lat_w: int, lat_h: int, width: int, height: int) -> tuple[int, int]:
    """ComfyUI's LatentUpscale rule written independently: exact rationals, half-to-even
    rounding, sides clamped to 64 px, floored to cells."""
    if width == 0:
        h = max(64, height)
        w = max(64, round(Fraction(lat_w * h, lat_h)))
    else:
        w = max(64, width)
        h = max(64, round(Fraction(lat_h * w, lat_w))) if height == 0 else max(64, height)
    return w // 8, h // 8


def old_rule(lat_w: int, lat_h: int, width: int, height: int) -> tuple[int, int]:
    """What easel did before: the missing side rounded in latent cells."""
    if width == 0:
        lh = height // 8
        return max(1, round(lat_w * lh / lat_h)), lh
    lw = width // 8
    return lw, max(1, round(lat_h * lw / lat_w))


SHAPES = [(64, 96), (77, 51), (100, 64), (96, 128), (13, 21)]
"""Latent (width, height) cells: portrait, landscape, odd sizes."""


@pytest.mark.parametrize("lat_w, lat_h", SHAPES)
def test_latent_upscale_size_every_size_512_to_2048(lat_w, lat_h):
    for size in range(512, 2049, 8):
        assert latent_upscale_size(lat_w, lat_h, size, 0) == comfy_rule(lat_w, lat_h, size, 0)
        assert latent_upscale_size(lat_w, lat_h, 0, size) == comfy_rule(lat_w, lat_h, 0, size)
    assert latent_upscale_size(lat_w, lat_h, 0, 0) == (lat_w, lat_h)
    assert latent_upscale_size(lat_w, lat_h, 16, 8) == (8, 8)  # both sides at least 64 px


def test_the_old_rule_differed_often():
    """The rule the issue reported: measured here, not asserted exactly."""
    sizes = range(512, 2049, 8)
    differ = sum(
        old_rule(77, 51, s, 0) != comfy_rule(77, 51, s, 0)
        or old_rule(77, 51, 0, s) != comfy_rule(77, 51, 0, s)
        for s in sizes
    )
    assert differ > 0


def test_latent_upscale_node_uses_the_rule(module_env):
    latent = {"samples": rand(1, 4, 51, 77), "batch_index": [3]}
    (out,) = call(
        module_env,
        "LatentUpscale",
        samples=latent,
        upscale_method="nearest-exact",
        width=0,
        height=1000,
        crop="disabled",
    )
    assert tuple(out["samples"].shape[-2:]) == comfy_rule(77, 51, 0, 1000)[::-1]
    assert out["batch_index"] == [3]
    (same,) = call(
        module_env,
        "LatentUpscale",
        samples=latent,
        upscale_method="bilinear",
        width=0,
        height=0,
        crop="disabled",
    )
    assert same is latent


# bislerp ------------------------------------------------------------------------------


def slerp_ref(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na else np.zeros_like(a)
    ub = b / nb if nb else np.zeros_like(b)
    dot = float(np.dot(ua, ub))
    if dot > 1 - 1e-5:
        return a
    if dot < 1e-5 - 1:
        return a * (1 - t) + b * t
    om = math.acos(dot)
    res = (math.sin((1 - t) * om) * ua + math.sin(t * om) * ub) / math.sin(om)
    return res * (na * (1 - t) + nb * t)


def resize_axis_ref(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Per-pixel loops: output cell i samples source position (i + 0.5) * old / new - 0.5."""
    x = np.moveaxis(x, axis, -1)  # [..., C?] -> put the resized axis last
    old = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (size,))
    for i in range(size):
        p = min(max((i + 0.5) * old / size - 0.5, 0.0), old - 1)
        lo = int(math.floor(p))
        hi = min(lo + 1, old - 1)
        t = p - lo
        for n in range(x.shape[0]):
            for r in range(x.shape[2]):
                out[n, :, r, i] = slerp_ref(x[n, :, r, lo], x[n, :, r, hi], t)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("size", [(7, 5), (12, 16), (3, 2)])
def test_bislerp_matches_a_loop(size):
    x = rand(2, 4, 6, 5, seed=3)
    w, h = size
    ref = resize_axis_ref(x.double().numpy(), w, 3)
    ref = resize_axis_ref(ref, h, 2)
    out = bislerp(x, w, h)
    assert out.shape == (2, 4, h, w) and out.dtype == x.dtype
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4)


def test_latent_upscale_by_bislerp(module_env):
    (out,) = call(
        module_env,
        "LatentUpscaleBy",
        samples={"samples": rand(1, 4, 8, 8)},
        upscale_method="bislerp",
        scale_by=1.5,
    )
    assert out["samples"].shape == (1, 4, 12, 12)


# Composite / blend ----------------------------------------------------------------------


def test_latent_composite_pastes_and_clips(module_env):
    to, frm = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 4, 6)
    (out,) = call(
        module_env,
        "LatentComposite",
        samples_to={"samples": to, "noise_mask": torch.ones(1, 1, 8, 8)},
        samples_from={"samples": frm},
        x=32,
        y=16,
        feather=0,
    )
    expected = torch.zeros(1, 4, 8, 8)
    expected[:, :, 2:6, 4:8] = 1
    assert torch.equal(out["samples"], expected)
    assert "noise_mask" in out and torch.equal(to, torch.zeros(1, 4, 8, 8))


def test_latent_composite_feather():
    from plugins.core.latent_ops import latent_composite

    to, frm = torch.zeros(1, 1, 10, 10), torch.ones(1, 1, 4, 4)
    (out,) = latent_composite.function(
        None, samples_to={"samples": to}, samples_from={"samples": frm}, x=24, y=16, feather=16
    )
    # Two cells of feather on every edge inside the destination: weights 1/2 then 1.
    ramp = np.array([0.5, 1.0, 1.0, 0.5])
    expected = np.zeros((10, 10))
    expected[2:6, 3:7] = np.outer(ramp, ramp)
    np.testing.assert_allclose(out["samples"][0, 0].numpy(), expected)


def test_latent_composite_masked(module_env):
    dest, src = rand(2, 4, 8, 8, seed=1), rand(1, 4, 4, 4, seed=2)
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1.0
    (out,) = call(
        module_env,
        "LatentCompositeMasked",
        destination={"samples": dest, "batch_index": [0, 1]},
        source={"samples": src},
        x=40,
        y=8,
        resize_source=False,
        mask=mask,
    )
    expected = dest.clone()
    # source at cells (1, 5): 4 rows, 3 visible columns; the mask keeps its first 2 columns
    expected[:, :, 1:5, 5:7] = src[:, :, :, :2]
    torch.testing.assert_close(out["samples"], expected)
    assert out["batch_index"] == [0, 1]
    (whole,) = call(
        module_env,
        "LatentCompositeMasked",
        destination={"samples": dest},
        source={"samples": src},
        x=0,
        y=0,
        resize_source=True,
    )
    up = torch.nn.functional.interpolate(src, size=(8, 8), mode="bilinear")
    torch.testing.assert_close(whole["samples"], up.expand(2, -1, -1, -1))


def test_latent_blend(module_env):
    a, b = rand(1, 4, 8, 8, seed=1), rand(1, 4, 8, 8, seed=2)
    (out,) = call(
        module_env,
        "LatentBlend",
        samples1={"samples": a, "noise_mask": torch.ones(1, 1, 8, 8)},
        samples2={"samples": b},
        blend_factor=0.25,
    )
    torch.testing.assert_close(out["samples"], 0.25 * a + 0.75 * b)
    assert "noise_mask" in out


# Crop / flip / rotate / from batch ------------------------------------------------------


def test_latent_crop(module_env):
    s = rand(1, 4, 16, 16)
    (out,) = call(module_env, "LatentCrop", samples={"samples": s}, width=64, height=80, x=16, y=8)
    assert torch.equal(out["samples"], s[:, :, 1:11, 2:10])
    (moved,) = call(
        module_env, "LatentCrop", samples={"samples": s}, width=512, height=512, x=120, y=4000
    )
    assert torch.equal(moved["samples"], s[:, :, 8:, 8:])  # corner moved in: 8 cells remain


def test_latent_flip_and_rotate(module_env):
    s = torch.arange(2 * 3, dtype=torch.float32).view(1, 1, 2, 3)
    (v,) = call(module_env, "LatentFlip", samples={"samples": s}, flip_method="x-axis: vertically")
    assert v["samples"][0, 0].tolist() == [[3, 4, 5], [0, 1, 2]]
    (h,) = call(
        module_env, "LatentFlip", samples={"samples": s}, flip_method="y-axis: horizontally"
    )
    assert h["samples"][0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]
    # clockwise by 90 degrees: the first column, read bottom to top, becomes the first row
    (r,) = call(module_env, "LatentRotate", samples={"samples": s}, rotation="90 degrees")
    assert r["samples"][0, 0].tolist() == [[3, 0], [4, 1], [5, 2]]
    (r2,) = call(module_env, "LatentRotate", samples={"samples": s}, rotation="180 degrees")
    assert r2["samples"][0, 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    (r0,) = call(module_env, "LatentRotate", samples={"samples": s}, rotation="none")
    assert torch.equal(r0["samples"], s)


def test_latent_from_batch_carries_masks_and_indices(module_env):
    s = rand(5, 4, 4, 4)
    masks = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 4, 4)
    (out,) = call(
        module_env,
        "LatentFromBatch",
        samples={"samples": s, "noise_mask": masks},
        batch_index=-2,
        length=10,
    )
    assert torch.equal(out["samples"], s[3:5])
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [3.0, 4.0]
    assert out["batch_index"] == [3, 4]
    (again,) = call(module_env, "LatentFromBatch", samples=out, batch_index=1, length=1)
    assert again["batch_index"] == [4]
    (shared,) = call(
        module_env,
        "LatentFromBatch",
        samples={"samples": s, "noise_mask": torch.ones(1, 1, 4, 4)},
        batch_index=2,
        length=1,
    )
    assert shared["noise_mask"].shape == (1, 1, 4, 4) and shared["batch_index"] == [2]


def test_bad_choices_are_named(module_env):
    with pytest.raises(ValueError, match="'sideways'"):
        call(
            module_env, "LatentFlip", samples={"samples": rand(1, 4, 2, 2)}, flip_method="sideways"
        )


# Tiled VAE ------------------------------------------------------------------------------


def test_tiled_decode_and_encode(module_env):
    ckpt = module_env.models.checkpoint("tiny-random")
    vae = VaeHandle(ckpt)
    latents = rand(1, 4, 16, 16, seed=4) * 0.5
    (plain,) = call(module_env, "VAEDecode", samples={"samples": latents}, vae=vae)
    (one_tile,) = call(
        module_env,
        "VAEDecodeTiled",
        samples={"samples": latents},
        vae=vae,
        tile_size=256,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    torch.testing.assert_close(one_tile, plain, atol=1e-5, rtol=0)  # every tiling is one tile
    (tiled,) = call(
        module_env,
        "VAEDecodeTiled",
        samples={"samples": latents},
        vae=vae,
        tile_size=64,
        overlap=32,
        temporal_size=64,
        temporal_overlap=8,
    )
    assert tiled.shape == plain.shape == (1, 128, 128, 3)
    assert float((tiled - plain).abs().mean()) < 0.1  # seams differ, the picture does not
    (enc,) = call(module_env, "VAEEncode", pixels=plain, vae=vae)
    (enc_tiled,) = call(
        module_env,
        "VAEEncodeTiled",
        pixels=plain,
        vae=vae,
        tile_size=512,
        overlap=64,
        temporal_size=64,
        temporal_overlap=8,
    )
    torch.testing.assert_close(enc_tiled["samples"], enc["samples"], atol=1e-5, rtol=0)
    (enc_small,) = call(
        module_env,
        "VAEEncodeTiled",
        pixels=plain,
        vae=vae,
        tile_size=64,
        overlap=0,
        temporal_size=64,
        temporal_overlap=8,
    )
    assert enc_small["samples"].shape == enc["samples"].shape
    with pytest.raises(ValueError, match="overlap 64"):
        call(
            module_env,
            "VAEEncodeTiled",
            pixels=plain,
            vae=vae,
            tile_size=64,
            overlap=64,
            temporal_size=64,
            temporal_overlap=8,
        )
