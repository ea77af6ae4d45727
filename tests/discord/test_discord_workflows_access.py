"""Who may use an operator workflow, through the real bot and the loopback Discord:
``/imagine workflow:`` autocomplete lists the workflows a member's roles allow, with their
descriptions; and the result buttons (reroll, variations, upscale, reuse seed) apply the
workflow's roles, allow list and limits again as they are when clicked (the sidecar is
edited between clicks, as an owner would). Tiny model, 64 px, 2 steps."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "operator_workflows" / "inverted.json"
NOTE = "Inverted colours: a negative of the picture."  # the fixture's Note node
ROLE = 4711
MEMBERS = "For members of the studio"


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def jobs(data_dir) -> int:
    return rows(data_dir, "select count(*) from jobs")[0][0]


def mark(server) -> int:
    return max((int(m["id"]) for m in server.bot_messages()), default=0)


def newest_result(server, after: int) -> dict:
    return server.wait_for(
        lambda: next(
            (
                m
                for m in server.bot_messages()
                if int(m["id"]) > after and m.get("attachments") and "#" in m["content"]
            ),
            None,
        ),
        90,
        "a result message",
    )


def gen_id(message: dict) -> int:
    return int(message["content"].rsplit("#", 1)[1])


def refused(server, log) -> str:
    server.wait_for(lambda: "⚠️" in log.last_text, 30, "the refusal")
    return log.last_text


@pytest.fixture(scope="module")
def bot(make_bot):
    bot = make_bot()
    folder = bot.data_dir / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE, folder / "inverted.json")  # everyone's; described by its Note
    shutil.copy(FIXTURE, folder / "studio.json")
    sidecar(bot, roles=[ROLE])
    return bot


def sidecar(bot, **table) -> None:
    """Write ``studio``'s sidecar, as an owner editing it would."""
    (bot.data_dir / "workflows" / "studio.easel.json").write_text(
        json.dumps({"description": MEMBERS, **table})
    )


def offered(server, typed: str, **who) -> list[tuple[str, str]]:
    """(name, value) of every choice ``/imagine workflow:`` autocomplete offers."""
    data = {
        "id": "1",
        "name": "imagine",
        "type": 1,
        "options": [
            {"name": "prompt", "type": 3, "value": "a cat"},
            {"name": "workflow", "type": 3, "value": typed, "focused": True},
        ],
    }
    log = server._interaction(4, data, **who)
    server.wait_for(lambda: log.callbacks, 20, "the autocomplete answer")
    return [(c["name"], c["value"]) for c in log.callbacks[0]["data"]["choices"]]


def test_workflow_autocomplete_lists_what_the_members_roles_allow(server, bot):
    everyone = ("inverted: " + NOTE, "inverted")
    studio = ("studio: " + MEMBERS, "studio")
    assert offered(server, "") == [everyone]
    assert offered(server, "", roles=[ROLE]) == [everyone, studio]
    assert offered(server, "", user=server.owner) == [everyone, studio]  # owners: all
    # What is typed matches names and descriptions.
    assert offered(server, "negative", roles=[ROLE]) == [everyone]
    assert offered(server, "stu", roles=[ROLE]) == [studio]
    assert offered(server, "stu") == []


