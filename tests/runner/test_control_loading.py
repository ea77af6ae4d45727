"""Loading ControlNets and T2I-Adapters from every layout the loader accepts, SD1 and SDXL:
the loaded weights equal the saved ones, the configs built from shapes compute what the
original module computes, and files that are neither are refused with the file named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from runner.errors import ModelError, UnsafeFileError
from runner.models.controlnet import (
    ControlModel,
    check_control_name,
    control_names,
    control_store,
    load_control,
)
from tests.helpers import tiny_control as tc

CPU = torch.device("cpu")


def _load(path, unet=None):
    return load_control(path, name=path.name, device=CPU, dtype=torch.float32, unet=unet)


@pytest.fixture(scope="module")
def sd1():
    unet = tc.tiny_sd1_unet()
    return unet, tc.controlnet_from_unet(unet)


@pytest.fixture(scope="module")
def sdxl():
    unet = tc.tiny_sdxl_unet()
    return unet, tc.controlnet_from_unet(unet)


def _writers(tmp_path):
    return {
        "folder": lambda m: tc.save_folder(m, tmp_path / "folder"),
        "diffusers-file": lambda m: tc.save_diffusers_file(m, tmp_path / "d.safetensors"),
        "original": lambda m: tc.save_original_controlnet(m, tmp_path / "o.safetensors"),
        "original-unprefixed": lambda m: tc.save_original_controlnet(
            m, tmp_path / "u.safetensors", prefix=False
        ),
    }


def _cn_outputs(cn, xl: bool):
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    hint = torch.rand(1, 3, 64, 64, generator=gen)
    text = torch.randn(1, 5, cn.config.cross_attention_dim, generator=gen)
    added = None
    if xl:
        pooled = cn.config.projection_class_embeddings_input_dim - 6 * 256
        added = {
            "text_embeds": torch.randn(1, pooled, generator=gen),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    with torch.no_grad():
        down, mid = cn(
            sample,
            torch.tensor([500]),
            encoder_hidden_states=text,
            controlnet_cond=hint,
            added_cond_kwargs=added,
            return_dict=False,
        )
    return [*down, mid]


@pytest.mark.parametrize("layout", ["folder", "diffusers-file", "original", "original-unprefixed"])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controlnet_layouts(tmp_path, layout, family, sd1, sdxl):
    _, cn = sd1 if family == "sd1" else sdxl
    path = _writers(tmp_path)[layout](cn)
    loaded = _load(path)
    assert isinstance(loaded, ControlModel)
    assert (loaded.kind, loaded.family) == ("controlnet", family)
    assert tc.same_weights(loaded.module, cn)
    # The config built from the shapes computes what the saved module computes.
    for ours, theirs in zip(
        _cn_outputs(loaded.module, family == "sdxl"), _cn_outputs(cn, family == "sdxl"), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["folder", "diffusers-file", "original"])
@pytest.mark.parametrize("variant", ["sd1", "sdxl", "light"])
def test_adapter_layouts(tmp_path, layout, variant):
    adapter = (
        tc.tiny_light_adapter() if variant == "light" else tc.tiny_adapter(xl=variant == "sdxl")
    )
    write = {
        "folder": lambda: tc.save_folder(adapter, tmp_path / "folder"),
        "diffusers-file": lambda: tc.save_diffusers_file(adapter, tmp_path / "d.safetensors"),
        "original": lambda: tc.save_original_adapter(adapter, tmp_path / "o.safetensors"),
    }[layout]
    loaded = _load(write())
    assert loaded.kind == "t2i_adapter"
    assert loaded.family == ("sdxl" if variant == "sdxl" else "sd1")
    assert tc.same_weights(loaded.module, adapter)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for ours, theirs in zip(loaded.module(hint), adapter(hint), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_original_adapter_keys_are_tencentarc_scheme(tmp_path):
    """The original layout written by the helper is the flat ``body.K`` scheme ComfyUI reads."""
    keys = set(tc.original_adapter_state(tc.tiny_adapter()))
    assert {"conv_in.weight", "body.0.block1.weight", "body.3.block2.bias"} <= keys
    assert "body.2.in_conv.weight" in keys and "body.1.in_conv.weight" not in keys


def test_diff_controlnet_adds_the_unet(tmp_path, sd1):
    unet, cn = sd1
    path = tc.save_original_controlnet(
        cn, tmp_path / "diff.safetensors", subtract=unet.state_dict()
    )
    with pytest.raises(ModelError, match="diff ControlNet.*DiffControlNetLoader"):
        _load(path)
    loaded = _load(path, unet=unet)
    assert loaded.diff
    theirs = cn.state_dict()
    for key, value in loaded.module.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-6)
    # Tensors the UNet lacks (hint encoder, zero convolutions) were stored as they are.
    assert torch.equal(
        loaded.module.controlnet_down_blocks[0].weight, cn.controlnet_down_blocks[0].weight
    )


def test_companion_config_overrides_the_stock_heads(tmp_path):
    """Heads cannot be read from weights: ``<stem>.config/config.json`` gives them."""
    unet = tc.tiny_sd1_unet()
    unet_cfg = dict(unet.config)
    unet_cfg["attention_head_dim"] = (2, 4)
    odd = tc.controlnet_from_unet(type(unet).from_config(unet_cfg))
    path = tc.save_original_controlnet(odd, tmp_path / "odd.safetensors")
    assert _load(path).module.config.attention_head_dim == 8  # SD1's stock heads
    (tmp_path / "odd.config").mkdir()
    (tmp_path / "odd.config" / "config.json").write_text(json.dumps(dict(odd.config)))
    loaded = _load(path)
    assert list(loaded.module.config.attention_head_dim) == [2, 4]
    for ours, theirs in zip(
        _cn_outputs(loaded.module, False), _cn_outputs(odd, False), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(ModelError, match=r"ckpt\.safetensors.*whole Stable Diffusion checkpoint"):
        _load(path)


def test_an_unknown_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match=r"other\.safetensors: not a ControlNet or T2I-Adapter"):
        _load(path)


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "control_sd15_canny.pth"
    path.write_bytes(b"not read")
    with pytest.raises(UnsafeFileError, match="control_sd15_canny.pth"):
        _load(path)


def test_incomplete_file_is_refused(tmp_path, sd1):
    _, cn = sd1
    state = tc.original_controlnet_state(cn)
    state.pop("control_model.zero_convs.1.0.weight")
    path = tmp_path / "cut.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"cut\.safetensors.*missing"):
        _load(path)


def test_names_and_cache(settings, sd1):
    models = settings.models_root
    _, cn = sd1
    tc.save_original_controlnet(cn, models / "controlnet" / "canny.safetensors")
    tc.save_folder(cn, models / "controlnet" / "sub" / "depth")
    tc.save_original_adapter(tc.tiny_adapter(), models / "t2i_adapter" / "t2i.safetensors")
    (models / "controlnet" / "old.pth").write_bytes(b"x")
    save_file({"x": torch.zeros(1)}, str(models / "controlnet" / "junk.safetensors"))
    names = control_names(settings)
    assert names == ["canny.safetensors", "junk.safetensors", "sub/depth", "t2i.safetensors"]
    assert check_control_name(settings, "canny.safetensors") is None
    assert "junk.safetensors" in check_control_name(settings, "junk.safetensors")
    assert "refusing to load a .pth" in check_control_name(settings, "old.pth")
    assert "available: canny.safetensors" in check_control_name(settings, "nope.safetensors")
    assert "plain name" in check_control_name(settings, "../canny.safetensors")

    from runner.models.manager import ModelManager

    store = control_store(ModelManager(settings))
    first = store.get("canny.safetensors")
    assert store.get("canny.safetensors") is first
    assert store.get("sub/depth").layout == "diffusers-folder"
    assert store.get("t2i.safetensors").kind == "t2i_adapter"
