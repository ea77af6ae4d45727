"""Single-file checkpoints in the original SD layout: tokenizer, detection, loading, refusal."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# pytest puts tests/ on sys.path, not the repository root: put the root first so that
# `runner` is the real package (not the tests/runner folder) and `tests.helpers` imports.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from runner.errors import ModelError, UnsafeFileError  # noqa: E402
from runner.files import read_safetensors_header  # noqa: E402
from runner.models import configs  # noqa: E402
from runner.models.configs import family_config_dir  # noqa: E402
from runner.models.families import FAMILIES, inspect_checkpoint  # noqa: E402
from runner.models.families import family_of_keys as detect_family  # noqa: E402
from runner.models.single_file import load_single_file  # noqa: E402
from runner.models.tokenizer import clip_tokenizer_dir, load_clip_tokenizer  # noqa: E402
from tests.helpers.sd_layout import original_state_dict, write_original_layout  # noqa: E402
from tests.helpers.tiny import (  # noqa: E402
    make_tiny_sd1_pipeline,
    make_tiny_sd2_pipeline,
    make_tiny_sdxl_pipeline,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("easel-cache")


@pytest.fixture(scope="module")
def tokenizer_dir(cache_dir: Path) -> Path:
    return clip_tokenizer_dir(cache_dir)


def _image(pipe: Any, seed: int = 7) -> np.ndarray:
    return pipe(
        "a lighthouse at dawn",
        negative_prompt="blurry",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def _configs_only(pipe: Any, folder: Path) -> Path:
    """``save_pretrained`` without any weights or tokenizer vocabulary: only configs, so a
    loaded model's weights and vocabulary cannot come from this folder."""
    pipe.save_pretrained(folder)
    for f in list(folder.rglob("*")):
        if f.suffix in {".safetensors", ".bin"} or f.name in {
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
        }:
            f.unlink()
    return folder


class Tiny:
    """A tiny pipeline, its reference image, its single file and a configs-only folder."""

    def __init__(self, pipe: Any, path: Path, configs: Path):
        self.pipe = pipe
        self.path = path
        self.configs = configs
        self.image = _image(pipe)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Tiny:
    root = tmp_path_factory.mktemp("tiny-sd1")
    pipe = make_tiny_sd1_pipeline(tokenizer_dir)
    path = write_original_layout(pipe, root / "tiny-sd1.safetensors")
    return Tiny(pipe, path, _configs_only(pipe, root / "configs"))


# ------------------------------------------------------------------------ tokenizer


def test_tokenizer_gives_real_clip_ids(cache_dir: Path) -> None:
    tok = load_clip_tokenizer(cache_dir)
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert len(tok) == 49408 and tok.model_max_length == 77
    padded = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[7:] == [49407] * 70

    bang = load_clip_tokenizer(cache_dir, pad_token="!")
    assert bang.pad_token == "!" and bang.pad_token_id == 0
    assert bang("a photo of a cat", padding="max_length", max_length=77).input_ids[7:] == [0] * 70


def test_tokenizer_folder_contents_and_reuse(cache_dir: Path) -> None:
    folder = clip_tokenizer_dir(cache_dir)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["a</w>"] == 320
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1] == "i n" and len(merges) == 1 + 48894
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 77 and cfg["pad_token"] == "<|endoftext|>"
    assert cfg["bos_token"] == "<|startoftext|>" and cfg["unk_token"] == "<|endoftext|>"
    assert json.loads((folder / "special_tokens_map.json").read_text())["eos_token"] == (
        "<|endoftext|>"
    )
    stamp = (folder / "vocab.json").stat().st_mtime_ns
    assert clip_tokenizer_dir(cache_dir) == folder
    assert (folder / "vocab.json").stat().st_mtime_ns == stamp  # built once
    assert clip_tokenizer_dir(cache_dir, "!") != folder