def test_result_buttons_apply_the_workflows_roles_allow_list_and_limits_again(server, bot):
    before = mark(server)
    made = server.slash(
        "imagine", {"prompt": "a red boat --seed 11", "workflow": "studio"}, roles=[ROLE]
    )
    try:
        first = newest_result(server, before)
    except TimeoutError:
        raise AssertionError(f"no result: {made.edits}") from None
    first_id = gen_id(first)
    assert rows(bot.data_dir, "select template from generations where id=?", first_id) == [
        ("workflow:studio",)
    ]
    queued = jobs(bot.data_dir)

    def click(action: str, **who):
        return server.click(first, f"easel:{action}:{first_id}", **who)

    # A member who lost the role is refused; with it, reroll makes another.
    assert "for members with certain roles only" in refused(server, click("reroll"))
    assert jobs(bot.data_dir) == queued
    before = mark(server)
    click("reroll", roles=[ROLE])
    again = newest_result(server, before)
    assert rows(
        bot.data_dir, "select template, parent_id from generations where id=?", gen_id(again)
    ) == [("workflow:studio", first_id)]
    queued = jobs(bot.data_dir)

    # The owner lowers the steps limit: the result's 2 steps are now too many.
    sidecar(bot, roles=[ROLE], max_steps=1)
    text = refused(server, click("reroll", roles=[ROLE]))
    assert "steps 2 is more than this workflow's limit of 1" in text, text

    # A size limit: upscaling 64 px to 128 px goes beyond it (rerolls still fit).
    sidecar(bot, roles=[ROLE], max_size=64)
    text = refused(server, click("up", roles=[ROLE]))
    assert "size 128x128 is larger than this workflow's limit of 64x64" in text, text

    # Members may no longer give it an image: no variations.
    allow = ["prompt", "seed", "negative", "width", "height", "batch_size"]
    sidecar(bot, roles=[ROLE], allow=allow)
    text = refused(server, click("var", roles=[ROLE]))
    assert "this workflow takes no image" in text, text

    # ... nor change the prompt: reuse seed with a new prompt is refused.
    sidecar(bot, roles=[ROLE], allow=["seed", "negative", "image"])
    opened = click("seed", roles=[ROLE])
    server.wait_for(lambda: opened.callbacks, 20, "the reuse-seed modal")
    submitted = server.submit_modal(
        opened, {"Prompt": "a blue boat", "Negative": "bad hands"}, roles=[ROLE]
    )
    text = refused(server, submitted)
    assert "prompt cannot be changed in this workflow" in text, text
    assert jobs(bot.data_dir) == queued  # none of the refused clicks queued anything

    # Removed: the buttons say so.
    (bot.data_dir / "workflows" / "studio.json").unlink()
    text = refused(server, click("reroll", roles=[ROLE]))
    assert "no workflow named 'studio'" in text, text
    assert jobs(bot.data_dir) == queued


SIDECAR_TOML = b"""
description = "Portraits, text swapped"
prompt = "7.text"
negative = "6.text"
allow = ["prompt", "seed"]
max_steps = 4
"""


def test_workflow_add_takes_a_sidecar_and_shows_the_bindings_it_makes(server, bot):
    owner = server.owner
    # A sidecar with a mistake: refused, naming it, and nothing stored.
    bad = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={
            "file": ("portrait.json", FIXTURE.read_bytes()),
            "sidecar": ("portrait.toml", SIDECAR_TOML + b"colour = 3\n"),
        },
        user=owner,
    )
    text = refused(server, bad)
    assert "not added" in text and "unknown key(s) colour" in text, text
    broken = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={
            "file": ("portrait.json", FIXTURE.read_bytes()),
            "sidecar": ("portrait.toml", b"prompt = = 1"),
        },
        user=owner,
    )
    assert "sidecar portrait.toml cannot be read" in refused(server, broken)
    assert not (bot.data_dir / "workflows" / "portrait.json").exists()

    added = server.slash(
        "workflow",
        {},
        subcommand="add",
        files={
            "file": ("portrait.json", FIXTURE.read_bytes()),
            "sidecar": ("portrait.toml", SIDECAR_TOML),
        },
        user=owner,
    )
    server.wait_for(lambda: any(e.get("components") for e in added.edits), 30, "the confirmation")
    question = next(e for e in reversed(added.edits) if e.get("components"))
    text = question["content"]
    assert text.startswith("Add workflow **portrait**? (with the settings of portrait.toml)")
    assert "Portraits, text swapped" in text
    # The bindings as the sidecar made them, not as guessed from the graph.
    assert "prompt -> node 7 (CLIPTextEncode).text = 'bad hands' [explicit]" in text, text
    assert "negative -> node 6 (CLIPTextEncode).text = 'a lighthouse' [explicit]" in text
    assert "members may change: prompt, seed" in text and "at most 4 steps" in text
    server.click(
        added.original, question["components"][0]["components"][0]["custom_id"], user=owner
    )
    server.wait_for(lambda: "is ready" in added.last_text, 30, "the stored workflow")
    stored = json.loads((bot.data_dir / "workflows" / "portrait.easel.json").read_text())
    assert stored["prompt"] == "7.text" and stored["max_steps"] == 4
    listed = server.slash("workflow", {}, subcommand="list", user=owner)
    server.wait_for(lambda: "portrait" in listed.last_text, 30, "the list")
    assert "`portrait`: Portraits, text swapped" in listed.last_text
