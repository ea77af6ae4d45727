"""A tiny CLIP image-text model for best-of-N tests, written to ``models/clip/<name>/`` as a
Hugging Face folder (config.json + model.safetensors) the way an owner would place one.

Random weights give cosines around 0, so CLIPScore (clamped at 0) would be 0 for every
image and nothing would be ranked. This model shares one projection between the towers
and gives both final layer norms the same bias, so image and text embeddings share a
common direction: cosines are positive and differ from image to image (the ranking is
still meaningless, but it is a real ranking that a test can recompute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

RANKER = "tiny-ranker"


def tiny_ranker_clip(seed: int = 0):
    """The model itself (transformers ``CLIPModel``, eval mode), made in code."""
    from transformers import CLIPConfig, CLIPModel

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        tower = {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "projection_dim": 32,
        }
        config = CLIPConfig(
            text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77},
            vision_config={**tower, "image_size": 32, "patch_size": 8},
            projection_dim=32,
        )
        model = CLIPModel(config).eval()
        with torch.no_grad():
            shared = torch.randn(32, 32) / 32**0.5
            model.visual_projection.weight.copy_(shared)
            model.text_projection.weight.copy_(shared)
            bias = torch.full((32,), 1.5)
            model.vision_model.post_layernorm.bias.copy_(bias)
            model.text_model.final_layer_norm.bias.copy_(bias)
        return model
    finally:
        torch.random.set_rng_state(generator_state)


def write_tiny_clip(models_dir: Path, name: str = RANKER, seed: int = 0) -> Path:
    """Save the tiny ranker under ``models_dir/clip/<name>`` (safetensors); returns the folder."""
    folder = Path(models_dir) / "clip" / name
    tiny_ranker_clip(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def as_uint8(images) -> np.ndarray:
    """IMAGE floats in [0, 1] ([B, H, W, C] array or tensor) as the uint8 pixels a PNG keeps."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def independent_scores(model, pixels: np.ndarray, text: str, cache_dir: Path) -> list[float]:
    """CLIPScore (100 x cosine, clamped at 0) of uint8 images [B, H, W, 3] against
    ``text``, computed with transformers' own PIL image processor rather than easel's
    preprocessing; ``cache_dir`` holds easel's tokenizer files."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from runner.models.tokenizer import load_clip_tokenizer

    size = model.config.vision_config.image_size
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    batch = processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt")
    tokenizer = load_clip_tokenizer(Path(cache_dir))
    tokens = tokenizer([text], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=batch["pixel_values"])
        words = model.get_text_features(input_ids=tokens.input_ids)
    image = getattr(image, "pooler_output", image)
    words = getattr(words, "pooler_output", words)
    image = image / image.norm(dim=-1, keepdim=True)
    words = words / words.norm(dim=-1, keepdim=True)
    return [max(0.0, 100 * float(v)) for v in image @ words[0]]


def load_ranker(folder: Path):
    """The ranker saved in ``folder``, loaded back with transformers (an independent scorer)."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, local_files_only=True).eval()
