"""GLIGENLoader + GLIGENTextBoxApply: a tiny GLIGEN text-box file in ComfyUI's layout
(``position_net.*`` and per-block ``fuser`` weights under the original UNet numbering),
loaded through the real loader; the UNet with the fusers attached for a call must equal
diffusers' own gated-attention UNet holding the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from runner.errors import ModelError
from runner.models.gligen import GligenBoxes, gligen_from_state_dict, installed, transformer_blocks
from tests.helpers.tiny_control import tiny_sd1_unet
from tests.helpers.tiny_vision import _ldm_block_names, gligen_state


def _gated_twin(unet, model):
    """diffusers' UNet with attention_type="gated", holding ``unet``'s weights and the
    GLIGEN model's fusers and position net."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    gated = UNet2DConditionModel(**{**config, "attention_type": "gated"}).eval()
    missing, unexpected = gated.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all("fuser" in k or "position_net" in k for k in missing)
    for block, fuser in zip(transformer_blocks(gated), model.fusers, strict=True):
        block.fuser.load_state_dict(fuser.state_dict())
        block.fuser.attn.heads = fuser.attn.heads  # the file's head count (ComfyUI's rule)
    gated.position_net.load_state_dict(model.position_net.state_dict())
    return gated


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 7, 32, generator=gen)


def test_the_fusers_attached_for_a_call_are_diffusers_gated_unet():
    unet = tiny_sd1_unet()
    model = gligen_from_state_dict(gligen_state(unet, seed=1), "tiny")
    boxes = GligenBoxes(model, ((torch.randn(32), 4, 4, 2, 1), (torch.randn(32), 8, 3, 0, 5)))
    x, ctx = _inputs()
    inputs = boxes.inputs(x.shape, torch.device("cpu"), torch.float32)
    keys_before = set(unet.state_dict())
    with torch.no_grad():
        base = unet(x, 400, encoder_hidden_states=ctx).sample
        with installed(unet, model):
            ours = unet(
                x, 400, encoder_hidden_states=ctx, cross_attention_kwargs={"gligen": inputs}
            ).sample
        twin = _gated_twin(unet, model)(
            x, 400, encoder_hidden_states=ctx, cross_attention_kwargs={"gligen": inputs}
        ).sample
        after = unet(x, 400, encoder_hidden_states=ctx).sample
    assert torch.allclose(ours, twin, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-3)
    assert torch.equal(after, base) and set(unet.state_dict()) == keys_before


def test_boxes_are_relative_to_the_latent_and_padded_to_30():
    unet = tiny_sd1_unet()
    model = gligen_from_state_dict(gligen_state(unet), "tiny")
    phrase = torch.randn(32)
    # 4x4 cells at (y 2, x 1) in an 8x16 latent (height 8, width 16).
    inputs = GligenBoxes(model, ((phrase, 4, 4, 2, 1),)).inputs((3, 4, 8, 16), "cpu", torch.float32)
    assert inputs["boxes"].shape == (3, 30, 4)
    assert torch.allclose(inputs["boxes"][:, 0], torch.tensor([1 / 16, 2 / 8, 5 / 16, 6 / 8]))
    assert inputs["masks"][0].tolist() == [1.0] + [0.0] * 29
    assert torch.equal(inputs["positive_embeddings"][1, 0], phrase)
    assert not inputs["positive_embeddings"][:, 1:].any()


def test_position_net_is_fourier_features_and_the_null_features_written_out():
    unet = tiny_sd1_unet()
    sd = gligen_state(unet, seed=2)
    model = gligen_from_state_dict(sd, "tiny")
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.9], [0, 0, 0, 0]]])
    masks = torch.tensor([[1.0, 0.0]])
    phrases = torch.randn(1, 2, 32)
    feats = []
    for f in range(8):
        freq = 100 ** (f / 8)
        feats += [torch.sin(freq * boxes), torch.cos(freq * boxes)]
    fourier = torch.cat(feats, -1)
    m = masks[..., None]
    fourier = fourier * m + (1 - m) * sd["position_net.null_position_feature"]
    phrases = phrases * m + (1 - m) * sd["position_net.null_positive_feature"]
    h = torch.cat([phrases, fourier], -1)
    for i in (0, 2, 4):
        h = h @ sd[f"position_net.linears.{i}.weight"].T + sd[f"position_net.linears.{i}.bias"]
        if i < 4:
            h = h * torch.sigmoid(h)
    with torch.no_grad():
        out = model.position_net(boxes=boxes, masks=masks, positive_embeddings=phrases)
    assert math.isclose(float((out - h).abs().max()), 0.0, abs_tol=1e-5)


