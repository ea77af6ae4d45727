"""Broken checkpoints and symbolic links in the models folders (issue 10, item 12).

Real files: a real single-file SD checkpoint beside a truncated copy of it, random bytes, a
pickle renamed to .safetensors, a zip (torch.save) renamed, a safetensors file that is not
a Stable Diffusion checkpoint, and a diffusers folder with a broken model_index.json. The
lists (``checkpoint_names``, ``easel models``, ``easel doctor``) leave them out with a
warning, from the headers alone; validation refuses them by name before anything loads.
Symbolic links out of the models folders are not followed unless the operator allows it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from runner.errors import WorkflowInvalid  # noqa: E402
from runner.models.manager import ModelManager  # noqa: E402
from runner.settings import EngineSettings  # noqa: E402
from runner.templates import GenerationRequest  # noqa: E402
from tests.helpers.sd_layout import write_original_layout  # noqa: E402

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"

BROKEN = {
    "truncated.safetensors": "truncated",
    "random.safetensors": "the safetensors header claims",
    "renamed-pickle.safetensors": "a Python pickle",
    "renamed-zip.safetensors": "a zip archive",
    "not-sd.safetensors": "not-sd.safetensors",
    "broken-diffusers": "model_index.json",
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, cache_folder) -> Path:
    """The tiny model as one real single-file checkpoint in the original SD layout."""
    from diffusers import StableDiffusionPipeline

    from runner.models.tiny import tiny_model_dir

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir(cache_folder), safety_checker=None, local_files_only=True
    )
    path = tmp_path_factory.mktemp("good") / "sd15-tiny.safetensors"
    write_original_layout(pipe, path)
    return path


@pytest.fixture
def models_root(tmp_path, good_checkpoint) -> Path:
    root = tmp_path / "models"
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True)
    (root / "loras").mkdir()
    shutil.copy(good_checkpoint, checkpoints / "good.safetensors")
    data = good_checkpoint.read_bytes()
    (checkpoints / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (checkpoints / "random.safetensors").write_bytes(np.random.default_rng(1).bytes(4096))
    (checkpoints / "renamed-pickle.safetensors").write_bytes(pickle.dumps({"state_dict": {}}))
    with zipfile.ZipFile(checkpoints / "renamed-zip.safetensors", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}))
    save_file(
        {"embedding.weight": np.zeros((8, 4), np.float32)}, str(checkpoints / "not-sd.safetensors")
    )
    broken = checkpoints / "broken-diffusers"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    return root


def settings_for(tmp_path, root, cache_folder, **extra) -> EngineSettings:
    return EngineSettings(
        data_dir=tmp_path / "data", models_dir=root, cache_folder=cache_folder, **extra
    )


def test_broken_checkpoints_are_left_out_with_a_reason(tmp_path, models_root, cache_folder, caplog):
    manager = ModelManager(settings_for(tmp_path, models_root, cache_folder))
    caplog.set_level(logging.WARNING, logger="runner.models.manager")
    start = time.perf_counter()
    names = manager.checkpoint_names()
    took = time.perf_counter() - start
    assert names == ["tiny-random", "good.safetensors"]
    skipped = {m.name: m.reason for m in manager.skipped_models()}
    assert set(skipped) == set(BROKEN)
    for name, needle in BROKEN.items():
        assert needle in skipped[name], (name, skipped[name])
        assert name in skipped[name]  # the sentence names the file
    assert took < 2.0  # headers only
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(BROKEN)
    # Listing again reads nothing new and warns no more (remembered until the file changes).
    caplog.clear()
    assert manager.checkpoint_names() == names
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_broken_checkpoint_is_refused_at_validation_not_at_load(make_env, models_root):
    env = make_env(models_dir=models_root)
    request = GenerationRequest(prompt="x", seed=1, steps=2, width=64, height=64)
    for name in BROKEN:
        workflow = env.build_workflow(request.model_copy(update={"model": name}))
        with pytest.raises(WorkflowInvalid) as caught:
            env.run(workflow)
        (issue,) = caught.value.issues
        assert (issue.node_id, issue.input_name) == ("4", "ckpt_name")
        assert BROKEN[name] in issue.message
        assert env.models.loaded() == []
    # The good one passes (loading the tiny one would need its config folder beside it).
    from runner.validation import validate

    good = env.build_workflow(request.model_copy(update={"model": "good.safetensors"}))
    assert validate(good, env.node_types, env).ok


def test_a_fixed_file_is_listed_again(tmp_path, models_root, cache_folder, good_checkpoint):
    manager = ModelManager(settings_for(tmp_path, models_root, cache_folder))
    assert "truncated.safetensors" not in manager.checkpoint_names()
    target = models_root / "checkpoints" / "truncated.safetensors"
    shutil.copy(good_checkpoint, target)  # the download finished
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert "truncated.safetensors" in manager.checkpoint_names()


def test_symlinks_out_of_the_models_folders_are_not_followed(
    tmp_path, models_root, cache_folder, good_checkpoint
):
    checkpoints = models_root / "checkpoints"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(good_checkpoint, outside / "outside.safetensors")
    (outside / "sub").mkdir()
    shutil.copy(good_checkpoint, outside / "sub" / "deep.safetensors")
    save_file({"x": np.zeros(2, np.float32)}, str(outside / "style.safetensors"))
    os.symlink(outside / "outside.safetensors", checkpoints / "out-link.safetensors")
    os.symlink(outside / "sub", checkpoints / "out-folder")
    os.symlink(checkpoints / "good.safetensors", checkpoints / "in-link.safetensors")
    os.symlink(outside / "style.safetensors", models_root / "loras" / "style.safetensors")
    os.symlink(checkpoints, checkpoints / "loop")  # a link loop ends

    manager = ModelManager(settings_for(tmp_path, models_root, cache_folder))
    names = manager.checkpoint_names()
    assert "in-link.safetensors" in names and "good.safetensors" in names  # inside: fine
    assert "out-link.safetensors" not in names and "out-folder/deep.safetensors" not in names
    assert manager.lora_names() == []
    skipped = {m.name: m.reason for m in manager.skipped_models() if m.name not in BROKEN}
    assert set(skipped) == {
        "out-link.safetensors",
        "out-folder/deep.safetensors",
        "style.safetensors",
    }
    assert all("allow_model_symlinks_outside" in r for r in skipped.values())
    assert "outside the models folders" in skipped["out-link.safetensors"]
    # By name too: refused, not loaded.
    assert "allow_model_symlinks_outside" in manager.check_checkpoint_name("out-link.safetensors")
    with pytest.raises(Exception, match="allow_model_symlinks_outside"):
        manager.lora_path("style.safetensors")

    allowed = ModelManager(
        settings_for(tmp_path, models_root, cache_folder, allow_model_symlinks_outside=True)
    )
    names = allowed.checkpoint_names()
    assert "out-link.safetensors" in names and "out-folder/deep.safetensors" in names
    assert allowed.lora_names() == ["style.safetensors"]
    assert allowed.check_checkpoint_name("out-link.safetensors") is None


def test_easel_models_and_doctor_warn_about_them(tmp_path, models_root, cache_folder):
    os.symlink(tmp_path, models_root / "checkpoints" / "escape")
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "x.safetensors"))
    env = dict(os.environ)
    env.update(
        {
            "EASEL_DATA_DIR": str(tmp_path / "data"),
            "EASEL_MODELS_DIR": str(models_root),
            "EASEL_CACHE_FOLDER": str(cache_folder),
            "EASEL_CONFIG": os.devnull,
        }
    )
    listing = subprocess.run(
        [EASEL, "models"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listing.returncode == 0, listing.stderr
    listed = listing.stdout.split("checkpoints:")[1].split("loras:")[0].split()
    assert listed == ["tiny-random", "good.safetensors"]
    for name, needle in BROKEN.items():
        line = next(x for x in listing.stderr.splitlines() if f"checkpoint {name}:" in x)
        assert line.lstrip().startswith("warning:") and needle in line
    assert "checkpoint escape/x.safetensors:" in listing.stderr
    as_json = subprocess.run(
        [EASEL, "models", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    info = json.loads(as_json.stdout)
    assert {s["name"] for s in info["skipped"]} == {*BROKEN, "escape/x.safetensors"}

    doctor = subprocess.run(
        [EASEL, "doctor", "--no-settings"], env=env, capture_output=True, text=True, timeout=300
    )
    out = doctor.stdout
    assert "2 checkpoint(s): tiny-random, good.safetensors" in out
    for name in BROKEN:
        assert f"[warn] checkpoint {name} left out:" in out
    assert "[warn] checkpoint escape/x.safetensors left out:" in out
    assert "allow_model_symlinks_outside" in out
