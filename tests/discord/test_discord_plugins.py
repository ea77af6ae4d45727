"""End to end: an owner installs the example plugin into a running bot (``easel bot`` in its
own process) with ``/plugin install`` from a local path, confirms with the button, and then
disables, enables and removes it, all without a restart; a stranger's install is refused;
the bot keeps answering ``/imagine`` throughout. pip runs for real, offline."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "easel-plugin-example"
NAME = "easel-plugin-example"


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A copy of the example plugin's project: pip builds a local folder in place."""
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("setuptools")) < Version("70.1") and not importlib.util.find_spec("wheel"):
        pytest.fail("building plugins offline needs setuptools>=70.1 (or wheel)")
    target = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    return target


@pytest.fixture(scope="module")
def bot(make_bot):
    return make_bot(
        easel_plugin_allow_urls="true",
        easel_plugin_pip_args="--no-index --no-build-isolation",
        easel_plugin_pip_timeout_s="120",
    )


def answer(server, log, done, what: str, timeout: float = 30) -> str:
    """The interaction's last text once ``done(text)`` holds (or a warning shows)."""
    server.wait_for(lambda: done(log.last_text) or log.last_text.startswith("⚠️"), timeout, what)
    return log.last_text


def plugin(server, subcommand: str, options: dict | None = None, **kwargs):
    return server.slash("plugin", options or {}, subcommand=subcommand, **kwargs)


def imagine_works(server, prompt: str) -> None:
    """``/imagine`` still gets an image posted."""
    before = len(server.bot_messages())
    log = server.slash("imagine", {"prompt": f"{prompt} --seed 3", "steps": 2})
    server.wait_for(
        lambda: any(m.get("attachments") for m in server.bot_messages()[before:]),
        60,
        f"the image for {prompt!r}",
    )
    assert log.ack_seconds is not None and log.ack_seconds < 3


def listed(server, owner) -> str:
    log = plugin(server, "list", user=owner)
    return answer(server, log, lambda t: NAME in t or "plugin" in t or "(builtin)" in t, "list")


def test_install_use_disable_enable_remove_in_a_running_bot(server, bot, example):
    owner = server.owner
    pid = bot.proc.pid
    imagine_works(server, "before any plugin")

    # A stranger (a guild member who is not an owner) may not install anything.
    refused = plugin(server, "install", {"spec": str(example)})
    text = answer(server, refused, lambda t: False, "the refusal")
    assert text == "⚠️ Only the bot's owners can manage plugins.", text
    assert not [c for e in refused.edits for c in e.get("components") or []]

    # The owner sees what pip will install, then confirms with the button.
    install = plugin(server, "install", {"spec": str(example)}, user=owner)
    question = answer(server, install, lambda t: "pip would install" in t, "the plan", 60)
    assert question.startswith(f"**Install `{example}`?** pip would install:"), question
    assert f"`{NAME}" in question and "0.1.0" in question and "← the plugin" in question
    prompt = next(e for e in reversed(install.edits) if e.get("components"))
    buttons = [c for row in prompt["components"] for c in row["components"]]
    assert [b["label"] for b in buttons] == ["Install", "Cancel"]
    # Someone else's click does nothing.
    server.click(install.original, buttons[0]["custom_id"], user=server.user(7001, "mallory"))
    server.click(install.original, buttons[0]["custom_id"], user=owner)
    done = answer(server, install, lambda t: t.startswith("Installed"), "the install", 90)
    assert done.startswith(f"Installed and enabled **{NAME} 0.1.0**"), done
    assert "It provides: Posterize, Vignette, template vignette." in done, done
    assert rows(
        bot.data_dir, "select enabled, version from installed_plugins where distribution=?", NAME
    ) == [(1, "0.1.0")]

    # Usable at once: its node types and template are registered in the bot's process.
    info = plugin(server, "info", {"name": NAME}, user=owner)
    text = answer(server, info, lambda t: t.startswith(f"**{NAME}**"), "the info")
    assert text.startswith(f"**{NAME}** (distribution) — enabled"), text
    assert "node types: Posterize, Vignette" in text and "templates: vignette" in text, text
    assert "error:" not in text
    assert (
        f"🟢 {NAME} 0.1.0 (distribution) enabled [Posterize, Vignette, template vignette]"
        in listed(server, owner)
    )
    imagine_works(server, "with the plugin")

    disable = plugin(server, "disable", {"name": NAME}, user=owner)
    text = answer(server, disable, lambda t: NAME in t, "the disabling")
    assert text == f"⚪ {NAME} 0.1.0 (distribution) disabled", text
    assert f"⚪ {NAME} 0.1.0 (distribution) disabled" in listed(server, owner)
    assert rows(
        bot.data_dir, "select enabled from installed_plugins where distribution=?", NAME
    ) == [(0,)]
    imagine_works(server, "with the plugin disabled")

    enable = plugin(server, "enable", {"name": NAME}, user=owner)
    text = answer(server, enable, lambda t: NAME in t, "the enabling")
    assert text.startswith(
        f"🟢 {NAME} 0.1.0 (distribution) enabled [Posterize, Vignette, template vignette]"
    ), text
    assert f"🟢 {NAME} 0.1.0 (distribution) enabled" in listed(server, owner)

    remove = plugin(server, "remove", {"name": NAME}, user=owner)
    answer(server, remove, lambda t: "Remove" in t, "the question")
    prompt = next(e for e in reversed(remove.edits) if e.get("components"))
    yes = prompt["components"][0]["components"][0]
    assert yes["label"] == "Remove"
    server.click(remove.original, yes["custom_id"], user=owner)
    text = answer(server, remove, lambda t: "removed" in t, "the removal", 60)
    assert text.startswith(f"🗑️ {NAME}") and "removed" in text, text
    assert NAME not in listed(server, owner)
    assert rows(
        bot.data_dir, "select count(*) from installed_plugins where distribution=?", NAME
    ) == [(0,)]
    imagine_works(server, "after the removal")

    actions = rows(
        bot.data_dir,
        "select action, actor_id from audit_log where action like 'plugin.%' order by id",
    )
    assert [a for a, actor in actions if actor == int(owner["id"])] == [
        "plugin.install",
        "plugin.disable",
        "plugin.enable",
        "plugin.remove",
    ], actions
    assert bot.proc.poll() is None and bot.proc.pid == pid  # the same process throughout