def test_fusers_load_in_the_original_block_order():
    unet = tiny_sd1_unet()
    sd = gligen_state(unet, seed=3)
    model = gligen_from_state_dict(sd, "tiny")
    names = [name for name, _ in _ldm_block_names(unet)]
    assert len(model.fusers) == len(names) == 4
    for name, fuser in zip(names, model.fusers, strict=True):
        assert torch.equal(fuser.linear.weight, sd[f"{name}.fuser.linear.weight"])


def test_other_files_and_other_models_are_refused():
    unet = tiny_sd1_unet()
    with pytest.raises(ModelError, match="not a GLIGEN"):
        gligen_from_state_dict({"x": torch.zeros(1)}, "odd")
    model = gligen_from_state_dict(gligen_state(unet), "tiny")
    model.fusers = model.fusers[:3]
    with pytest.raises(ValueError, match="3 gated attention layers.*4 transformer blocks"):
        with installed(unet, model):
            pass


# -- through the nodes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gligen_env(tmp_path_factory, cache_folder):
    from safetensors.torch import save_file

    from runner.environment import Environment
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("models")
    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder, models_dir=root
        )
    )
    unet = env.models.checkpoint("tiny-random").pipe.unet
    (root / "gligen").mkdir()
    save_file(gligen_state(unet, seed=4), str(root / "gligen" / "gligen_tiny.safetensors"))
    yield env
    env.close()


def _workflow(env, boxes=(("a cat", 32, 32, 8, 16),)):
    from runner_testlib import txt2img_workflow

    wf = txt2img_workflow(env, steps=2)
    wf["20"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": "gligen_tiny.safetensors"}}
    source = ["6", 0]
    for i, (text, w, h, x, y) in enumerate(boxes):
        wf[f"3{i}"] = {
            "class_type": "GLIGENTextBoxApply",
            "inputs": {
                "conditioning_to": source,
                "clip": ["4", 1],
                "gligen_textbox_model": ["20", 0],
                "text": text,
                "width": w,
                "height": h,
                "x": x,
                "y": y,
            },
        }
        source = [f"3{i}", 0]
    wf["3"]["inputs"]["positive"] = source
    return wf


def test_boxes_steer_the_image_and_the_model_is_untouched_afterwards(gligen_env):
    from runner_testlib import image_of

    env = gligen_env
    unet = env.models.checkpoint("tiny-random").pipe.unet
    keys = set(unet.state_dict())
    result = env.run(_workflow(env, boxes=(("a cat", 32, 32, 8, 16), ("a dog", 16, 24, 40, 0))))
    spec = result.values["31"][0].entries[0].extra["gligen"]
    assert [b[1:] for b in spec.boxes] == [(4, 4, 2, 1), (3, 2, 0, 5)]  # (h, w, y, x) cells
    plain = env.run(_workflow(env, boxes=()))
    assert not (image_of(result) == image_of(plain)).all()
    assert set(unet.state_dict()) == keys


def test_the_phrase_embedding_is_the_text_encoders_pooled_output(gligen_env):
    env = gligen_env
    result = env.run(_workflow(env))
    ((pooled, *_),) = result.values["30"][0].entries[0].extra["gligen"].boxes
    pipe = env.models.checkpoint("tiny-random").pipe
    ids = pipe.tokenizer(
        "a cat", padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids).last_hidden_state[0]
    eos = int((ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0])
    assert torch.allclose(pooled, hidden[eos], atol=1e-5)
