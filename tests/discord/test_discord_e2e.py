"""End to end: the real bot (``easel bot`` in its own process) talks over loopback to the
stand-in Discord server. Tiny random model, 64 px, 2 steps."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3

import pytest
from PIL import Image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def attachment_bytes(server, attachment: dict) -> bytes:
    return server.files[attachment["url"].rsplit("/", 1)[1]]


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def result_for(server, generation_id: int) -> dict:
    return server.wait_for(
        lambda: next(
            (
                m
                for m in server.bot_messages()
                if f"#{generation_id}" in m["content"].split(" · ")[-1]
            ),
            None,
        ),
        60,
        f"the result of generation {generation_id}",
    )


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
        60,
        "a result message",
    )


def job_number(log) -> int:
    """The job number a status showed with its place in the queue."""
    return int(
        next(
            m[1]
            for e in log.edits
            if (m := re.search(r"Job #(\d+)", e.get("content") or "")) is not None
        )
    )


def custom_ids(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


@pytest.fixture(scope="module")
def bot(make_bot):
    return make_bot()


def test_imagine_posts_a_png_and_records_the_generation(server, bot):
    before = len(server.bot_messages())
    log = server.slash("imagine", {"prompt": "a lighthouse at dawn --seed 5 --no fog", "steps": 2})
    message = newest_result(server, before)
    server.wait_for(lambda: "Done" in log.last_text, 10, "the final status")
    assert log.ack_seconds is not None and log.ack_seconds < 3
    assert (
        log.callbacks[0]["type"] == 5 and log.callbacks[0]["data"]["flags"] & 64
    )  # deferred, ephemeral
    assert message["content"].startswith("<@4242> **a lighthouse at dawn** · seed 5 · 2 steps")
    assert [int(u) for u in message["_sent"]["allowed_mentions"]["users"]] == [4242]
    png = attachment_bytes(server, message["attachments"][0])
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (64, 64)
    gen_id = int(message["content"].rsplit("#", 1)[1])
    assert {f"easel:reroll:{gen_id}", f"easel:var:{gen_id}", f"easel:del:{gen_id}"} <= set(
        custom_ids(message)
    )
    ((status, seed, negative, message_id, user_id),) = rows(
        bot.data_dir,
        "select status, seed, negative_prompt, message_id, user_id from generations where id=?",
        gen_id,
    )
    assert (status, seed, negative, message_id, user_id) == (
        "done",
        5,
        "fog",
        int(message["id"]),
        4242,
    )
    ((sha,),) = rows(
        bot.data_dir, "select sha256 from generation_outputs where generation_id=?", gen_id
    )
    assert sha == hashlib.sha256(png).hexdigest()
    assert rows(bot.data_dir, "select status, posted from jobs where generation_id=?", gen_id) == [
        ("done", 1)
    ]
    # The status message showed the queue, progress, then a link to the result.
    texts = [e.get("content", "") for e in log.edits]
    assert any("step 2 of 2" in t for t in texts), texts
    # Its first edit named the job, stored before it was shown; the result was posted
    # once, with the job's nonce.
    assert texts[0].startswith("⏳ Queued") and "Job #" in texts[0], texts
    job = job_number(log)
    assert rows(
        bot.data_dir,
        "select user_id, generation_id, status, posted, posted_message_id from jobs where id=?",
        job,
    ) == [(4242, gen_id, "done", 1, int(message["id"]))]
    assert message["_sent"]["nonce"] == f"easel-job-{job}" and message["_sent"]["enforce_nonce"]


def test_a_too_large_size_is_refused_in_one_sentence(server, bot):
    before = len(server.bot_messages())
    log = server.slash("imagine", {"prompt": "a cat --size 4096x4096"})
    server.wait_for(lambda: log.edits, 20, "the refusal")
    text = log.last_text
    assert text == "⚠️ Size 4096x4096 is larger than your limit of 2048x2048."
    assert text.count("\n") == 0
    assert len(server.bot_messages()) == before


def test_reply_to_a_result_is_img2img_with_its_settings(server, bot):
    before = len(server.bot_messages())
    server.slash("imagine", {"prompt": "a red boat", "size": "64x128"})
    first = newest_result(server, before)
    parent_id = int(first["content"].rsplit("#", 1)[1])
    count = len(server.bot_messages())
    asked = server.post_message(f"<@{server.bot_id}> a blue boat --strength 0.5", reply_to=first)
    reply = newest_result(server, count)
    # The result itself answers the member's message; the status reply is gone.
    assert str(reply["message_reference"]["message_id"]) == asked["id"]
    server.wait_for(
        lambda: (
            not any(
                m.get("message_reference") and m is not reply and "#" not in m["content"]
                for m in server.bot_messages()
            )
        ),
        10,
        "the status reply to be deleted",
    )
    gen_id = int(reply["content"].rsplit("#", 1)[1])
    ((parent, template, params),) = rows(
        bot.data_dir, "select parent_id, template, parameters from generations where id=?", gen_id
    )
    assert parent == parent_id and template == "img2img"
    assert '"width": 64' in params and '"height": 128' in params and '"strength": 0.5' in params
    with Image.open(io.BytesIO(attachment_bytes(server, reply["attachments"][0]))) as image:
        assert image.size == (64, 128)


def test_lora_add_with_a_real_lora_then_use_it(server, bot, tmp_path, cache_folder):
    from lora_files import tiny_lora_bytes

    data = tiny_lora_bytes(cache_folder)
    log = server.slash(
        "lora",
        {"name": "ink", "trigger": "inkstyle", "weight": 0.7},
        files={"file": ("ink.safetensors", data)},
        subcommand="add",
    )
    server.wait_for(
        lambda: "Added LoRA" in log.last_text or "⚠️" in log.last_text, 30, "the LoRA answer"
    )
    assert "Added LoRA `ink`" in log.last_text, log.last_text
    assert rows(
        bot.data_dir, "select name, family, default_weight from loras where owner_id=4242"
    ) == [("ink", "sd1", 0.7)]
    before = len(server.bot_messages())
    server.slash("imagine", {"prompt": "a cat <lora:ink:0.8>"})
    message = newest_result(server, before)
    assert "<lora:ink:0.8>" in message["content"].replace("\\", "")
    gen_id = int(message["content"].rsplit("#", 1)[1])
    ((params,),) = rows(bot.data_dir, "select parameters from generations where id=?", gen_id)
    assert (
        '"name": "ink"' in params and "inkstyle" in params
    )  # trigger word added to the prompt sent


def test_acknowledged_within_three_seconds_while_the_queue_is_full(server, bot):
    before = len(server.bot_messages())
    logs = []
    # Heavier jobs from several users keep the single worker busy for seconds.
    for i in range(4):
        user = server.user(7000 + i, f"user{i}")
        logs.append(
            server.slash("imagine", {"prompt": f"castle {i} --steps 40 --size 256x256"}, user=user)
        )
    # One user beyond their cap of waiting jobs is answered politely, at once. (30 steps:
    # not batched with the castles, so they all still wait when they are cancelled.)
    capped = server.user(8000, "busy")
    for i in range(6):
        logs.append(
            server.slash("imagine", {"prompt": f"tower {i} --steps 30 --size 256x256"}, user=capped)
        )
    for log in logs:
        server.wait_for(lambda log=log: log.callbacks, 5, "an acknowledgement")
        assert log.ack_seconds < 3, log.ack_seconds
    refused = server.wait_for(
        lambda: [log for log in logs if "already have 5 jobs waiting" in log.last_text],
        20,
        "the cap refusal",
    )
    assert len(refused) == 1 and refused[0].payload["member"]["user"]["id"] == capped["id"]
    # Positions were shown while waiting.
    server.wait_for(
        lambda: any("position" in e.get("content", "") for log in logs for e in log.edits),
        20,
        "a queue position",
    )
    # Cancel the capped user's jobs (once all five are queued) so the module finishes quickly.
    mine = [log for log in logs[4:] if log not in refused]
    for log in mine:
        server.wait_for(
            lambda log=log: any("Queued" in e.get("content", "") for e in log.edits), 30, "queued"
        )
    cancel = server.slash("cancel", {}, user=capped)
    server.wait_for(lambda: "Cancelled 5 job(s)" in cancel.last_text, 30, "the cancellation")
    for log in mine:
        server.wait_for(lambda log=log: "Cancelled" in log.last_text, 30, "a cancelled status")
    server.wait_for(
        lambda: len(server.bot_messages()) >= before + 4, 120, "the other users' results"
    )
    # Once a job had run, a waiting job's status said about how long it would wait.
    assert any("to wait" in e.get("content", "") for log in logs for e in log.edits), [
        log.last_text for log in logs
    ]
    ids = [job_number(log) for log in mine]
    assert {r[0] for r in rows(bot.data_dir, "select status from jobs where user_id=8000")} == {
        "cancelled"
    } and len(ids) == 5


def test_owners_pause_resume_and_clear_the_queue(server, bot):
    owner = server.owner
    refused = server.slash("queue", {"action": "pause"}, user=server.user(7777, "eve"))
    server.wait_for(lambda: refused.edits, 20, "the refusal")
    assert refused.last_text == "⚠️ Only the bot's owners may pause the queue."
    paused = server.slash("queue", {"action": "pause"}, user=owner)
    server.wait_for(lambda: "paused" in paused.last_text, 20, "the pause")
    before = len(server.bot_messages())
    waiting = [
        server.slash("imagine", {"prompt": "waits while paused"}, user=server.user(7101, "ada")),
        server.slash("imagine", {"prompt": "the owner's own"}, user=owner),
    ]
    for log in waiting:
        server.wait_for(lambda log=log: "paused by an owner" in log.last_text, 20, "queued")
    shown = server.slash("queue", {}, user=server.user(7101, "ada"))
    server.wait_for(lambda: "job" in shown.last_text, 20, "the queue")
    text = shown.last_text
    assert text.startswith("⏸️ The queue is paused"), text
    assert "waits while paused" in text and "(someone's image)" in text, text
    clear = server.slash("queue", {"action": "clear"}, user=owner)
    server.wait_for(lambda: "Are you sure?" in clear.last_text, 20, "the question")
    question = next(e for e in reversed(clear.edits) if e.get("components"))
    yes = question["components"][0]["components"][0]
    assert yes["label"] == "Yes, clear the queue"
    server.click(clear.original, yes["custom_id"], user=owner)
    server.wait_for(lambda: "Cleared the queue" in clear.last_text, 20, "the clearing")
    assert clear.last_text == "🧹 Cleared the queue: 2 waiting job(s) cancelled."
    for log in waiting:
        server.wait_for(lambda log=log: "Cancelled" in log.last_text, 20, "the cancellation")
        assert log.last_text == "🛑 Cancelled: the queue was cleared by an owner."
    resumed = server.slash("queue", {"action": "resume"}, user=owner)
    server.wait_for(lambda: "running again" in resumed.last_text, 20, "the resumption")
    actions = rows(
        bot.data_dir,
        "select action, actor_id from audit_log where action like 'queue.%' order by id",
    )
    assert actions == [
        ("queue.pause", int(owner["id"])),
        ("queue.clear", int(owner["id"])),
        ("queue.resume", int(owner["id"])),
    ]
    assert len(server.bot_messages()) == before  # nothing was posted for cleared jobs


def test_buttons_work_after_a_restart(server, bot, make_bot):
    before = len(server.bot_messages())
    server.slash("imagine", {"prompt": "a quiet harbour --seed 11"})
    message = newest_result(server, before)
    gen_id = int(message["content"].rsplit("#", 1)[1])
    assert not server.requests_to("PUT", "/commands")  # never synced on an ordinary start
    bot.stop()
    make_bot(
        "--sync", easel_guild_ids=str(server.guild_id)
    )  # a new process on the same data folder
    (sync,) = server.requests_to(
        "PUT", f"/applications/{server.app_id}/guilds/{server.guild_id}/commands"
    )
    names = {c["name"] for c in sync.json}
    assert {
        "imagine",
        "lora",
        "seed",
        "settings",
        "history",
        "show",
        "cancel",
        "queue",
        "forget-me",
        "Remix",
    } <= names
    imagine = next(c for c in sync.json if c["name"] == "imagine")
    steps = next(o for o in imagine["options"] if o["name"] == "steps")
    assert (steps["min_value"], steps["max_value"]) == (
        1,
        150,
    )  # Discord itself refuses out-of-range values
    assert next(o for o in imagine["options"] if o["name"] == "model")["autocomplete"] is True
    count = len(server.bot_messages())
    click = server.click(message, f"easel:reroll:{gen_id}")
    rerolled = newest_result(server, count)
    assert click.ack_seconds < 3
    new_id = int(rerolled["content"].rsplit("#", 1)[1])
    assert rows(bot.data_dir, "select parent_id from generations where id=?", new_id) == [(gen_id,)]
    # Details, ephemeral.
    details = server.click(message, f"easel:info:{gen_id}")
    server.wait_for(lambda: any(e.get("embeds") for e in details.edits), 20, "the details")
    embed = next(e for e in details.edits if e.get("embeds"))["embeds"][0]
    assert embed["title"] == f"Generation #{gen_id}"
    assert {"name": "Seed", "value": "11", "inline": True} in embed["fields"]
    # Someone else may not delete it; the owner may.
    other = server.click(message, f"easel:del:{gen_id}", user=server.user(9999, "mallory"))
    server.wait_for(lambda: other.edits, 20, "the refusal")
    assert "Only the person who made this image" in other.last_text
    delete = server.click(message, f"easel:del:{gen_id}")
    server.wait_for(lambda: "Deleted" in delete.last_text, 20, "the deletion")
    assert rows(bot.data_dir, "select count(*) from generations where id=?", gen_id) == [(0,)]
    assert int(message["id"]) not in server.messages


def test_remix_menu_and_variation_button(server, bot):
    # Anyone's upload, remixed through the message menu and its modal.
    upload = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(upload, format="PNG")
    attachment = server.attachment("photo.png", upload.getvalue())
    photo = server.post_message(
        "look at this", attachments=[attachment], mention_bot=False, author=server.user(5151, "bea")
    )
    opened = server.context_menu("Remix", photo)
    server.wait_for(lambda: opened.callbacks, 10, "the modal")
    assert opened.callbacks[0]["type"] == 9
    before = len(server.bot_messages())
    submitted = server.submit_modal(
        opened, {"Prompt": "a red square, watercolour", "Strength": "0.6"}
    )
    remix = newest_result(server, before)
    server.wait_for(lambda: "Done" in submitted.last_text, 10, "the final status")
    # The first line is the summary (a note says the size the upload was worked at).
    remix_id = int(remix["content"].split("\n")[0].rsplit("#", 1)[1])
    assert "Started from a 96×64 image" in remix["content"]
    ((parent, params),) = rows(
        bot.data_dir, "select parent_id, parameters from generations where id=?", remix_id
    )
    assert parent is None and '"strength": 0.6' in params
    with Image.open(io.BytesIO(attachment_bytes(server, remix["attachments"][0]))) as image:
        assert image.width > image.height  # the upload's aspect ratio is kept
    # V on the result: img2img of that image, linked to it.
    count = len(server.bot_messages())
    server.click(remix, f"easel:var:{remix_id}")
    variation = newest_result(server, count)
    var_id = int(variation["content"].rsplit("#", 1)[1])
    assert rows(bot.data_dir, "select parent_id, template from generations where id=?", var_id) == [
        (remix_id, "img2img")
    ]
