"""CLIP image-text similarity: score a batch of images against a prompt and rank them
(best of N).

The CLIP model comes from ``models/clip/<name>/`` (a Hugging Face ``CLIPModel`` folder with
safetensors weights, e.g. openai/clip-vit-base-patch32 saved locally) or is the built-in
``tiny-random`` CLIP made in code (random weights: useful for tests and demos, its scores
carry no meaning). Images are preprocessed as CLIP expects (resize the short side, center
crop, normalise) with the tokenizer easel ships.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from runner import Input, hookimpl, node
from runner import types as T
from runner.context import NodeContext
from runner.models.listing import safe_relative_name

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY = "tiny-random"
_lock = threading.Lock()


def clip_model_names(env) -> list[str]:
    """``tiny-random`` and every CLIPModel folder under ``models/clip``."""
    names = [TINY]
    for root in env.settings.model_roots:
        base = root / "clip"
        if base.is_dir():
            names += sorted(p.name for p in base.iterdir() if (p / "config.json").is_file())
    return names


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        config = CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "vocab_size": 49408,
                "max_position_embeddings": 77,
                "projection_dim": 32,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": 32,
                "patch_size": 8,
                "projection_dim": 32,
            },
            projection_dim=32,
        )
        return CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(state)


@lru_cache(maxsize=2)
def _load(name: str, folder: str | None, cache_dir: str):
    from transformers import CLIPModel

    from runner.models.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer(Path(cache_dir))
    if folder is None:
        return _tiny_clip(), tokenizer
    model = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True).eval()
    return model, tokenizer


def load_clip(env, name: str):
    """``(CLIPModel, tokenizer)`` for a CLIP model name."""
    folder = None
    if name != TINY:
        rel = safe_relative_name(name)
        for root in env.settings.model_roots:
            candidate = root / "clip" / rel
            if (candidate / "config.json").is_file():
                folder = str(candidate)
                break
        else:
            raise FileNotFoundError(f"no CLIP model named {name!r} in models/clip")
    return _load(name, folder, str(env.settings.cache_dir))


def clip_scores(model, tokenizer, images: torch.Tensor, text: str) -> torch.Tensor:
    """Cosine similarity x 100 of each image (IMAGE ``[B, H, W, C]``) with ``text``, clamped at 0
    as CLIPScore is (Hessel et al. 2021, without its 2.5 weight). Images are preprocessed
    as CLIP's image processor does: bicubic resize of the short side (antialiased when
    shrinking), center crop, CLIP's mean and std."""
    size = model.config.vision_config.image_size
    x = images.permute(0, 3, 1, 2)[:, :3].float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(
        x,
        size=(max(size, round(h * scale)), max(size, round(w * scale))),
        mode="bicubic",
        align_corners=False,
        antialias=True,  # as CLIP's own (PIL) preprocessing filters when it shrinks
    )
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    tokens = tokenizer(
        [text], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    with torch.inference_mode():
        image_features = model.get_image_features(pixel_values=x)
        text_features = model.get_text_features(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        )
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    cosine = F.cosine_similarity(image_features, text_features.expand_as(image_features), dim=-1)
    return (cosine * 100).clamp(min=0)


@node(
    "CLIPImageTextRank",
    inputs=[
        Input("images", T.IMAGE),
        Input("text", T.STRING, multiline=True),
        Input("clip_name", T.COMBO, default=TINY, choices=clip_model_names),
        Input("top_k", T.INT, default=1, min=1, max=4096),
    ],
    outputs=(T.IMAGE, T.STRING),
    output_names=("IMAGE", "SCORES"),
    output_node=True,
    category="image/analysis",
)
def clip_rank(ctx: NodeContext, images: torch.Tensor, text: str, clip_name: str, top_k: int):
    """Scores each image against the text with CLIP and returns the best `top_k`, best first,
    with the scores of every image (JSON, in input order).

    An output node: the job's outputs carry the same report under ``clip_ranking`` (with
    the CLIP model's name), which is how best-of-N results record every candidate's score."""
    model, tokenizer = load_clip(ctx.env, clip_name)
    with _lock:
        scores = clip_scores(model, tokenizer, images, text)
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:top_k]
    ranking = {"scores": [round(float(s), 4) for s in scores], "ranking": order}
    return {
        "ui": {"clip_ranking": {**ranking, "clip_name": clip_name}},
        "result": (images[order], json.dumps(ranking)),
    }


@hookimpl
def easel_node_types():
    """The CLIP image-text ranking node."""
    return [clip_rank]
