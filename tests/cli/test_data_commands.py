"""The operator commands for stored data (``easel users``, ``history``, ``lora``,
``export``, ``forget``, ``db upgrade``) through click's runner, and the main path through
the real console script."""

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
from tests.services.lora_factory import fake_lora, files_under, safetensors_bytes

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"
ALICE, BOB = 4001, 4002


@pytest.fixture
def data_dir(tmp_path, cache_folder, monkeypatch) -> Path:
    """easel pointed at a fresh data folder (its database is created on first use)."""
    folder = tmp_path / "data"
    monkeypatch.setenv("EASEL_DATA_DIR", str(folder))
    monkeypatch.setenv("EASEL_CACHE_FOLDER", str(cache_folder))
    monkeypatch.setenv("EASEL_CONFIG", os.devnull)
    monkeypatch.delenv("EASEL_DATABASE_URL", raising=False)
    return folder


def easel(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture
def lora_file(tmp_path) -> Path:
    path = tmp_path / "style.safetensors"
    path.write_bytes(fake_lora("sd1"))
    return path


def test_db_upgrade(data_dir):
    first = easel("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "upgraded from an empty database to revision" in first.output
    assert (data_dir / "easel.sqlite3").is_file()
    again = easel("db", "upgrade")
    assert again.exit_code == 0 and "already at revision" in again.output


def test_users_on_a_new_database(data_dir):
    result = easel("users")
    assert result.exit_code == 0 and result.output.strip() == "no users"
    assert (data_dir / "easel.sqlite3").is_file()  # migrated on opening


def test_lora_add_list_remove(data_dir, lora_file):
    added = easel(
        "lora",
        "add",
        lora_file,
        "--user",
        ALICE,
        "--name",
        "style",
        "--trigger",
        "ink wash",
        "--weight",
        "0.7",
    )
    assert added.exit_code == 0, added.output
    assert "added 'style' for user 4001: sd1, diffusers keys, private, weight 0.7" in added.output
    shared = tmp_copy(lora_file, fake_lora("sd2", "kohya"), "shared.safetensors")
    assert easel("lora", "add", shared, "--user", BOB, "--name", "bobs", "--shared").exit_code == 0

    everything = easel("lora", "list")
    assert everything.exit_code == 0
    lines = everything.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("style  sd1  diffusers  weight 0.7  private  owner 4001")
    assert "triggers: ink wash" in lines[0]
    assert lines[1].startswith("bobs  sd2  kohya  weight 1  shared  owner 4002")
    # Bob sees his own and no private LoRA of Alice's.
    bobs_view = easel("lora", "list", "--user", BOB, "--json")
    assert [item["name"] for item in json.loads(bobs_view.output)] == ["bobs"]
    alices_view = easel("lora", "list", "--user", ALICE)
    assert [line.split()[0] for line in alices_view.output.splitlines()] == ["style", "bobs"]

    users = easel("users")
    assert "4001: 1 LoRA(s), 0 generation(s)" in users.output
    assert json.loads(easel("users", "--json").output)["total"] == 2

    refused = easel("lora", "remove", "bobs", "--user", ALICE)
    assert refused.exit_code == 2
    assert "'bobs' is another user's shared LoRA; only its owner may remove it" in refused.output
    missing = easel("lora", "remove", "style", "--user", BOB)
    assert missing.exit_code == 2 and "no LoRA 'style' found" in missing.output
    removed = easel("lora", "remove", "style", "--user", ALICE)
    assert removed.exit_code == 0 and "file deleted" in removed.output
    assert len(files_under(data_dir / "lora-library")) == 1


def tmp_copy(near: Path, data: bytes, name: str) -> Path:
    path = near.with_name(name)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("model.safetensors", b"PK\x03\x04 a renamed torch.save file", [], "zip archive"),
        ("model.ckpt", None, [], "Python pickles"),
        ("bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{", [], "truncated"),
        ("nolora.safetensors", "nolora", [], "no LoRA keys"),
        (
            "two.safetensors",
            "sd2",
            ["--model", "tiny-random"],
            "is for sd2 models and cannot be used with 'tiny-random', a sd1 model",
        ),
        ("ok.safetensors", None, ["--name", "../up"], "path separators are not allowed"),
    ],
)
def test_lora_add_refusals_store_nothing(data_dir, tmp_path, name, content, args, message):
    data = {
        None: fake_lora("sd1"),
        "sd2": fake_lora("sd2"),
        "nolora": safetensors_bytes({"emb_params": np.zeros((1, 4), np.float16)}),
    }.get(content, content)
    path = tmp_path / name
    path.write_bytes(data)
    if "--name" not in args:
        args = [*args, "--name", "x"]
    result = easel("lora", "add", path, "--user", ALICE, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert files_under(data_dir / "lora-library") == []
    assert easel("lora", "list").output.strip() == "no LoRAs"


def test_lora_add_unknown_family_asks_for_a_model(data_dir, tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(_tiny_width_lora())
    result = easel("lora", "add", path, "--user", ALICE, "--name", "tiny")
    assert result.exit_code == 2 and "(with --model)" in result.output
    result = easel("lora", "add", path, "--user", ALICE, "--name", "tiny", "--model", "tiny-random")
    assert result.exit_code == 0, result.output


def _tiny_width_lora() -> bytes:
    """Widths (32, 64) that match no real model family, like the tiny model's."""
    return safetensors_bytes(
        {
            "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": np.ones(
                (2, 32), np.float32
            ),
            "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": np.ones(
                (64, 2), np.float32
            ),
        }
    )


def _record_generations(data_dir: Path) -> list[int]:
    """Three generations of Alice's (with one image each) and one of Bob's."""
    from bot.services.database import open_database
    from bot.services.history import History
    from bot.settings import Settings
    from plugins.templates import build_txt2img
    from runner.executor import RunResult
    from runner.templates import GenerationRequest

    settings = Settings()
    assert settings.data_dir == data_dir
    ids = []
    with open_database(settings) as db:
        history = History(db, settings, build_workflow=lambda r: build_txt2img(r, "tiny-random"))
        for user, prompt, color in (
            (ALICE, "a red fox", (255, 0, 0)),
            (ALICE, "a lighthouse", (0, 255, 0)),
            (ALICE, "an arctic FOX", (0, 0, 255)),
            (BOB, "bob's fox", (9, 9, 9)),
        ):
            prepared = history.prepare(
                user, GenerationRequest(prompt=prompt, seed=len(ids), steps=2)
            )
            settings.output_dir.mkdir(parents=True, exist_ok=True)
            path = settings.output_dir / f"{len(ids)}.png"
            Image.new("RGB", (8, 8), color).save(path)
            history.record_result(
                prepared.generation_id,
                RunResult("j", outputs={"9": {"images": [{"path": str(path)}]}}),
            )
            ids.append(prepared.generation_id)
    return ids


def test_history(data_dir):
    ids = _record_generations(data_dir)
    result = easel("history", "--user", ALICE, "--query", "fox", "--per-page", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0].startswith(f"#{ids[2]}  ") and "done" in lines[0] and "an arctic FOX" in lines[0]
    )
    assert lines[1].strip().startswith("images/") and lines[1].endswith("8x8")
    assert lines[-1] == "(1-1 of 2)"
    second = easel("history", "--user", ALICE, "--query", "fox", "--per-page", "1", "--page", "2")
    assert f"#{ids[0]}  " in second.output and "(2-2 of 2)" in second.output
    as_json = json.loads(easel("history", "--user", ALICE, "--json").output)
    assert (
        as_json["total"] == 3
        and as_json["generations"][0]["workflow"]["3"]["class_type"] == "KSampler"
    )
    nobody = easel("history", "--user", 999)
    assert nobody.exit_code == 0 and nobody.output.strip() == "no generations for user 999"
    assert easel("history", "--user", ALICE, "--page", "0").exit_code == 2


def test_export_and_forget(data_dir, tmp_path, lora_file):
    _record_generations(data_dir)
    assert easel("lora", "add", lora_file, "--user", ALICE, "--name", "style").exit_code == 0
    exported = easel("export", "--user", ALICE, "--out", tmp_path / "out")
    assert exported.exit_code == 0, exported.output
    assert "easel-user-data.json, 4 file(s)" in exported.output
    document = json.loads((tmp_path / "out" / "easel-user-data.json").read_text())
    assert len(document["generations"]) == 3
    again = easel("export", "--user", ALICE, "--out", tmp_path / "out")
    assert again.exit_code == 2 and "is not empty" in again.output
    unknown = easel("export", "--user", 1, "--out", tmp_path / "none")
    assert unknown.exit_code == 2 and "no user 1 found" in unknown.output

    declined = easel("forget", "--user", ALICE, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert "1 loras, 3 generations" in declined.output
    assert "3 generation(s)" in easel("users").output

    # Drop-in plugins, as the bot would load them: one forgets, one fails.
    plugins = data_dir / "plugins"
    plugins.mkdir()
    (plugins / "forgetful.py").write_text(
        "from pathlib import Path\n"
        "from runner import hookimpl\n\n\n"
        "@hookimpl\n"
        "def easel_forget_user(user_id, data_dir):\n"
        "    (Path(data_dir) / f'forgot-{user_id}.txt').write_text('done')\n"
    )
    (plugins / "archive.py").write_text(
        "from runner import hookimpl\n\n\n"
        "@hookimpl\n"
        "def easel_forget_user(user_id):\n"
        "    raise OSError('archive offline')\n"
    )
    forgotten = easel("forget", "--user", ALICE, input="y\n")
    assert forgotten.exit_code == 1
    assert "forgot user 4001:" in forgotten.output and "4 file(s) deleted" in forgotten.output
    assert "plugin archive failed to forget user 4001: OSError: archive offline" in forgotten.output
    assert "plugins asked: forgetful, archive" in forgotten.output
    assert (data_dir / "forgot-4001.txt").read_text() == "done"
    assert easel("history", "--user", ALICE).output.strip() == "no generations for user 4001"
    users = easel("users").output
    assert "4001" not in users and "4002" in users
    # Bob's image is his alone: still there; nothing of Alice's is.
    remaining = [p.name for p in files_under(data_dir / "images")]
    assert len(remaining) == 1


def test_generate_records_nothing(data_dir, tmp_path):
    result = easel(
        "generate",
        "a fox",
        "--seed",
        "1",
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        tmp_path / "fox.png",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fox.png").is_file()
    assert not (data_dir / "easel.sqlite3").exists()
    assert not (data_dir / "images").exists()


def test_the_real_console_script(data_dir, lora_file, tmp_path):
    env = dict(os.environ)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [EASEL, *map(str, args)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    added = run("lora", "add", lora_file, "--user", ALICE, "--name", "style", "--shared")
    assert added.returncode == 0, added.stderr
    assert "added 'style' for user 4001: sd1" in added.stdout
    listed = run("lora", "list", "--user", BOB, "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["name"], item["owner_id"], item["shared"]) == ("style", ALICE, True)
    refused = run("lora", "add", lora_file, "--user", BOB, "--name", "a/b")
    assert refused.returncode == 2 and "path separators are not allowed" in refused.stderr
    forgotten = run("forget", "--user", ALICE, "--yes")
    assert forgotten.returncode == 0, forgotten.stderr
    assert "1 file(s) deleted" in forgotten.stdout
    assert files_under(data_dir / "lora-library") == []