def test_tokenizer_folder_built_concurrently(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(clip_tokenizer_dir(tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [results[0].name]  # no temp leftovers
    assert sorted(p.name for p in results[0].iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


# -------------------------------------------------------------------------- loading


def test_sd1_round_trip_gives_identical_image(tiny_sd1: Tiny, cache_dir: Path) -> None:
    pipe, family = load_single_file(
        tiny_sd1.path,
        cache_dir=cache_dir,
        torch_dtype=torch.float32,
        config_override_dir=tiny_sd1.configs,
    )
    assert family == "sd1"
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert pipe.tokenizer("a photo of a cat").input_ids == CAT_IDS
    np.testing.assert_array_equal(_image(pipe), tiny_sd1.image)
    assert not np.array_equal(_image(pipe, seed=8), tiny_sd1.image)


def test_original_layout_has_original_key_names(tiny_sd1: Tiny) -> None:
    keys = read_safetensors_header(tiny_sd1.path).shapes
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert keys["first_stage_model.decoder.mid.attn_1.q.weight"] == (16, 16, 1, 1)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.")) for k in keys)


def test_companion_config_folder_next_to_checkpoint(
    tiny_sd1: Tiny, cache_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "my-model.safetensors"
    shutil.copy(tiny_sd1.path, model)
    shutil.copytree(tiny_sd1.configs, tmp_path / "my-model.config")
    pipe, family = load_single_file(model, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert family == "sd1"
    np.testing.assert_array_equal(_image(pipe), tiny_sd1.image)


def test_sd1_text_encoder_keys_without_text_model_prefix(
    tiny_sd1: Tiny, cache_dir: Path, tmp_path: Path
) -> None:
    old = "cond_stage_model.transformer.text_model."
    sd = {
        k.replace(old, "cond_stage_model.transformer."): v.contiguous()
        for k, v in original_state_dict(tiny_sd1.pipe).items()
    }
    path = tmp_path / "old-clip-keys.safetensors"
    save_file(sd, str(path))
    pipe, family = load_single_file(
        path, cache_dir=cache_dir, torch_dtype=torch.float32, config_override_dir=tiny_sd1.configs
    )
    assert family == "sd1"
    np.testing.assert_array_equal(_image(pipe), tiny_sd1.image)


@pytest.mark.parametrize(
    ("make", "layout", "family"),
    [
        (make_tiny_sd2_pipeline, "sd2", "sd2"),
        (make_tiny_sd2_pipeline, "sd2-sgm", "sd2"),
        (make_tiny_sdxl_pipeline, "sdxl", "sdxl"),
    ],
)
def test_sd2_and_sdxl_round_trip_give_identical_image(
    make: Callable[[Path], Any],
    layout: str,
    family: str,
    tokenizer_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    original = make(tokenizer_dir)
    path = write_original_layout(original, tmp_path / "m.safetensors", layout)
    configs = _configs_only(original, tmp_path / "configs")
    pipe, got = load_single_file(
        path, cache_dir=cache_dir, torch_dtype=torch.float32, config_override_dir=configs
    )
    assert got == family
    assert pipe.tokenizer.pad_token == original.tokenizer.pad_token
    if family == "sdxl":
        assert type(pipe).__name__ == "StableDiffusionXLPipeline"
        assert pipe.tokenizer_2.pad_token == "!"
    np.testing.assert_array_equal(_image(pipe), _image(original))


def _fake_shipped(monkeypatch: pytest.MonkeyPatch, root: Path, family: str, pipe: Any) -> Path:
    """Stand tiny configs in for the shipped ones of ``family``, tokenizers as shipped:
    ``tokenizer_config.json`` and ``special_tokens_map.json`` only."""
    folder = _configs_only(pipe, root / family)
    monkeypatch.setattr(configs, "CONFIGS_DIR", root)
    return folder


def test_shipped_config_path_sd2_v_from_metadata(
    tokenizer_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps = make_tiny_sd2_pipeline(tokenizer_dir)
    _fake_shipped(monkeypatch, tmp_path / "configs", "sd2", eps)
    v = make_tiny_sd2_pipeline(tokenizer_dir, prediction_type="v_prediction")
    _fake_shipped(monkeypatch, tmp_path / "configs", "sd2-v", v)

    plain = write_original_layout(eps, tmp_path / "plain.safetensors", "sd2")
    pipe, family = load_single_file(plain, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert family == "sd2" and pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.tokenizer.pad_token == "!"
    np.testing.assert_array_equal(_image(pipe), _image(eps))

    vfile = write_original_layout(
        v,
        tmp_path / "v.safetensors",
        "sd2",
        metadata={"modelspec.architecture": "stable-diffusion-v2-768-v"},
    )
    pipe, family = load_single_file(vfile, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert family == "sd2-v" and pipe.scheduler.config.prediction_type == "v_prediction"
    np.testing.assert_array_equal(_image(pipe), _image(v))


def test_shipped_config_path_v_pred_marker_on_sdxl(
    tokenizer_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_tiny_sdxl_pipeline(tokenizer_dir)
    _fake_shipped(monkeypatch, tmp_path / "configs", "sdxl", original)
    path = write_original_layout(
        original,
        tmp_path / "noob.safetensors",
        extra={"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)},
    )
    info = inspect_checkpoint(path)
    assert (info.family, info.prediction_type, info.zero_terminal_snr) == (
        "sdxl",
        "v_prediction",
        True,
    )
    pipe, family = load_single_file(path, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert family == "sdxl"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"


def test_stock_sizes_do_not_fit_a_tiny_checkpoint(tiny_sd1: Tiny, cache_dir: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_single_file(tiny_sd1.path, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert tiny_sd1.path.name in str(err.value)
    assert "tiny-sd1.config/" in str(err.value)


def test_incomplete_checkpoint_refused(tiny_sd1: Tiny, cache_dir: Path, tmp_path: Path) -> None:
    sd = {
        k: v.contiguous()
        for k, v in original_state_dict(tiny_sd1.pipe).items()
        if ".output_blocks.2." not in k
    }
    path = tmp_path / "incomplete.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelError, match="incomplete.safetensors"):
        load_single_file(
            path, cache_dir=cache_dir, torch_dtype=None, config_override_dir=tiny_sd1.configs
        )


def test_config_folder_of_another_family_refused(
    tiny_sd1: Tiny, cache_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="StableDiffusionXLPipeline"):
        load_single_file(
            tiny_sd1.path,
            cache_dir=cache_dir,
            torch_dtype=torch.float32,
            config_override_dir=family_config_dir("sdxl"),
        )
    with pytest.raises(ModelError, match="does not exist"):
        load_single_file(
            tiny_sd1.path,
            cache_dir=cache_dir,
            torch_dtype=torch.float32,
            config_override_dir=tmp_path / "nope",
        )


# ------------------------------------------------------------------------ detection

U = "model.diffusion_model."
SD1 = {
    U + "input_blocks.0.0.weight": (320, 4, 3, 3),
    U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    U + "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
}
SD2 = {
    **{k: v for k, v in SD1.items() if not k.startswith("cond_stage_model.")},
    U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    U + "output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
    "cond_stage_model.model.positional_embedding": (77, 1024),
    "cond_stage_model.model.transformer.resblocks.23.ln_1.bias": (1024,),
}
SDXL = {
    U + "input_blocks.0.0.weight": (320, 4, 3, 3),
    U + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
    U + "label_emb.0.0.weight": (1280, 2816),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (
        77,
        768,
    ),
    "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    "conditioner.embedders.1.model.text_projection": (1280, 1280),
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
}
REFINER = {
    U + "input_blocks.0.0.weight": (384, 4, 3, 3),
    U + "label_emb.0.0.weight": (1536, 2560),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "conditioner.embedders.0.model.positional_embedding": (77, 1280),
    "conditioner.embedders.0.model.text_projection": (1280, 1280),
}


def _renamed(sd: dict[str, tuple[int, ...]], old: str, new: str) -> dict[str, tuple[int, ...]]:
    return {k.replace(old, new): v for k, v in sd.items()}


@pytest.mark.parametrize(
    ("shapes", "metadata", "family"),
    [
        (SD1, None, "sd1"),
        (SD2, None, "sd2"),
        (_renamed(SD2, "cond_stage_model.model.", "conditioner.embedders.0.model."), None, "sd2"),
        (SD2, {"modelspec.architecture": "stable-diffusion-v2-768-v"}, "sd2-v"),
        (SD2, {"modelspec.prediction_type": "v"}, "sd2-v"),
        (SD2, {"modelspec.architecture": "stable-diffusion-v2-512"}, "sd2"),
        ({**SD2, "v_pred": (0,)}, None, "sd2-v"),
        (SDXL, None, "sdxl"),
        ({**SDXL, "v_pred": (0,)}, None, "sdxl"),
        (
            _renamed(
                SD1,
                "cond_stage_model.transformer.text_model.",
                "cond_stage_model.transformer.",
            ),
            None,
            "sd1",
        ),
    ],
)
def test_detect_family_from_keys_and_shapes(
    shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None, family: str
) -> None:
    assert detect_family(shapes, metadata=metadata, source="x.safetensors") == family


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (REFINER, "refiner"),
        ({**SD1, U + "input_blocks.0.0.weight": (320, 8, 3, 3)}, "pix2pix"),
        # A class-label SD2 without its image encoder (an unCLIP file has embedder.model.visual.*).
        ({**SD2, U + "label_emb.0.0.weight": (1280, 1024)}, "no CLIP image encoder"),
        (
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (),
            },
            "LoRA",
        ),
        (
            {
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320),
                "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (320, 4),
            },
            "LoRA",
        ),
        ({"emb_params": (2, 768)}, "embedding"),
        (
            {
                "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
                "decoder.up.0.block.0.x": (1,),
            },
            "VAE",
        ),
        (
            {"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (1,)},
            "diffusers",
        ),
        ({"control_model.time_embed.0.weight": (1280, 320)}, "ControlNet"),
        ({U + "double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "Flux"),
        ({k: v for k, v in SD1.items() if not k.startswith("first_stage_model.")}, "no VAE"),
        ({k: v for k, v in SD1.items() if not k.startswith("cond_stage_model.")}, "text encoder"),
        ({}, "no tensors"),
    ],
)
def test_detect_family_refuses_other_kinds(shapes: dict[str, tuple[int, ...]], match: str) -> None:
    with pytest.raises(ModelError, match=match) as err:
        detect_family(shapes, source="odd-model.safetensors")
    assert "odd-model.safetensors" in str(err.value)


UNCLIP_H = {
    **SD2,
    U + "label_emb.0.0.weight": (1280, 2048),
    "embedder.model.visual.conv1.weight": (1280, 3, 14, 14),
    "embedder.model.visual.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
    "noise_augmentor.betas": (1000,),
}


def test_sd21_unclip_is_detected_not_refused(tmp_path: Path) -> None:
    # Single-file unCLIP loads (tests/runner/test_unclip_single_file.py loads a tiny one
    # through the real loader); the header says so.
    assert detect_family(UNCLIP_H, source="sd21-unclip-h.safetensors") == "sd2"
    path = _fake_file(tmp_path / "sd21-unclip-h.safetensors", UNCLIP_H)
    info = inspect_checkpoint(path, read_tensors=False)
    assert info.unclip and info.family == "sd2"
    assert not inspect_checkpoint(_fake_file(tmp_path / "plain.safetensors", SD2)).unclip


def _fake_file(path: Path, shapes: dict[str, tuple[int, ...]], **kwargs: Any) -> Path:
    tensors = kwargs.pop("tensors", {})
    sd = {k: torch.zeros(s) for k, s in shapes.items()} | tensors
    save_file(sd, str(path), metadata=kwargs.pop("metadata", None))
    return path


def test_detect_family_reads_only_the_header(tmp_path: Path) -> None:
    path = _fake_file(tmp_path / "sdxl.safetensors", SDXL)
    assert detect_family(path) == "sdxl"
    assert detect_family(read_safetensors_header(path)) == "sdxl"
    path = _fake_file(tmp_path / "v.safetensors", SD2, metadata={"modelspec.prediction_type": "v"})
    assert detect_family(path) == "sd2-v"
    refiner = _fake_file(tmp_path / "refiner.safetensors", REFINER)
    with pytest.raises(ModelError, match="refiner.safetensors.*refiner"):
        detect_family(refiner)


@pytest.mark.parametrize(("std", "family"), [(0.2, "sd2-v"), (0.01, "sd2")])
def test_sd2_prediction_from_weight_statistic(tmp_path: Path, std: float, family: str) -> None:
    gen = torch.Generator().manual_seed(0)
    bias = torch.randn(320, generator=gen) * std
    key = U + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    path = _fake_file(tmp_path / "sd2x.safetensors", SD2, tensors={key: bias})
    assert detect_family(path) == "sd2"  # the header alone cannot tell
    info = inspect_checkpoint(path)
    assert info.family == family
    assert "weight statistic" in info.evidence
    assert inspect_checkpoint(path, read_tensors=False).family == "sd2"


def test_sd2_prediction_from_yaml_sidecar(tmp_path: Path) -> None:
    path = _fake_file(tmp_path / "model768.safetensors", SD2)
    (tmp_path / "model768.yaml").write_text(
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
        '  params:\n    parameterization: "v"\n'
    )
    info = inspect_checkpoint(path)
    assert (info.family, info.prediction_type, info.evidence) == (
        "sd2-v",
        "v_prediction",
        "model768.yaml",
    )


# ------------------------------------------------------------------------ refusals


class _Tripwire:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".CKPT"])
def test_pickle_suffixes_refused_unopened(
    suffix: str, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Tripwire(marker)))

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a loader was called")

    monkeypatch.setattr(torch, "load", no_load)
    monkeypatch.setattr(pickle, "load", no_load)
    for call in (
        lambda: load_single_file(path, cache_dir=cache_dir, torch_dtype=torch.float32),
        lambda: detect_family(path),
        lambda: inspect_checkpoint(path),
    ):
        with pytest.raises(UnsafeFileError) as err:
            call()
        message = str(err.value)
        assert path.name in message
        assert "pickle" in message and "run" in message and ".safetensors" in message
    assert not marker.exists()
    # Refused by name alone: a missing .ckpt is refused the same way, not "not found".
    with pytest.raises(UnsafeFileError):
        load_single_file(tmp_path / f"missing{suffix}", cache_dir=cache_dir, torch_dtype=None)


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_pickle_renamed_to_safetensors_refused(kind: str, tmp_path: Path, cache_dir: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "renamed.safetensors"
    if kind == "torch-zip":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _Tripwire(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Tripwire(marker)))
    with pytest.raises(ModelError) as err:
        load_single_file(path, cache_dir=cache_dir, torch_dtype=torch.float32)
    assert "renamed.safetensors" in str(err.value)
    assert "not a safetensors file" in str(err.value)
    assert not marker.exists()


def test_truncated_and_garbage_files_refused(
    tiny_sd1: Tiny, tmp_path: Path, cache_dir: Path
) -> None:
    data = tiny_sd1.path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelError, match=r"cut\.safetensors: truncated"):
        load_single_file(cut, cache_dir=cache_dir, torch_dtype=torch.float32)

    cut_header = tmp_path / "cut-header.safetensors"
    cut_header.write_bytes(data[:100])
    with pytest.raises(ModelError, match="cut-header.safetensors"):
        read_safetensors_header(cut_header)

    for name, payload in [
        ("empty.safetensors", b""),
        ("tiny.safetensors", b"\x01\x02"),
        ("garbage.safetensors", os.urandom(4096)),
        ("text.safetensors", (20).to_bytes(8, "little") + b"this is not json ..."),
        ("list.safetensors", (2).to_bytes(8, "little") + b"[]"),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ModelError) as err:
            load_single_file(path, cache_dir=cache_dir, torch_dtype=torch.float32)
        assert name in str(err.value)
        assert not isinstance(err.value, UnsafeFileError)


def test_other_suffixes_and_missing_files(tmp_path: Path, cache_dir: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="model.gguf.*not a .safetensors") as err:
        load_single_file(gguf, cache_dir=cache_dir, torch_dtype=None)
    assert not isinstance(err.value, UnsafeFileError)
    with pytest.raises(ModelError, match="nothere.safetensors: no such"):
        load_single_file(tmp_path / "nothere.safetensors", cache_dir=cache_dir, torch_dtype=None)


# ------------------------------------------------------------------ shipped configs

STOCK_PARAMS = {
    # family: (unet, vae, text_encoder, text_encoder_2)
    "sd1": (859_520_964, 83_653_863, 123_060_480, None),
    "sd2": (865_910_724, 83_653_863, 340_387_840, None),
    "sd2-v": (865_910_724, 83_653_863, 340_387_840, None),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_configs_describe_the_stock_models(family: str) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = family_config_dir(family)
    index = json.loads((folder / "model_index.json").read_text())
    names = ["unet", "vae", "text_encoder", "scheduler", "tokenizer"]
    if family == "sdxl":
        names += ["text_encoder_2", "tokenizer_2"]
    for name in names:
        assert index[name][1] is not None, name
    for f in folder.rglob("*"):
        if f.is_file():
            assert f.suffix == ".json", f
            assert "huggingface.co" not in f.read_text()
    for tok in ("tokenizer", "tokenizer_2"):
        if (folder / tok).exists():
            assert sorted(p.name for p in (folder / tok).iterdir()) == [
                "special_tokens_map.json",
                "tokenizer_config.json",
            ]

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = (
            CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
            if family == "sdxl"
            else None
        )
    got = (count(unet), count(vae), count(te), count(te2) if te2 is not None else None)
    assert got == STOCK_PARAMS[family]

    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2-v" else "epsilon")
    pads = {
        "tokenizer": "!" if family.startswith("sd2") else "<|endoftext|>",
        "tokenizer_2": "!",
    }
    for tok, pad in pads.items():
        if (folder / tok).exists():
            cfg = json.loads((folder / tok / "tokenizer_config.json").read_text())
            assert cfg["pad_token"] == pad and cfg["model_max_length"] == 77
