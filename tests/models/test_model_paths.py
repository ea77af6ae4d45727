"""Model folders by kind: ComfyUI's extra_model_paths.yaml, subfolders and Windows
separators in names, and the lists grouped by kind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runner.errors import ModelError
from runner.models.model_paths import kind_folders, read_extra_paths


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(path))
    return path


def test_yaml_read_as_comfyui_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("A1111_HOME", str(tmp_path / "a1111"))
    yaml_path = tmp_path / "ComfyUI" / "extra_model_paths.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text(
        "a111:\n"
        "    base_path: $A1111_HOME\n"
        "    checkpoints: models/Stable-diffusion\n"
        "    vae: models/VAE\n"
        "    loras: |\n"
        "         models/Lora\n"
        "         models/LyCORIS\n"
        "    upscale_models: |\n"
        "                  models/ESRGAN\n"
        "    clip: models/text_encoder\n"
        "other:\n"
        "    is_default: true\n"
        "    vae: shared/vae\n"
        "empty:\n"
    )
    first, others = read_extra_paths(yaml_path)
    a1111 = tmp_path / "a1111" / "models"
    assert others["checkpoints"] == [a1111 / "Stable-diffusion"]
    assert others["loras"] == [a1111 / "Lora", a1111 / "LyCORIS"]
    assert others["upscale_models"] == [a1111 / "ESRGAN"]
    assert others["text_encoders"] == [a1111 / "text_encoder"]  # ComfyUI's legacy "clip"
    # No base_path: relative to the yaml file's folder; is_default folders come first.
    assert first["vae"] == [yaml_path.parent / "shared" / "vae"]
    roots = [tmp_path / "ComfyUI" / "models"]
    assert kind_folders("vae", roots, (first, others)) == [
        yaml_path.parent / "shared" / "vae",
        roots[0] / "vae",
        a1111 / "VAE",
    ]


def test_bad_yaml_is_a_model_error_naming_the_file(tmp_path):
    path = tmp_path / "extra_model_paths.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ModelError, match="extra_model_paths.yaml"):
        read_extra_paths(path)


@pytest.fixture
def comfy_install(tmp_path):
    """A ComfyUI install whose extra_model_paths.yaml points at an A1111 folder."""
    comfy = tmp_path / "ComfyUI"
    a1111 = tmp_path / "webui"
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    (comfy / "extra_model_paths.yaml").write_text(
        f"a111:\n    base_path: {a1111}\n    vae: models/VAE\n    loras: models/Lora\n"
    )
    _write(a1111 / "models" / "VAE" / "sdxl" / "sdxl_vae.safetensors")
    _write(a1111 / "models" / "Lora" / "style.safetensors")
    _write(comfy / "models" / "upscale_models" / "4x" / "RealESRGAN_x4plus.safetensors")
    return comfy


def test_comfyui_install_yaml_adds_folders_and_names_resolve(make_env, comfy_install):
    env = make_env(models_dir=comfy_install / "models")
    models = env.models
    assert "sdxl/sdxl_vae.safetensors" in models.vae_names()
    assert models.lora_names() == ["style.safetensors"]
    assert models.lora_path("style").name == "style.safetensors"
    # Windows separators, as a workflow saved on Windows names them.
    assert models.vae_location("sdxl\\sdxl_vae.safetensors").name == "sdxl_vae.safetensors"
    assert models.find_file("upscale_models", "4x\\RealESRGAN_x4plus.safetensors", "upscaler")
    assert models.models_by_kind()["upscale_models"] == ["4x/RealESRGAN_x4plus.safetensors"]


def test_setting_names_a_yaml_file(make_env, tmp_path):
    yaml_path = tmp_path / "paths.yaml"
    yaml_path.write_text(f"x:\n    base_path: {tmp_path / 'elsewhere'}\n    vae: v\n")
    _write(tmp_path / "elsewhere" / "v" / "a.safetensors")
    env = make_env(extra_model_paths=yaml_path)
    assert env.models.vae_names() == ["a.safetensors"]
    with pytest.raises(ModelError, match="no such file"):
        make_env(extra_model_paths=tmp_path / "missing.yaml").models.vae_names()


def test_easel_models_groups_by_kind(comfy_install, cache_folder, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import cli

    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(comfy_install / "models"))
    monkeypatch.setenv("EASEL_CONFIG", os.devnull)
    info = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert info["by_kind"]["vae"] == ["sdxl/sdxl_vae.safetensors"]
    assert info["by_kind"]["loras"] == ["style.safetensors"]
    assert info["by_kind"]["checkpoints"] == ["tiny-random"]
    text = CliRunner().invoke(cli, ["models"]).output
    assert "upscale_models:\n  4x/RealESRGAN_x4plus.safetensors" in text
    assert "extra model folders" in text
