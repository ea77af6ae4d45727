"""ControlNet and T2I-Adapter residuals in the loop (runner.diffusion.control): expected
values from direct calls of the diffusers ControlNetModel / T2IAdapter and the UNet."""

from __future__ import annotations

import pytest
import torch

from runner.diffusion.control import hint_to_size
from runner.diffusion.guidance import Guidance
from runner.diffusion.sampling import SampleJob
from runner.handles import Area, CondEntry, Conditioning, ControlSpec
from tests.helpers.tiny_guidance import tiny_controlnet, tiny_t2i_adapter

CPU = torch.device("cpu")
T = torch.tensor(400.0)


@pytest.fixture(scope="module")
def sd1(module_env):
    return module_env.models.checkpoint("tiny-random")


@pytest.fixture(scope="module")
def nets(sd1):
    return tiny_controlnet(sd1.pipe.unet, seed=0), tiny_controlnet(sd1.pipe.unet, seed=1)


def _emb(seed: int) -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(seed))


def _hint(seed: int, h: int = 96, w: int = 64) -> torch.Tensor:
    return torch.rand((1, h, w, 3), generator=torch.Generator().manual_seed(seed))


X = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
E = _emb(1)


def _guide(ckpt, entry, x=X, t=T):
    g = Guidance(
        ckpt,
        [SampleJob(0, torch.zeros_like(x), Conditioning(entries=[entry]), Conditioning(_emb(9)))],
        1.0,
        latent_shape=tuple(x.shape),
        device=CPU,
        dtype=torch.float32,
    )
    with torch.inference_mode():
        return g(x, t)


def _centre_hint(hint):
    """A 96x64 hint fitted to 64x64: its middle 64 rows, already the size (no resampling)."""
    return hint[:, 16:80].movedim(-1, 1)


def _by_hand(ckpt, specs, x=X, t=T):
    with torch.inference_mode():
        down, mid = None, None
        for spec in specs:
            d, m = spec.model.module(
                x,
                t,
                encoder_hidden_states=E,
                controlnet_cond=_centre_hint(spec.hint),
                conditioning_scale=spec.strength,
                return_dict=False,
            )
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        return ckpt.pipe.unet(
            x,
            t,
            encoder_hidden_states=E,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


def _plain(ckpt, x=X, t=T):
    with torch.inference_mode():
        return ckpt.pipe.unet(x, t, encoder_hidden_states=E, return_dict=False)[0]


def test_hint_is_centre_cropped_to_the_aspect_then_resized_nearest():
    hint = _hint(0)
    assert torch.equal(hint_to_size(hint, 64, 64), _centre_hint(hint))
    small = hint_to_size(hint, 32, 32)  # nearest-exact halving takes every other pixel, offset 1/2
    assert torch.equal(small, _centre_hint(hint)[..., 1::2, 1::2])


def test_zero_strength_controlnet_is_no_controlnet(sd1, nets):
    spec = ControlSpec(nets[0], _hint(0), strength=0.0)
    out = _guide(sd1, CondEntry(E, control=spec))
    torch.testing.assert_close(out, _plain(sd1), rtol=0, atol=1e-6)


def test_controlnet_strength_one_matches_a_direct_call_and_changes_the_prediction(sd1, nets):
    spec = ControlSpec(nets[0], _hint(0), strength=1.0)
    out = _guide(sd1, CondEntry(E, control=spec))
    torch.testing.assert_close(out, _by_hand(sd1, [spec]), rtol=0, atol=1e-5)
    assert (out - _plain(sd1)).abs().max() > 1e-3


def test_two_chained_controlnets_add_their_residuals(sd1, nets):
    first = ControlSpec(nets[0], _hint(0), strength=0.7)
    second = ControlSpec(nets[1], _hint(1), strength=1.3, previous=first)
    out = _guide(sd1, CondEntry(E, control=second))
    torch.testing.assert_close(out, _by_hand(sd1, [first, second]), rtol=0, atol=1e-5)
    assert (out - _by_hand(sd1, [second])).abs().max() > 1e-4


def test_a_control_outside_its_range_is_skipped_in_the_chain(sd1, nets):
    """At t = 400 a control acting from 60 % on (t <= 0.4 * 999 = 399.6) is off; one
    acting until 60 % (t >= 399.6) is on."""
    early = ControlSpec(nets[0], _hint(0), strength=1.0, end_percent=0.6)
    late = ControlSpec(nets[1], _hint(1), strength=1.0, start_percent=0.6, previous=early)
    out = _guide(sd1, CondEntry(E, control=late))
    torch.testing.assert_close(out, _by_hand(sd1, [early]), rtol=0, atol=1e-5)


def test_a_controlnet_on_an_area_entry_sees_its_hint_fitted_to_the_area(sd1, nets):
    """The area entry's UNet input is the 8x4 crop; the ControlNet gets the hint fitted to
    64x32 pixels, the crop's size times 8."""
    spec = ControlSpec(nets[0], _hint(0, 64, 64), strength=1.0)
    entry = CondEntry(E, area=Area(8, 4, 0, 4), control=spec)
    out = _guide(sd1, entry)
    crop = X[..., 4:8]
    with torch.inference_mode():
        d, m = spec.model.module(
            crop,
            T,
            encoder_hidden_states=E,
            controlnet_cond=hint_to_size(spec.hint, 64, 32),
            return_dict=False,
        )
        pred = sd1.pipe.unet(
            crop,
            T,
            encoder_hidden_states=E,
            down_block_additional_residuals=d,
            mid_block_additional_residual=m,
            return_dict=False,
        )[0]
    torch.testing.assert_close(out[..., 4:8], pred, rtol=0, atol=1e-5)
    assert torch.equal(out[..., :4], torch.zeros_like(out[..., :4]))  # no entry covers it


def test_t2i_adapter_features_are_added_in_the_down_blocks(sd1):
    adapter = tiny_t2i_adapter()
    spec = ControlSpec(adapter, _hint(2), strength=0.8)
    out = _guide(sd1, CondEntry(E, control=spec))
    with torch.inference_mode():
        feats = [f * 0.8 for f in adapter.module(_centre_hint(spec.hint))]
        expected = sd1.pipe.unet(
            X,
            T,
            encoder_hidden_states=E,
            down_intrablock_additional_residuals=feats,
            return_dict=False,
        )[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert (out - _plain(sd1)).abs().max() > 1e-3


def test_controlnet_and_t2i_adapter_chain_together(sd1, nets):
    adapter = tiny_t2i_adapter()
    net = ControlSpec(nets[0], _hint(0), strength=1.0)
    both = ControlSpec(adapter, _hint(2), strength=1.0, previous=net)
    out = _guide(sd1, CondEntry(E, control=both))
    with torch.inference_mode():
        d, m = nets[0].module(
            X, T, encoder_hidden_states=E, controlnet_cond=_centre_hint(net.hint), return_dict=False
        )
        feats = adapter.module(_centre_hint(both.hint))
        expected = sd1.pipe.unet(
            X,
            T,
            encoder_hidden_states=E,
            down_block_additional_residuals=d,
            mid_block_additional_residual=m,
            down_intrablock_additional_residuals=list(feats),
            return_dict=False,
        )[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_an_unknown_control_kind_is_a_clear_error(sd1, nets):
    from tests.helpers.tiny_guidance import ControlModel

    spec = ControlSpec(ControlModel("ipadapter", nets[0].module), _hint(0))
    with pytest.raises(ValueError, match="ipadapter"):
        _guide(sd1, CondEntry(E, control=spec))
