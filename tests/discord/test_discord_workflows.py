"""Operator workflows end to end: the real bot (``easel bot`` in its own process) and the
loopback Discord stand-in. An owner adds a UI-format workflow from Discord, a member runs
it with a prompt and an attached image, presses reroll and variations, the buttons keep
working after a restart, and ``@easel run`` reruns a ComfyUI PNG's graph. The pixels are
checked against the same graph run directly in this process (tiny model, 64 px, 2 steps)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "operator_workflows" / "inverted.json"


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def attachment_bytes(server, attachment: dict) -> bytes:
    return bytes(server.files[attachment["url"].rsplit("/", 1)[1]])


def newest_result(server, after: int = 0) -> dict:
    return server.wait_for(
        lambda: next(
            (
                m
                for m in server.bot_messages()[after:]
                if m.get("attachments") and "#" in m["content"]
            ),
            None,
        ),
        90,
        "a result message",
    )


def gen_id(message: dict) -> int:
    return int(message["content"].rsplit("#", 1)[1])


def pixels(data: bytes | str | Path) -> np.ndarray:
    source = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for rounding (one torch thread in both processes: usually exact)."""
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1


@pytest.fixture(scope="module")
def bot(make_bot):
    return make_bot()


@pytest.fixture
def direct(make_env):
    """The workflow file run directly here, written out by hand: its graph with the
    prompt and seed set, optionally from an init image (LoadImage -> ImageScale ->
    VAEEncode into the sampler, denoise = strength), optionally without the invert."""
    from runner.workflow import load_workflow

    env = make_env()
    graph = load_workflow(FIXTURE, env.node_types)

    def run(prompt: str, seed: int, image: bytes | None = None, strength: float = 1.0, invert=True):
        g = json.loads(json.dumps(graph))
        g["6"]["inputs"]["text"] = prompt
        g["3"]["inputs"]["seed"] = seed
        if image is not None:
            env.settings.input_dir.mkdir(parents=True, exist_ok=True)
            (env.settings.input_dir / "init.png").write_bytes(image)
            g["50"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
            g["51"] = {
                "class_type": "ImageScale",
                "inputs": {
                    "image": ["50", 0],
                    "upscale_method": "bicubic",
                    "width": 64,
                    "height": 64,
                    "crop": "center",
                },
            }
            g["52"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["51", 0], "vae": ["4", 2]}}
            g["3"]["inputs"]["latent_image"] = ["52", 0]
            g["3"]["inputs"]["denoise"] = strength
        if not invert:
            g["9"]["inputs"]["images"] = ["8", 0]
        return pixels(env.run(g).images[0])

    return run


