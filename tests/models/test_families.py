"""Model families from each source (checkpoint file, diffusers folder, loaded pipeline,
LoRA file), native sizes, and the model manager answering for a name without loading it.
Every file is real: tiny pipelines from tests/helpers, written as diffusers folders and
as single files in the original layout."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402

from runner.errors import ModelError  # noqa: E402
from runner.files import read_safetensors_header  # noqa: E402
from runner.models import families  # noqa: E402
from runner.models.manager import ModelManager  # noqa: E402
from runner.models.tokenizer import clip_tokenizer_dir  # noqa: E402
from runner.settings import EngineSettings  # noqa: E402
from tests.helpers.sd_layout import write_original_layout  # noqa: E402
from tests.helpers.tiny import (  # noqa: E402
    make_tiny_sd1_pipeline,
    make_tiny_sd2_pipeline,
    make_tiny_sdxl_pipeline,
)

MAKERS = {
    "sd1": (make_tiny_sd1_pipeline, {}, "sd1"),
    "sd2": (make_tiny_sd2_pipeline, {}, "sd2"),
    "sd2-v": (make_tiny_sd2_pipeline, {"prediction_type": "v_prediction"}, "sd2"),
    "sdxl": (make_tiny_sdxl_pipeline, {}, "sdxl"),
}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, cache_folder: Path) -> Path:
    """A models folder with each tiny family as a diffusers folder and as a single file
    (SD2-v marked v-prediction in its safetensors metadata, as Stability's files are)."""
    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    tokenizer_dir = clip_tokenizer_dir(cache_folder)
    for family, (make, kwargs, layout) in MAKERS.items():
        pipe = make(tokenizer_dir, **kwargs)
        pipe.save_pretrained(checkpoints / f"{family}-folder")
        metadata = {"modelspec.prediction_type": "v"} if family == "sd2-v" else None
        write_original_layout(
            pipe, checkpoints / f"{family}.safetensors", layout, metadata=metadata
        )
    return root


@pytest.fixture
def manager(models_root: Path, tmp_path: Path, cache_folder: Path) -> ModelManager:
    return ModelManager(
        EngineSettings(data_dir=tmp_path, cache_folder=cache_folder, models_dir=models_root)
    )


@pytest.mark.parametrize("family", list(MAKERS))
def test_family_of_checkpoint_file(models_root: Path, family: str) -> None:
    path = models_root / "checkpoints" / f"{family}.safetensors"
    assert families.family_of_checkpoint(path) == family
    assert families.family_of_keys(read_safetensors_header(path)) == family


@pytest.mark.parametrize("family", list(MAKERS))
def test_family_of_diffusers_folder(models_root: Path, family: str) -> None:
    assert families.family_of_folder(models_root / "checkpoints" / f"{family}-folder") == family


@pytest.mark.parametrize("family", list(MAKERS))
def test_family_of_loaded_pipeline(cache_folder: Path, family: str) -> None:
    make, kwargs, _layout = MAKERS[family]
    assert families.family_of_pipeline(make(clip_tokenizer_dir(cache_folder), **kwargs)) == family


def test_family_of_the_builtin_pipeline(manager: ModelManager) -> None:
    checkpoint = manager.checkpoint("tiny-random")
    assert checkpoint.family == "sd1"
    assert families.family_of_pipeline(checkpoint.pipe) == "sd1"


LORA_WIDTHS = {"sd1": (768, 768), "sd2": (1024, 1024), "sdxl": (2048, 768)}


def _lora_file(path: Path, family: str, *, kohya: bool = False, metadata=None) -> Path:
    """A rank-1 LoRA with the real widths of ``family`` (a UNet cross-attention to_k and a
    text encoder q_proj; a second text encoder for SDXL)."""
    import numpy as np

    context, te = LORA_WIDTHS[family]
    tensors = {}
    if kohya:
        unet = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        tensors[unet + ".lora_down.weight"] = np.zeros((1, context), np.float16)
        tensors[unet + ".lora_up.weight"] = np.zeros((640, 1), np.float16)
        text = (
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
            if family == "sdxl"
            else ("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
        )
        tensors[text + ".lora_down.weight"] = np.zeros((1, te), np.float16)
        tensors[text + ".lora_up.weight"] = np.zeros((te, 1), np.float16)
        if family == "sdxl":
            te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
            tensors[te2 + ".lora_down.weight"] = np.zeros((1, 1280), np.float16)
            tensors[te2 + ".lora_up.weight"] = np.zeros((1280, 1), np.float16)
    else:
        unet = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
        tensors[unet + ".lora_A.weight"] = np.zeros((1, context), np.float16)
        tensors[unet + ".lora_B.weight"] = np.zeros((640, 1), np.float16)
        text = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
        tensors[text + ".lora_A.weight"] = np.zeros((1, te), np.float16)
        tensors[text + ".lora_B.weight"] = np.zeros((te, 1), np.float16)
        if family == "sdxl":
            te2 = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
            tensors[te2 + ".lora_A.weight"] = np.zeros((1, 1280), np.float16)
            tensors[te2 + ".lora_B.weight"] = np.zeros((1280, 1), np.float16)
    save_numpy(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("kohya", [False, True])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_family_of_lora_header(tmp_path: Path, family: str, kohya: bool) -> None:
    path = _lora_file(tmp_path / "lora.safetensors", family, kohya=kohya)
    header = read_safetensors_header(path)
    found, evidence = families.family_of_lora(header.shapes, header.metadata)
    assert found == family
    assert "width" in evidence or "second text encoder" in evidence


def test_family_of_lora_state_dict_and_metadata() -> None:
    import torch

    shapes = {
        "unet.a.attn2.to_k.lora_A.weight": torch.zeros(1, 1024),
        "unet.a.attn2.to_k.lora_B.weight": torch.zeros(640, 1),
    }
    assert families.family_of_lora(shapes)[0] == "sd2"  # tensors work as well as shapes
    narrow = {"unet.a.attn1.to_q.lora_A.weight": (1, 8), "unet.a.attn1.to_q.lora_B.weight": (8, 1)}
    assert families.family_of_lora(narrow) == (None, "no telling shapes or metadata")
    found, evidence = families.family_of_lora(narrow, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert found == "sdxl" and "ss_base_model_version" in evidence
    clash = {**shapes, "unet.b.attn2.to_v.lora_A.weight": (1, 768)}
    with pytest.raises(families.LoraFamilyConflict, match="disagree") as err:
        families.family_of_lora(clash, filename="clash.safetensors")
    assert str(err.value).startswith("clash.safetensors: ")


def test_native_sizes_and_lora_family() -> None:
    assert families.native_size("sd1") == (512, 512)
    assert families.native_size("sd2") == (512, 512)
    assert families.native_size("sd2-v") == (768, 768)
    assert families.native_size("sdxl") == (1024, 1024)
    assert set(families.NATIVE_SIZES) == set(families.FAMILIES)
    with pytest.raises(ModelError, match="'sd9'"):
        families.native_size("sd9")
    assert [families.lora_family(f) for f in families.FAMILIES] == ["sd1", "sd2", "sd2", "sdxl"]


@pytest.mark.parametrize("family", list(MAKERS))
def test_manager_family_and_native_size_without_loading(manager: ModelManager, family: str) -> None:
    for name in (f"{family}.safetensors", f"{family}-folder"):
        assert manager.family(name) == family
        assert manager.native_size(name) == families.NATIVE_SIZES[family]
    assert manager.loaded() == []  # nothing was loaded to answer


def test_manager_family_of_builtin_loaded_and_unknown(manager: ModelManager) -> None:
    assert manager.family("tiny-random") == "sd1"
    assert manager.native_size("tiny-random") == (512, 512)
    assert manager.loaded() == []
    manager.checkpoint("sd1-folder")
    assert manager.family("sd1-folder") == "sd1"  # from the loaded checkpoint
    with pytest.raises(ModelError, match="no checkpoint named 'nope-xl.safetensors'"):
        manager.family("nope-xl.safetensors")
    with pytest.raises(ModelError, match="allow_hub_downloads"):
        manager.native_size("stabilityai/sdxl-turbo")


def test_manager_family_follows_a_changed_file(manager: ModelManager, models_root: Path) -> None:
    import os
    import shutil

    path = models_root / "checkpoints" / "changing.safetensors"
    shutil.copy(models_root / "checkpoints" / "sd1.safetensors", path)
    assert manager.family("changing.safetensors") == "sd1"
    shutil.copy(models_root / "checkpoints" / "sdxl.safetensors", path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert manager.family("changing.safetensors") == "sdxl"
    path.unlink()


def test_base_size_asks_the_runner(manager: ModelManager) -> None:
    from bot.services.generation import base_size

    env = SimpleNamespace(models=manager)
    assert base_size(env, "sdxl.safetensors") == (1024, 1024)
    assert base_size(env, "sd2-v-folder") == (768, 768)
    assert base_size(env, "sd1-folder") == (512, 512)
    # No guessing from the name: an SD1 file called "...xl..." is still 512.
    import shutil

    checkpoints = manager.settings.models_root / "checkpoints"
    shutil.copy(checkpoints / "sd1.safetensors", checkpoints / "not-really-xl.safetensors")
    try:
        assert base_size(env, "not-really-xl.safetensors") == (512, 512)
    finally:
        (checkpoints / "not-really-xl.safetensors").unlink()
    assert base_size(env, "missing-xl.safetensors") == (512, 512)  # validation reports it


def test_lora_library_family_uses_the_manager(manager: ModelManager) -> None:
    from bot.services.loras import model_family

    assert model_family(manager.settings, "sd2-v.safetensors", manager) == "sd2"
    assert model_family(manager.settings, "sdxl-folder", manager) == "sdxl"
    assert model_family(manager.settings, None, manager) == "sd1"  # the default model
