"""The ControlNet nodes: the ControlSpec chains they build, Canny's edges against geometry,
validation of their inputs, and a whole ControlNet workflow on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runner_testlib import image_of, write_gradient_png

from runner import CondEntry, Conditioning, ControlSpec
from runner.context import CancelToken, NodeContext
from runner.errors import WorkflowInvalid
from tests.helpers import tiny_control as tc


@pytest.fixture(scope="module")
def control_env(tmp_path_factory, cache_folder):
    """An environment whose models folder holds a ControlNet made from tiny-random's UNet
    (as a diffusers folder and as an original-layout file) and a T2I-Adapter."""
    from diffusers import UNet2DConditionModel

    from runner.environment import Environment
    from runner.models.tiny import tiny_model_dir
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("control-data")
    models = root / "models"
    unet = UNet2DConditionModel.from_pretrained(
        tiny_model_dir(cache_folder), subfolder="unet", local_files_only=True
    )
    cn = tc.controlnet_from_unet(unet, seed=4)
    tc.save_folder(cn, models / "controlnet" / "tiny-cn")
    tc.save_original_controlnet(cn, models / "controlnet" / "tiny-cn.safetensors")
    tc.save_original_adapter(tc.tiny_adapter(), models / "t2i_adapter" / "tiny-t2i.safetensors")
    write_gradient_png(root / "input" / "hint.png")
    env = Environment(EngineSettings(data_dir=root, cache_folder=cache_folder))
    yield env
    env.close()


def _ctx(env, class_type: str) -> NodeContext:
    return NodeContext(
        env=env,
        job_id="test",
        node_id="1",
        class_type=class_type,
        emit=lambda event: None,
        cancel=CancelToken(),
    )


def _call(env, class_type: str, **inputs):
    node = env.node_types[class_type]
    return node.function(_ctx(env, class_type), **inputs)


def _cond(n: int = 1, seed: int = 0) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    return Conditioning(
        entries=[CondEntry(torch.randn(1, 77, 32, generator=gen)) for _ in range(n)]
    )


def test_loader_gives_the_control_model(control_env):
    (model,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    assert (model.kind, model.family) == ("controlnet", "sd1")
    (same,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    assert same is model  # cached
    (adapter,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-t2i.safetensors")
    assert adapter.kind == "t2i_adapter"


def test_diff_loader_takes_heads_from_the_model(control_env):
    (handle, _, _) = _call(control_env, "CheckpointLoaderSimple", ckpt_name="tiny-random")
    (plain,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn.safetensors")
    (with_model,) = _call(
        control_env, "DiffControlNetLoader", model=handle, control_net_name="tiny-cn.safetensors"
    )
    unet_heads = handle.checkpoint.pipe.unet.config.attention_head_dim
    assert plain.module.config.attention_head_dim == 8  # SD1's stock heads: a file cannot say
    assert list(with_model.module.config.attention_head_dim) == list(unet_heads)
    assert tc.same_weights(plain.module, with_model.module)


def test_apply_advanced_chains_on_both_sides(control_env):
    (a,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    (b,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-t2i.safetensors")
    image_a, image_b = torch.rand(1, 64, 64, 3), torch.rand(2, 64, 64, 3)
    pos, neg = _cond(2, 0), _cond(1, 1)
    pos1, neg1 = _call(
        control_env,
        "ControlNetApplyAdvanced",
        positive=pos,
        negative=neg,
        control_net=a,
        image=image_a,
        strength=0.7,
        start_percent=0.1,
        end_percent=0.9,
    )
    pos2, neg2 = _call(
        control_env,
        "ControlNetApplyAdvanced",
        positive=pos1,
        negative=neg1,
        control_net=b,
        image=image_b,
        strength=1.5,
        start_percent=0.0,
        end_percent=0.5,
    )
    for entry in [*pos2, *neg2]:
        chain = entry.control.chain()
        assert [c.model for c in chain] == [a, b]
        assert [(c.strength, c.start_percent, c.end_percent) for c in chain] == [
            (0.7, 0.1, 0.9),
            (1.5, 0.0, 0.5),
        ]
        assert torch.equal(chain[0].hint, image_a) and torch.equal(chain[1].hint, image_b)
        assert not entry.extra
    # Entries with the same previous control share one spec (ComfyUI's one copy per previous).
    specs = {id(e.control) for e in [*pos2, *neg2]}
    assert len(specs) == 1
    # The prompts themselves are untouched, and the inputs are not changed.
    assert all(torch.equal(x.embeds, y.embeds) for x, y in zip(pos2, pos, strict=True))
    assert all(e.control is None for e in [*pos, *neg])
    assert len(pos2) == 2 and len(neg2) == 1


def test_chain_keeps_distinct_previous_controls_apart(control_env):
    (a,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    first = ControlSpec(model=a, hint=torch.zeros(1, 8, 8, 3))
    mixed = Conditioning(entries=[_cond().entries[0].replace(control=first), _cond().entries[0]])
    (out,) = _call(
        control_env,
        "ControlNetApply",
        conditioning=mixed,
        control_net=a,
        image=torch.ones(1, 8, 8, 3),
        strength=1.0,
    )
    assert out.entries[0].control.previous is first
    assert out.entries[1].control.previous is None
    assert out.entries[0].control is not out.entries[1].control


def test_strength_zero_returns_the_inputs(control_env):
    (a,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    pos, neg = _cond(), _cond()
    out = _call(
        control_env,
        "ControlNetApplyAdvanced",
        positive=pos,
        negative=neg,
        control_net=a,
        image=torch.rand(1, 8, 8, 3),
        strength=0.0,
        start_percent=0.0,
        end_percent=1.0,
    )
    assert out[0] is pos and out[1] is neg
    (same,) = _call(
        control_env,
        "ControlNetApply",
        conditioning=pos,
        control_net=a,
        image=torch.rand(1, 8, 8, 3),
        strength=0.0,
    )
    assert same is pos


def test_apply_acts_on_the_whole_schedule_and_the_negative(control_env):
    (a,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    (out,) = _call(
        control_env,
        "ControlNetApply",
        conditioning=_cond(),
        control_net=a,
        image=torch.rand(1, 8, 8, 3),
        strength=2.0,
    )
    spec = out.entries[0].control
    assert (spec.strength, spec.start_percent, spec.end_percent, spec.previous) == (
        2.0,
        0.0,
        1.0,
        None,
    )
    assert out.entries[0].extra == {"control_apply_to_uncond": True}


def test_bad_hint_image_is_refused(control_env):
    (a,) = _call(control_env, "ControlNetLoader", control_net_name="tiny-cn")
    with pytest.raises(ValueError, match=r"IMAGE \[batch, height, width, 3\], got \(64, 64, 3\)"):
        _call(
            control_env,
            "ControlNetApply",
            conditioning=_cond(),
            control_net=a,
            image=torch.rand(64, 64, 3),
            strength=1.0,
        )


def test_canny_finds_the_edges_of_a_square(control_env):
    size, lo, hi = 64, 16, 48
    image = torch.zeros(1, size, size, 3)
    image[:, lo:hi, lo:hi, :] = 1.0
    (edges,) = _call(control_env, "Canny", image=image, low_threshold=0.4, high_threshold=0.8)
    assert edges.shape == (1, size, size, 3)
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    e = edges[0, ..., 0].numpy()
    assert set(np.unique(e)) <= {0.0, 1.0}
    ys, xs = np.nonzero(e)
    # Distance of every edge pixel to the square's outline (the lines y, x = 15.5 and 47.5).
    inside_box = (ys >= lo - 2) & (ys <= hi + 1) & (xs >= lo - 2) & (xs <= hi + 1)
    near = np.minimum.reduce(
        [abs(ys - (lo - 0.5)), abs(ys - (hi - 0.5)), abs(xs - (lo - 0.5)), abs(xs - (hi - 0.5))]
    )
    assert inside_box.all() and (near <= 1.5).all()
    # Each side of the square is traced along its straight part.
    middle = slice(lo + 4, hi - 4)
    assert e[lo - 2 : lo + 2, middle].any(axis=0).all()
    assert e[hi - 2 : hi + 2, middle].any(axis=0).all()
    assert e[middle, lo - 2 : lo + 2].any(axis=1).all()
    assert e[middle, hi - 2 : hi + 2].any(axis=1).all()
    # A flat image has no edges.
    (flat,) = _call(
        control_env,
        "Canny",
        image=torch.full((1, 32, 32, 3), 0.5),
        low_threshold=0.4,
        high_threshold=0.8,
    )
    assert not flat.any()


def _workflow(control_net_name: str | None, strength: float = 1.0) -> dict:
    wf = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 3,
                "steps": 3,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if control_net_name is not None:
        wf["10"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        wf["11"] = {
            "class_type": "Canny",
            "inputs": {"image": ["10", 0], "low_threshold": 0.1, "high_threshold": 0.3},
        }
        wf["12"] = {
            "class_type": "ControlNetLoader",
            "inputs": {"control_net_name": control_net_name},
        }
        wf["13"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["6", 0],
                "negative": ["7", 0],
                "control_net": ["12", 0],
                "image": ["11", 0],
                "strength": strength,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        }
        wf["3"]["inputs"]["positive"] = ["13", 0]
        wf["3"]["inputs"]["negative"] = ["13", 1]
    return wf


def test_workflow_runs_and_strength_zero_is_no_control(control_env):
    plain = image_of(control_env.run(_workflow(None)))
    zero = image_of(control_env.run(_workflow("tiny-cn", strength=0.0)))
    assert np.array_equal(plain, zero)


@pytest.mark.parametrize("name", ["tiny-cn", "tiny-cn.safetensors"])
def test_workflow_with_control_differs(control_env, name):
    plain = image_of(control_env.run(_workflow(None)))
    controlled = image_of(control_env.run(_workflow(name, strength=1.0)))
    assert not np.array_equal(plain, controlled)


def test_validation_names_bad_inputs(control_env):
    wf = _workflow("missing.safetensors")
    wf["11"]["inputs"].update(low_threshold=0.9, high_threshold=0.2)
    with pytest.raises(WorkflowInvalid) as caught:
        control_env.run(wf)
    text = str(caught.value)
    assert "missing.safetensors" in text and "available: tiny-cn" in text
    assert "low_threshold 0.9 is above high_threshold 0.2" in text
