"""The `easel` command line as people use it: the real console script in a subprocess for
the main paths, click's runner for the many error cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bot.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"


@pytest.fixture
def cli_env(tmp_path, cache_folder, monkeypatch):
    """Environment variables pointing easel at a fresh data folder and the shared cache."""
    env = dict(os.environ)
    env.update(
        {
            "EASEL_DATA_DIR": str(tmp_path / "data"),
            "EASEL_CACHE_FOLDER": str(cache_folder),
            "EASEL_CONFIG": os.devnull,
        }
    )
    for key, value in env.items():
        if key.startswith("EASEL_"):
            monkeypatch.setenv(key, value)
    return env


def run_easel(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EASEL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_generate_is_deterministic_across_processes(cli_env, tmp_path):
    args = [
        "generate",
        "a lighthouse at dawn",
        "--seed",
        "42",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "64",
    ]
    first = run_easel([*args, "--out", str(tmp_path / "a.png")], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "seed 42" in first.stderr
    second = run_easel([*args, "--out", str(tmp_path / "b.png")], cli_env, tmp_path)
    assert second.returncode == 0, second.stderr
    a, b = pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png")
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    with Image.open(tmp_path / "a.png") as im:
        assert json.loads(im.text["prompt"])["3"]["inputs"]["seed"] == 42
        assert "Seed: 42" in im.text["parameters"]


def test_run_comfyui_default_workflow_with_events(cli_env, tmp_path):
    workflow = FIXTURES / "comfyui_default_api.json"
    result = run_easel(
        [
            "run",
            str(workflow),
            str(workflow),
            "--set",
            "4.ckpt_name=tiny-random",
            "--set",
            "5.width=64",
            "--set",
            "5.height=64",
            "--set",
            "3.steps=3",
            "--events",
            "jsonl",
        ],
        cli_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    finished = [e for e in events if e["type"] == "finished"]
    assert len(finished) == 2
    # The second identical run comes wholly from the cache.
    assert finished[1]["executed"] == []
    assert sorted(finished[1]["cached"]) == sorted(["3", "4", "5", "6", "7", "8", "9"])
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3]
    assert all(e["total"] == 3 for e in progress)
    saved = finished[0]["outputs"]["9"]["images"][0]
    assert Path(saved["path"]).is_file() and saved["filename"].startswith("ComfyUI_")


def test_run_reports_every_problem_and_exits_2(cli_env, tmp_path):
    workflow = json.loads((FIXTURES / "comfyui_default_api.json").read_text())
    workflow["3"]["inputs"]["sampler_name"] = "euler_magic"
    workflow["3"]["inputs"]["steps"] = "many"
    del workflow["6"]["inputs"]["clip"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(workflow))
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    out = result.output
    assert "value_not_in_list" in out and "euler_magic" in out
    assert "invalid_input_type" in out and "'many'" in out
    assert "required_input_missing" in out and "node 6" in out
    assert (
        "v1-5-pruned-emaonly.safetensors" in out
    )  # the unknown checkpoint, reported in the same run


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"nodes": [], "links": []}', "UI format"),
    ],
)
def test_run_malformed_files(cli_env, tmp_path, content, expected):
    path = tmp_path / "wf.json"
    path.write_text(content)
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert expected in result.output


def test_run_missing_file_and_bad_override(cli_env, tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "not found" in result.output
    result = CliRunner().invoke(
        cli, ["run", str(FIXTURES / "comfyui_default_api.json"), "--set", "99.seed=1"]
    )
    assert result.exit_code == 2 and "no node '99'" in result.output
    result = CliRunner().invoke(
        cli, ["run", str(FIXTURES / "comfyui_default_api.json"), "--set", "garbage"]
    )
    assert result.exit_code == 2 and "NODE.INPUT=VALUE" in result.output


def test_generate_refuses_sizes_over_the_configured_limit(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_MAX_WIDTH", "128")
    result = CliRunner().invoke(
        cli, ["generate", "x", "--width", "256", "--height", "64", "--out", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 2
    assert "value_bigger_than_max" in result.output and "max_width" in result.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("name", ["model.ckpt", "weights.pt", "pytorch_model.bin"])
def test_generate_refuses_pickle_models(cli_env, tmp_path, name, monkeypatch):
    monkeypatch.setenv("EASEL_ALLOW_PICKLE_WEIGHTS", "0")  # the operator turned pickles off
    result = CliRunner().invoke(
        cli, ["generate", "x", "--model", name, "--out", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 2
    assert "pickle" in result.output and name in result.output
    assert not (tmp_path / "o.png").exists()


def test_generate_bad_options(cli_env, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "x", "--lora", "foo:heavy"])
    assert result.exit_code == 2 and "weight" in result.output
    result = runner.invoke(cli, ["generate", "x", "--init-image", str(tmp_path / "missing.png")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(cli, ["generate", "x", "--out", str(tmp_path / "o.gif")])
    assert result.exit_code == 2 and ".png" in result.output
    result = runner.invoke(
        cli,
        [
            "generate",
            "x",
            "--lora",
            "nothere:0.5",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
        ],
    )
    assert result.exit_code == 2 and "no LoRA named 'nothere'" in result.output


def test_generate_img2img_from_a_file(cli_env, tmp_path):
    outputs = {}
    for colour in ("red", "blue"):
        source = tmp_path / f"{colour}.png"
        Image.new("RGB", (80, 72), colour).save(source)
        out = tmp_path / f"{colour}.jpg"
        result = CliRunner().invoke(
            cli,
            [
                "generate",
                "a square",
                "--init-image",
                str(source),
                "--strength",
                "0.3",
                "--steps",
                "3",
                "--width",
                "64",
                "--height",
                "64",
                "--seed",
                "1",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        with Image.open(out) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
        outputs[colour] = pixels(out).astype(int)
    # Same prompt and seed: only the init image differs, and at low strength it shows.
    assert np.abs(outputs["red"] - outputs["blue"]).mean() > 1
    # The init image went into the input folder under its content hash.
    stored = list((Path(os.environ["EASEL_DATA_DIR"]) / "input").iterdir())
    assert len(stored) == 2 and all(len(p.stem) == 20 for p in stored)


def test_generate_rejects_a_non_image_init(cli_env, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not an image at all")
    result = CliRunner().invoke(cli, ["generate", "x", "--init-image", str(fake)])
    assert result.exit_code != 0
    assert "not a readable image" in result.output


def test_nodes_and_models_listing(cli_env, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["nodes", "--json"])
    assert result.exit_code == 0, result.output
    described = {n["class_type"]: n for n in json.loads(result.output)}
    for name in (
        "CheckpointLoaderSimple",
        "LoraLoader",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "KSamplerAdvanced",
        "VAEEncode",
        "VAEDecode",
        "LoadImage",
        "SaveImage",
        "LatentUpscale",
        "ImageScale",
        "CLIPImageTextRank",
    ):
        assert name in described
    ks = described["KSampler"]["inputs"]
    assert ks["steps"]["default"] == 20 and ks["cfg"]["default"] == 8.0
    assert "dpmpp_2m" in ks["sampler_name"]["choices"] and "karras" in ks["scheduler"]["choices"]
    assert described["CheckpointLoaderSimple"]["inputs"]["ckpt_name"]["choices"][0] == "tiny-random"
    text = runner.invoke(cli, ["nodes", "KSampler"]).output
    assert "sampler_name" in text and "denoise" in text
    assert runner.invoke(cli, ["nodes", "NoSuchNode"]).exit_code != 0

    models_dir = Path(os.environ["EASEL_DATA_DIR"]) / "models"
    (models_dir / "checkpoints").mkdir(parents=True)
    (models_dir / "checkpoints" / "old.ckpt").write_bytes(b"pickle")
    os.environ["EASEL_ALLOW_PICKLE_WEIGHTS"] = "0"  # refused by name when pickles are off
    try:
        result = runner.invoke(cli, ["models", "--json"])
    finally:
        del os.environ["EASEL_ALLOW_PICKLE_WEIGHTS"]
    info = json.loads(result.output)
    assert info["checkpoints"] == ["tiny-random"]
    assert info["refused_unsafe_files"][0].endswith("old.ckpt")


def test_doctor_reports_and_shows_sources(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_MAX_STEPS", "33")
    result = CliRunner().invoke(cli, ["doctor"])
    assert (
        "Python 3." in result.output and "torch" in result.output and "diffusers" in result.output
    )
    assert "max_steps = 33  [environment (EASEL_MAX_STEPS)]" in result.output
    assert "max_width = 2048  [default]" in result.output
    assert result.exit_code == 0, result.output


def test_doctor_flags_unwritable_data_folder(cli_env, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EASEL_DATA_DIR", str(blocker / "sub"))
    result = CliRunner().invoke(cli, ["doctor", "--no-settings"])
    assert result.exit_code == 1
    assert "not writable" in result.output and "EASEL_DATA_DIR" in result.output
