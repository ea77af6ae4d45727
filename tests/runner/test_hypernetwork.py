"""HypernetworkLoader: A1111 hypernetworks (.pt through the restricted unpickler, and
.safetensors) on a tiny UNet. A hypernetwork of linear layers is an affine map of the
context, so it can be folded into the key and value projections: the UNet with the
hypernetwork must equal the UNet with those folded weights, computed here by hand."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from runner.errors import ModelError, UnsafeFileError
from runner.models.hypernetworks import (
    HypernetworkAttnProcessor,
    HypernetworkPatch,
    applied,
    hypernetwork_from_state,
    read_hypernetwork,
)
from tests.helpers.tiny_control import tiny_sd1_unet
from tests.helpers.tiny_vision import (
    hypernetwork_state,
    save_hypernetwork_pt,
    save_hypernetwork_safetensors,
)


def _affine(pair_sd: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, a)`` with ``mlp(c) = c A^T + a`` for an MLP of linear layers only."""
    names = sorted({k.rsplit(".", 1)[0] for k in pair_sd}, key=lambda n: int(n.split(".")[1]))
    A, a = None, None
    for name in names:
        W, b = pair_sd[f"{name}.weight"], pair_sd[f"{name}.bias"]
        A = W if A is None else W @ A
        a = b if a is None else W @ a + b
    return A, a


def _folded(linear: torch.nn.Linear, A, a, s) -> torch.nn.Linear:
    """``linear(c + s * (c A^T + a))`` as one linear layer."""
    M = torch.eye(A.shape[0]) + s * A
    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(linear.weight @ M)
        bias = s * linear.weight @ a
        out.bias.copy_(bias if linear.bias is None else bias + linear.bias)
    return out


@contextlib.contextmanager
def folded_into(unet, state: dict, strength: float):
    """``unet`` with the hypernetwork folded into every attention's to_k / to_v."""
    from diffusers.models.attention_processor import Attention

    saved = []
    for module in unet.modules():
        if isinstance(module, Attention) and module.to_k.in_features in state:
            k_sd, v_sd = state[module.to_k.in_features]
            saved.append((module, module.to_k, module.to_v))
            module.to_k = _folded(module.to_k, *_affine(k_sd), strength)
            module.to_v = _folded(module.to_v, *_affine(v_sd), strength)
    try:
        yield
    finally:
        for module, k, v in saved:
            module.to_k, module.to_v = k, v


