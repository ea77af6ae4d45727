"""``easel workflows list|show|add|remove`` and ``easel generate --workflow``, through
click's runner on a fresh data folder and the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bot.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
INVERTED = FIXTURES / "operator_workflows" / "inverted.json"


@pytest.fixture
def data_dir(tmp_path, cache_folder, monkeypatch):
    monkeypatch.setenv("EASEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    monkeypatch.setenv("EASEL_CONFIG", os.devnull)
    return tmp_path / "data"


def easel(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_add_show_list_remove(data_dir, tmp_path):
    sidecar = tmp_path / "portrait.easel.toml"
    sidecar.write_text('description = "Negatives"\nallow = ["prompt", "seed"]\nmax_steps = 8\n')
    added = easel(
        "workflows", "add", str(INVERTED), "--name", "portrait", "--sidecar", str(sidecar)
    )
    assert added.exit_code == 0, added.output
    assert "added workflow portrait" in added.output
    assert (data_dir / "workflows" / "portrait.json").is_file()
    shown = easel("workflows", "show", "portrait")
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert out.splitlines()[0] == "workflow portrait: Negatives"
    assert "  prompt -> node 6 (CLIPTextEncode).text = 'a lighthouse' [title]" in out
    assert "  width -> node 5 (EmptyLatentImage).width = 64 [graph]" in out
    assert "members may change: prompt, seed" in out and "limits: at most 8 steps" in out
    assert (
        "node types: CLIPTextEncode, CheckpointLoaderSimple, EmptyLatentImage, ImageInvert, KSampler, SaveImage, VAEDecode"
        in out
    )
    assert "models: checkpoint tiny-random" in out
    listed = easel("workflows", "list")
    assert listed.output.strip() == "portrait\tNegatives"
    again = easel("workflows", "add", str(INVERTED), "--name", "portrait")
    assert again.exit_code == 2 and "exists" in again.output
    removed = easel("workflows", "remove", "portrait")
    assert removed.exit_code == 0 and not (data_dir / "workflows" / "portrait.json").exists()
    assert easel("workflows", "show", "portrait").exit_code == 2


def test_add_refuses_with_every_problem(data_dir, tmp_path):
    graph = json.loads((FIXTURES / "comfyui_default_api.json").read_text())
    graph["9"]["class_type"] = "SaveToCloud"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(graph))
    result = easel("workflows", "add", str(bad))
    assert result.exit_code == 2
    assert "refused, 3 problem(s)" in result.output
    assert "no output node" in result.output
    assert "unknown node type 'SaveToCloud'" in result.output
    assert "the checkpoint 'v1-5-pruned-emaonly.safetensors' is not installed" in result.output
    assert not (data_dir / "workflows" / "bad.json").exists()


def test_generate_with_a_workflow_keeps_its_values(data_dir, tmp_path):
    assert easel("workflows", "add", str(INVERTED)).exit_code == 0
    out = tmp_path / "out.png"
    printed = easel(
        "generate", "a fox", "--workflow", "inverted", "--seed", "3", "--print-workflow"
    )
    graph = json.loads(printed.output[printed.output.index("{") :])
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["3"]["inputs"]["seed"] == 3
    assert graph["3"]["inputs"]["steps"] == 2 and graph["5"]["inputs"]["width"] == 64  # its own
    assert graph["10"]["class_type"] == "ImageInvert"
    made = easel(
        "generate",
        "a fox",
        "--workflow",
        "inverted",
        "--seed",
        "3",
        "--steps",
        "3",
        "--out",
        str(out),
    )
    assert made.exit_code == 0, made.output
    with Image.open(out) as im:
        assert im.size == (64, 64) and np.asarray(im).size
    unknown = easel("generate", "a fox", "--workflow", "nope")
    assert unknown.exit_code != 0 and "no workflow named 'nope'" in unknown.output


def test_generate_best_of_keeps_what_clip_ranks_first(data_dir, make_env, monkeypatch):
    from helpers.tiny_clip import RANKER, as_uint8, independent_scores, load_ranker, write_tiny_clip

    from runner.workflow import apply_overrides, load_workflow

    env = make_env()  # the same data folder as the CLI's
    ranker = load_ranker(write_tiny_clip(env.settings.models_root))
    assert easel("workflows", "add", str(INVERTED)).exit_code == 0
    # No CLIP model configured: --best is refused, saying which setting it needs.
    refused = easel("generate", "a lighthouse", "--workflow", "inverted", "--best", "3")
    assert refused.exit_code == 2 and "clip_model" in refused.output, refused.output
    monkeypatch.setenv("EASEL_CLIP_MODEL", RANKER)
    for bad, said in (
        (["--keep", "2"], "--keep only applies with --best"),
        (["--best", "3", "--keep", "4"], "--keep 4 is more than the 3 candidates"),
    ):
        result = easel("generate", "a lighthouse", "--workflow", "inverted", *bad)
        assert result.exit_code == 2 and said in result.output, result.output

    made = easel(
        "generate", "a lighthouse", "--workflow", "inverted", "--seed", "11", "--best", "3",
        "--keep", "2",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    written = [Path(line) for line in made.stdout.split() if line.endswith(".png")]
    # Independently: the workflow's 3 candidates (one batch, that seed), scored by the
    # ranker loaded with transformers and its own image processor.
    graph = apply_overrides(
        load_workflow(INVERTED, env.node_types),
        [("6", "text", "a lighthouse"), ("3", "seed", 11), ("5", "batch_size", 3)],
    )
    candidates = as_uint8(env.run(graph).values["10"][0])
    scores = independent_scores(ranker, candidates, "a lighthouse", env.settings.cache_dir)
    best = sorted(range(3), key=lambda i: -scores[i])[:2]
    assert len(written) == 2
    for path, index in zip(written, best, strict=True):
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), candidates[index])
    assert f"best 2 of 3 by CLIP {RANKER}: *image {best[0] + 1} " in made.stderr, made.stderr