def test_operator_workflow_from_discord_to_members_buttons_and_png_runs(
    server, bot, make_bot, direct
):
    owner = server.owner
    # A member may not add workflows.
    refused = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={"file": ("inverted.json", FIXTURE.read_bytes())},
        user=server.user(5151, "bea"),
    )
    server.wait_for(lambda: refused.edits, 30, "the refusal")
    assert refused.last_text == "⚠️ Only the bot's owners can add workflows."

    # A workflow with problems is refused with every one of them, and nothing is stored.
    broken = json.loads(FIXTURE.read_text())
    broken["nodes"][0]["type"] = "CLIPTextEncodeDeluxe"
    next(n for n in broken["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"] = [
        "missing.safetensors"
    ]
    bad = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={"file": ("broken.json", json.dumps(broken).encode())},
        user=owner,
    )
    server.wait_for(lambda: "not added" in bad.last_text, 30, "the refusal")
    assert "CLIPTextEncodeDeluxe" in bad.last_text, bad.last_text
    assert "checkpoint 'missing.safetensors' is not installed" in bad.last_text, bad.last_text
    assert not (bot.data_dir / "workflows").exists()

    # The owner adds the UI-format workflow: a confirmation lists bindings and needs.
    added = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={"file": ("inverted.json", FIXTURE.read_bytes())},
        user=owner,
    )
    server.wait_for(lambda: any(e.get("components") for e in added.edits), 30, "the confirmation")
    question = next(e for e in reversed(added.edits) if e.get("components"))
    text = question["content"]
    assert text.startswith("Add workflow **inverted**?"), text
    assert "prompt -> node 6 (CLIPTextEncode).text = 'a lighthouse' [title]" in text
    assert "seed -> node 3 (KSampler).seed = 5" in text and "ImageInvert" in text
    assert "checkpoint tiny-random" in text
    assert not (bot.data_dir / "workflows").exists()  # nothing stored before Confirm
    confirm = question["components"][0]["components"][0]
    assert confirm["label"] == "Confirm"
    server.click(added.original, confirm["custom_id"], user=owner)
    server.wait_for(lambda: "is ready" in added.last_text, 30, "the stored workflow")
    assert (bot.data_dir / "workflows" / "inverted.json").is_file()

    listed = server.slash("workflow", {}, subcommand="list")
    server.wait_for(lambda: "inverted" in listed.last_text, 30, "the list")
    assert "`inverted`: Inverted colours: a negative of the picture." in listed.last_text

    # A member runs it with their prompt: what the workflow makes (its invert ran).
    before = len(server.bot_messages())
    server.slash("imagine", {"prompt": "a red boat --seed 11", "workflow": "inverted"})
    first = newest_result(server, before)
    first_id = gen_id(first)
    ((template, seed),) = rows(
        bot.data_dir, "select template, seed from generations where id=?", first_id
    )
    assert (template, seed) == ("workflow:inverted", 11)
    got = pixels(attachment_bytes(server, first["attachments"][0]))
    assert close(got, direct("a red boat", 11))
    assert close(got, 255 - direct("a red boat", 11, invert=False))

    # ... and with an attached image, which goes into the workflow as its init image.
    upload = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(upload, format="PNG")
    before = len(server.bot_messages())
    log = server.slash(
        "imagine",
        {"prompt": "a sunset --seed 21 --strength 0.6", "workflow": "inverted"},
        files={"image": ("photo.png", upload.getvalue())},
    )
    with_image = newest_result(server, before)
    image_id = gen_id(with_image)
    assert rows(bot.data_dir, "select template from generations where id=?", image_id) == [
        ("workflow:inverted",)
    ]
    got = pixels(attachment_bytes(server, with_image["attachments"][0]))
    assert close(got, direct("a sunset", 21, upload.getvalue(), 0.6)), log.last_text
    assert not close(got, direct("a sunset", 21))

    # Reroll keeps the workflow (a new seed).
    before = len(server.bot_messages())
    server.click(first, f"easel:reroll:{first_id}")
    rerolled = newest_result(server, before)
    ((template, seed, parent),) = rows(
        bot.data_dir,
        "select template, seed, parent_id from generations where id=?",
        gen_id(rerolled),
    )
    assert template == "workflow:inverted" and parent == first_id
    assert close(
        pixels(attachment_bytes(server, rerolled["attachments"][0])), direct("a red boat", seed)
    )

    # A variation keeps it too: the result's image into the workflow at the variation strength.
    before = len(server.bot_messages())
    server.click(first, f"easel:var:{first_id}")
    variation = newest_result(server, before)
    ((template, seed, parent),) = rows(
        bot.data_dir,
        "select template, seed, parent_id from generations where id=?",
        gen_id(variation),
    )
    assert template == "workflow:inverted" and parent == first_id
    source = attachment_bytes(server, first["attachments"][0])
    assert close(
        pixels(attachment_bytes(server, variation["attachments"][0])),
        direct("a red boat", seed, source, 0.55),
    )

    # `@easel run` replied to a ComfyUI PNG reruns its graph: the same pixels.
    before = len(server.bot_messages())
    server.post_message(f"<@{server.bot_id}> run", reply_to=first, author=server.user(5151, "bea"))
    rerun = newest_result(server, before)
    ((template, seed),) = rows(
        bot.data_dir, "select template, seed from generations where id=?", gen_id(rerun)
    )
    assert template.startswith("png-run:") and seed == 11
    assert np.array_equal(
        pixels(attachment_bytes(server, rerun["attachments"][0])),
        pixels(attachment_bytes(server, first["attachments"][0])),
    )

    # After a restart the buttons still keep the workflow; owners can turn `run` off.
    bot.stop()
    again = make_bot(easel_allow_run_from_png="false")
    before = len(server.bot_messages())
    server.click(with_image, f"easel:reroll:{image_id}")
    after_restart = newest_result(server, before)
    assert rows(
        again.data_dir,
        "select template, parent_id from generations where id=?",
        gen_id(after_restart),
    ) == [("workflow:inverted", image_id)]
    count = len(server.bot_messages())
    server.post_message(f"<@{server.bot_id}> run", reply_to=first)
    server.wait_for(
        lambda: any("turned off" in m["content"] for m in server.bot_messages()[count:]),
        30,
        "the refusal",
    )

    # Removing it: /imagine names the missing workflow.
    removed = server.slash("workflow", {"name": "inverted"}, subcommand="remove", user=owner)
    server.wait_for(lambda: "Removed" in removed.last_text, 30, "the removal")
    gone = server.slash("imagine", {"prompt": "x", "workflow": "inverted"})
    server.wait_for(lambda: gone.edits, 30, "the refusal")
    assert "no workflow named 'inverted'" in gone.last_text