def _unet_out(unet, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    ctx = torch.randn(2, 7, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample


@pytest.mark.parametrize("strength", [1.0, -0.6])
def test_a_linear_hypernetwork_equals_its_folded_weights(strength):
    unet = tiny_sd1_unet()
    state = hypernetwork_state(dims=(32, 64), layers=(1, 2, 1))
    patch = HypernetworkPatch(hypernetwork_from_state(state, "tiny"), strength)
    with applied(unet, [patch]):
        patched = _unet_out(unet)
    with folded_into(unet, state, strength):
        expected = _unet_out(unet)
    base = _unet_out(unet)
    assert torch.allclose(patched, expected, atol=1e-5)
    assert not torch.allclose(patched, base, atol=1e-3)


def test_the_unet_is_itself_again_afterwards_and_strength_zero_changes_nothing():
    unet = tiny_sd1_unet()
    before = _unet_out(unet)
    processors = {k: type(v) for k, v in unet.attn_processors.items()}
    net = hypernetwork_from_state(hypernetwork_state(), "tiny")
    with applied(unet, [HypernetworkPatch(net, 0.0)]):
        zero = _unet_out(unet)
    with pytest.raises(RuntimeError), applied(unet, [HypernetworkPatch(net, 1.0)]):
        raise RuntimeError("a failed step")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == processors
    assert torch.allclose(zero, before, atol=1e-6)
    assert torch.equal(_unet_out(unet), before)


def test_nonlinear_layers_with_layer_norm_in_one_attention_by_hand():
    from diffusers.models.attention_processor import Attention

    state = hypernetwork_state(dims=(16,), layers=(1, 2, 1), activation="relu", is_layer_norm=True)
    net = hypernetwork_from_state(state, "tiny")
    torch.manual_seed(0)
    attn = Attention(query_dim=24, cross_attention_dim=16, heads=2, dim_head=12)
    x, ctx = torch.randn(1, 5, 24), torch.randn(1, 3, 16)

    def mlp(sd, c):
        # linear.0, layer norm linear.1, relu (not last), linear.2, layer norm linear.3
        h = c @ sd["linear.0.weight"].T + sd["linear.0.bias"]
        h = torch.relu(h)
        h = F.layer_norm(h, h.shape[-1:], sd["linear.1.weight"], sd["linear.1.bias"])
        h = h @ sd["linear.2.weight"].T + sd["linear.2.bias"]
        return F.layer_norm(h, h.shape[-1:], sd["linear.3.weight"], sd["linear.3.bias"])

    k_sd, v_sd = state[16]
    s = 0.8
    q = attn.to_q(x)
    k = attn.to_k(ctx + s * mlp(k_sd, ctx))
    v = attn.to_v(ctx + s * mlp(v_sd, ctx))
    heads = [
        torch.softmax(
            q[..., h * 12 : (h + 1) * 12] @ k[..., h * 12 : (h + 1) * 12].mT / 12**0.5, -1
        )
        @ v[..., h * 12 : (h + 1) * 12]
        for h in range(2)
    ]
    expected = attn.to_out[0](torch.cat(heads, -1))
    attn.set_processor(HypernetworkAttnProcessor([HypernetworkPatch(net, s)]))
    with torch.no_grad():
        assert torch.allclose(attn(x, encoder_hidden_states=ctx), expected, atol=1e-5)


def test_pt_and_safetensors_files_hold_the_same_network(tmp_path):
    state = hypernetwork_state(activation="tanh", activate_output=True)
    pt = read_hypernetwork(save_hypernetwork_pt(state, tmp_path / "h.pt"), allow_pickle=True)
    st = read_hypernetwork(save_hypernetwork_safetensors(state, tmp_path / "h.safetensors"), False)
    c = torch.randn(3, 32)
    for a, b in zip(pt.pair(32), st.pair(32), strict=True):
        assert torch.equal(a(c), b(c))
    assert pt.widths == st.widths == [32, 64]
    assert isinstance(pt.pair(32)[0][-1], torch.nn.Tanh)  # activate_output


def test_bad_files_are_refused_with_reason(tmp_path):
    with pytest.raises(ModelError, match="activation 'gelu2' is not supported"):
        hypernetwork_from_state({"activation_func": "gelu2", 32: [{}, {}]}, "x")
    with pytest.raises(ModelError, match="not a hypernetwork"):
        hypernetwork_from_state({"activation_func": "linear"}, "x")
    path = save_hypernetwork_pt(hypernetwork_state(), tmp_path / "h.pt")
    with pytest.raises(ModelError, match="allow_pickle_weights"):
        read_hypernetwork(path, allow_pickle=False)
    evil = tmp_path / "evil.pt"
    torch.save({"activation_func": "linear", "hook": copy.deepcopy}, evil)
    with pytest.raises(UnsafeFileError, match="needs more than tensors"):
        read_hypernetwork(evil, allow_pickle=True)


# -- through the node ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hn_env(tmp_path_factory, cache_folder):
    from runner.environment import Environment
    from runner.settings import EngineSettings

    root = tmp_path_factory.mktemp("models")
    state = hypernetwork_state(dims=(32, 64), layers=(1, 2, 1), seed=3)
    save_hypernetwork_pt(state, root / "hypernetworks" / "tiny_hn.pt")
    save_hypernetwork_safetensors(state, root / "hypernetworks" / "tiny_hn.safetensors")
    env = Environment(
        EngineSettings(
            data_dir=tmp_path_factory.mktemp("data"), cache_folder=cache_folder, models_dir=root
        )
    )
    yield env, state
    env.close()


def _workflow(env, name="tiny_hn.pt", strength=1.0, hypernetwork=True):
    from runner_testlib import txt2img_workflow

    wf = txt2img_workflow(env, steps=2)
    if hypernetwork:
        wf["20"] = {
            "class_type": "HypernetworkLoader",
            "inputs": {"model": ["4", 0], "hypernetwork_name": name, "strength": strength},
        }
        wf["3"]["inputs"]["model"] = ["20", 0]
    return wf


def _batched(env, wf):
    """The workflow as a job of a sampler batch (the runner.jobs path)."""
    from runner.jobs.batching import BATCH_EXTRA_KEY, SamplerBatch

    return env.run(wf, job_id="j1", extra={BATCH_EXTRA_KEY: SamplerBatch(["j1"])})


@pytest.mark.parametrize("name", ["tiny_hn.pt", "tiny_hn.safetensors"])
def test_the_node_samples_as_the_folded_model(hn_env, name):
    from runner_testlib import image_of

    env, state = hn_env
    env.node_cache.clear()
    with_hn = image_of(_batched(env, _workflow(env, name, strength=0.7)))
    unet = env.models.checkpoint("tiny-random").pipe.unet
    env.node_cache.clear()
    with folded_into(unet, state, 0.7):
        folded = image_of(env.run(_workflow(env, hypernetwork=False)))
    env.node_cache.clear()
    base = image_of(env.run(_workflow(env, hypernetwork=False)))
    assert abs(with_hn - folded).max() < 2e-3
    assert abs(with_hn - base).max() > 1e-2
    assert name in env.node_types["HypernetworkLoader"].inputs[1].allowed(env)


def test_the_plain_sampler_path_applies_it_too(hn_env):
    from runner_testlib import image_of

    env, _ = hn_env
    env.node_cache.clear()
    alone = image_of(env.run(_workflow(env, strength=0.7)))
    env.node_cache.clear()
    batched = image_of(_batched(env, _workflow(env, strength=0.7)))
    assert (alone == batched).all()
