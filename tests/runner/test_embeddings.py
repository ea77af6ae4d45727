"""Textual-inversion embeddings in prompts (``embedding:name``): files made here for SD1
and SDXL in ``models/embeddings``, their vectors reaching the text encoders (checked
against encoders whose vocabulary is extended with the vectors by hand), the pickle rule,
and a missing embedding as a warning in the job's events."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from runner_testlib import image_of, txt2img_workflow  # noqa: E402

from runner.diffusion.prompt_encoding import encode_text  # noqa: E402
from runner.errors import UnsafeFileError  # noqa: E402
from runner.models.embeddings import find_embedding, load_embedding  # noqa: E402
from runner.models.manager import ModelManager  # noqa: E402
from runner.models.tokenizer import clip_tokenizer_dir  # noqa: E402
from runner.settings import EngineSettings  # noqa: E402
from tests.helpers.tiny import make_tiny_sdxl_pipeline  # noqa: E402
from tests.helpers.tiny_condnodes import (  # noqa: E402
    G_WIDTH,
    random_vectors,
    write_callable_pickle,
    write_sd1_embedding,
    write_sdxl_embedding,
)

STYLE = random_vectors(3, 32, seed=1)
XL_L, XL_G = random_vectors(2, 32, seed=2), random_vectors(2, G_WIDTH, seed=3)


def _by_hand(encoder, tokenizer, parts: list, layer: int | None = None):
    """Encode one 77-token chunk whose ``parts`` are words or vector tensors [n, width],
    with a copy of ``encoder`` whose token table has the vectors appended as new ids.
    Returns (hidden [1, 77, width], projected pooled or None)."""
    enc = copy.deepcopy(encoder)
    table = enc.get_input_embeddings()
    vocab, width = table.weight.shape
    ids, extra = [tokenizer.bos_token_id], []
    for part in parts:
        if isinstance(part, torch.Tensor):
            for row in part:
                ids.append(vocab + len(extra))
                extra.append(row)
        else:
            ids += tokenizer(part, add_special_tokens=False).input_ids
    eos_at = len(ids)
    ids.append(tokenizer.eos_token_id)
    ids += [tokenizer.pad_token_id] * (77 - len(ids))
    bigger = torch.nn.Embedding(vocab + len(extra), width)
    with torch.no_grad():
        bigger.weight[:vocab] = table.weight
        for i, row in enumerate(extra):
            bigger.weight[vocab + i] = row
    enc.set_input_embeddings(bigger)
    with torch.inference_mode():
        out = enc(torch.tensor([ids]), output_hidden_states=True)
        hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
        pooled = None
        if hasattr(enc, "text_projection"):
            pooled = enc.text_projection(out.last_hidden_state[:, eos_at])
    return hidden, pooled


@pytest.fixture
def models_root(tmp_path) -> Path:
    root = tmp_path / "models"
    write_sd1_embedding(root / "embeddings" / "style.safetensors", STYLE)
    write_sd1_embedding(root / "embeddings" / "a1111.pt", STYLE)
    write_sd1_embedding(root / "embeddings" / "nested" / "deep.safetensors", STYLE)
    write_sd1_embedding(root / "embeddings" / "wide.safetensors", random_vectors(2, 48, seed=4))
    write_sdxl_embedding(root / "embeddings" / "xl.safetensors", XL_L, XL_G)
    write_callable_pickle(root / "embeddings" / "evil.pt")
    return root


@pytest.fixture
def manager(models_root, tmp_path, cache_folder) -> ModelManager:
    return ModelManager(
        EngineSettings(
            data_dir=tmp_path / "data", cache_folder=cache_folder, models_dir=models_root
        )
    )


def test_lookup_names(models_root, manager):
    roots = [models_root]
    base = models_root / "embeddings"
    assert find_embedding(roots, "style") == base / "style.safetensors"
    assert find_embedding(roots, "style.safetensors") == base / "style.safetensors"
    assert find_embedding(roots, "deep") == base / "nested" / "deep.safetensors"
    assert find_embedding(roots, "nested/deep") == base / "nested" / "deep.safetensors"
    assert find_embedding(roots, "a1111") == base / "a1111.pt"
    for bad in ("nothere", "../embeddings/style", "/etc/passwd", ""):
        assert find_embedding(roots, bad) is None
    assert "style.safetensors" in manager.embedding_names()
    assert "nested/deep.safetensors" in manager.embedding_names()


def test_pickle_rule(models_root, manager, tmp_path, cache_folder, capsys):
    a1111 = manager.embedding("a1111")
    assert torch.equal(a1111.vectors("clip_l"), STYLE)
    with pytest.raises(UnsafeFileError, match="needs more than tensors"):
        load_embedding(models_root / "embeddings" / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out
    off = ModelManager(
        EngineSettings(
            data_dir=tmp_path / "d2",
            cache_folder=cache_folder,
            models_dir=models_root,
            allow_pickle_weights=False,
        )
    )
    with pytest.raises(UnsafeFileError, match="allow_pickle_weights"):
        off.embedding("a1111")
    assert torch.equal(off.embedding("style").vectors("clip_l"), STYLE)  # safetensors still load


@pytest.fixture(scope="module")
def sd1_pipe(module_env):
    return module_env.models.checkpoint("tiny-random").pipe


def _encode(pipe, manager, prompt):
    warnings: list[str] = []
    with torch.inference_mode():
        embeds, pooled = encode_text(
            pipe, prompt, device="cpu", embeddings=manager.embedding, warn=warnings.append
        )
    return embeds, pooled, warnings


def test_sd1_embedding_vectors_reach_the_encoder(sd1_pipe, manager):
    expected, _ = _by_hand(sd1_pipe.text_encoder, sd1_pipe.tokenizer, ["a", STYLE, "house"])
    for prompt in (
        "a embedding:style house",
        "a embedding:style.safetensors house",
        "a embedding:nested/deep house",
        "a embedding:a1111 house",
    ):
        embeds, _, warnings = _encode(sd1_pipe, manager, prompt)
        assert warnings == [], prompt
        assert torch.allclose(embeds, expected, atol=1e-5), prompt
    # Trailing commas stay text.
    comma, _ = _by_hand(sd1_pipe.text_encoder, sd1_pipe.tokenizer, ["a", STYLE, ",", "house"])
    embeds, _, warnings = _encode(sd1_pipe, manager, "a embedding:style, house")
    assert warnings == [] and torch.allclose(embeds, comma, atol=1e-5)


def test_weighted_embedding(sd1_pipe, manager):
    plain, _ = _by_hand(sd1_pipe.text_encoder, sd1_pipe.tokenizer, ["a", STYLE, "house"])
    empty, _ = _by_hand(sd1_pipe.text_encoder, sd1_pipe.tokenizer, [])
    embeds, _, warnings = _encode(sd1_pipe, manager, "a (embedding:style:1.2) house")
    expected = plain.clone()
    rows = slice(2, 5)  # after the start token and "a"
    expected[0, rows] = (plain[0, rows] - empty[0, rows]) * 1.2 + empty[0, rows]
    assert warnings == [] and torch.allclose(embeds, expected, atol=1e-5)


def test_missing_wrong_width_and_refused_embeddings_are_left_out(sd1_pipe, manager):
    without, _ = _by_hand(sd1_pipe.text_encoder, sd1_pipe.tokenizer, ["a", "house"])
    for prompt, message in (
        ("a embedding:nothere house", "embedding:nothere does not exist"),
        ("a embedding:wide house", "48 wide"),
        ("a embedding:evil house", "needs more than tensors"),
    ):
        embeds, _, warnings = _encode(sd1_pipe, manager, prompt)
        assert len(warnings) == 1 and message in warnings[0], (prompt, warnings)
        assert torch.allclose(embeds, without, atol=1e-5), prompt


def test_sdxl_embedding_reaches_both_encoders(manager, cache_folder):
    pipe = make_tiny_sdxl_pipeline(clip_tokenizer_dir(cache_folder))
    l_part, _ = _by_hand(pipe.text_encoder, pipe.tokenizer, ["a", XL_L, "house"], layer=-2)
    g_part, g_pooled = _by_hand(
        pipe.text_encoder_2, pipe.tokenizer_2, ["a", XL_G, "house"], layer=-2
    )
    embeds, pooled, warnings = _encode(pipe, manager, "a embedding:xl house")
    assert warnings == []
    assert torch.allclose(embeds, torch.cat([l_part, g_part], dim=-1), atol=1e-5)
    assert torch.allclose(pooled, g_pooled, atol=1e-5)
    # An SD1 file on SDXL: its one tensor fits CLIP-L (32 wide here) and not OpenCLIP-G.
    embeds, _, warnings = _encode(pipe, manager, "a embedding:style house")
    l_style, _ = _by_hand(pipe.text_encoder, pipe.tokenizer, ["a", STYLE, "house"], layer=-2)
    g_plain, _ = _by_hand(pipe.text_encoder_2, pipe.tokenizer_2, ["a", "house"], layer=-2)
    assert len(warnings) == 1 and "clip_g" in warnings[0]
    assert torch.allclose(embeds, torch.cat([l_style, g_plain], dim=-1), atol=1e-5)


def test_missing_embedding_is_a_job_warning_then_found_once_added(make_env, tmp_path):
    root = tmp_path / "models2"
    (root / "embeddings").mkdir(parents=True)
    env = make_env(models_dir=root)
    with_embedding = txt2img_workflow(env, prompt="a embedding:later house")
    without = txt2img_workflow(env, prompt="a house")
    events: list = []
    missing = image_of(env.run(with_embedding, on_event=events.append))
    warnings = [e for e in events if e.type == "warning"]
    assert len(warnings) == 1 and "embedding:later does not exist" in warnings[0].message
    assert warnings[0].class_type == "CLIPTextEncode" and warnings[0].to_dict()["type"] == "warning"
    assert np.array_equal(missing, image_of(env.run(without)))
    # The file appears: the prompt is encoded again (not served from the node cache).
    write_sd1_embedding(root / "embeddings" / "later.safetensors", STYLE)
    events.clear()
    found = image_of(env.run(with_embedding, on_event=events.append))
    assert not [e for e in events if e.type == "warning"]
    assert not np.array_equal(found, missing)
