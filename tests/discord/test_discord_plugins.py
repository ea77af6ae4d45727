"""End to end: an owner installs the example plugin into a running bot (``easel bot`` in its
own process) with ``/plugin install`` from a local path, confirms with the button, and then
disables, enables and removes it, all without a restart; a stranger's install is refused;
the bot keeps answering ``/imagine`` throughout. pip runs for real, offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_discord import FakeDiscord

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


class DiscordWithDMs(FakeDiscord):
    """The stand-in, with direct messages: what the bot sends the owners is in :attr:`dms`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dm_channels: dict[str, int] = {}
        self.dms: list[tuple[str, str]] = []

    def _route(self, method, path, body, files, request):
        parts = path.strip("/").split("/")
        if path == "/users/@me/channels" and method == "POST":
            recipient = str(body["recipient_id"])
            channel = self.dm_channels.setdefault(recipient, next(self.ids))
            user = self.owner if recipient == self.owner["id"] else self.user(int(recipient))
            return self._json(
                {"id": str(channel), "type": 1, "recipients": [user], "last_message_id": None}
            )
        if len(parts) == 2 and parts[0] == "users" and parts[1] != "@me" and method == "GET":
            if parts[1] == self.owner["id"]:
                return self._json(self.owner)
            return self._json(self.user(int(parts[1])))
        dm_of = {str(c): u for u, c in self.dm_channels.items()}
        if parts[0] == "channels" and len(parts) == 3 and parts[1] in dm_of and method == "POST":
            with self._cond:
                self.dms.append((dm_of[parts[1]], body.get("content") or ""))
            message = self.message(author=self.bot_user, content=body.get("content") or "")
            message["channel_id"] = parts[1]
            message.pop("guild_id", None)
            return self._json(message)
        return super()._route(method, path, body, files, request)

    def dms_to(self, user: dict) -> list[str]:
        with self._cond:
            return [text for who, text in self.dms if who == user["id"]]


@pytest.fixture(scope="module")
def server():
    fake = DiscordWithDMs().start()
    yield fake
    fake.stop()


HOOK_TIMEOUT_S = 12

BOT_ENV = {
    "easel_plugin_allow_urls": "true",
    "easel_plugin_pip_args": "--no-index --no-build-isolation",
    "easel_plugin_pip_timeout_s": "120",
    "easel_plugin_hook_timeout_s": str(HOOK_TIMEOUT_S),
}


@pytest.fixture(scope="module")
def bot(make_bot):
    return make_bot(**BOT_ENV)


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


# -- faulty plugins: a hanging or raising prompt checker, a drop-in that exits at import --

SLEEPY = """
import time
from runner import hookimpl

@hookimpl
def easel_check_prompt(prompt, negative, user_id, nsfw_allowed):
    if user_id == 7100:
        time.sleep(3600)
    return None
"""

GRUMPY = """
from runner import hookimpl

@hookimpl
def easel_check_prompt(prompt, negative, user_id, nsfw_allowed):
    if "explode" in prompt:
        raise RuntimeError("moderation backend down")
    return None
"""

NEUTRAL = (
    "⚠️ The prompt check is not working right now, so the request was not queued; try again later."
)


def drop_in(bot, name: str, code: str) -> None:
    folder = bot.data_dir / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(code))


def dm_about(server, what: str, timeout: float = 30) -> str:
    """The owner's direct message that mentions ``what``."""
    server.wait_for(
        lambda: any(what in t for t in server.dms_to(server.owner)), timeout, f"a DM on {what}"
    )
    return next(t for t in server.dms_to(server.owner) if what in t)


def test_a_hanging_prompt_check_freezes_nobody(server, bot):
    drop_in(bot, "sleepy", SLEEPY)
    drop_in(bot, "grumpy", GRUMPY)
    reload = plugin(server, "reload", user=server.owner)
    text = answer(server, reload, lambda t: "sleepy" in t and "grumpy" in t, "the reload", 60)
    assert "⚠️" not in text, text

    # Bob's prompt check hangs (until the hook time limit)...
    started = time.monotonic()
    bob = server.slash(
        "imagine", {"prompt": "a calm lake --seed 1", "steps": 2}, user=server.user(7100, "bob")
    )
    time.sleep(1.0)
    # ... and Alice is answered at once, and gets her image, while it hangs.
    imagine_works(server, "a busy harbour")
    assert time.monotonic() - started < HOOK_TIMEOUT_S, "Alice waited for Bob's hung check"
    assert bob.ack_seconds is not None and bob.ack_seconds < 3
    assert not bob.last_text.startswith(("⚠️", "Done")), bob.last_text

    # Bob is told one neutral sentence once the check gives up; the owners get the details.
    text = answer(server, bob, lambda t: False, "Bob's refusal", HOOK_TIMEOUT_S + 30)
    assert text == NEUTRAL, text
    told = dm_about(server, "sleepy")
    assert "was disabled" in told and f"did not return within {HOOK_TIMEOUT_S} s" in told, told
    imagine_works(server, "after the hung check")


def test_a_raising_prompt_check_tells_users_one_neutral_sentence(server, bot):
    log = server.slash("imagine", {"prompt": "explode a star --seed 2", "steps": 2})
    text = answer(server, log, lambda t: False, "the refusal")
    assert text == NEUTRAL, text
    for internal in ("grumpy", "RuntimeError", "backend", ".py", "easel_check_prompt"):
        assert internal not in text, text
    told = dm_about(server, "grumpy")
    assert "RuntimeError: moderation backend down (at grumpy.py:" in told, told
    assert "easel_check_prompt" in told and "stays enabled" in told, told
    imagine_works(server, "a quiet star")


EXITS_AT_IMPORT = """
import os
os._exit(1)
"""


def test_a_dropin_that_exits_at_import_is_disabled_at_the_next_start(server, bot, make_bot):
    bot.stop()
    drop_in(bot, "suicidal", EXITS_AT_IMPORT)
    # The first start dies importing it...
    with pytest.raises(AssertionError, match="the bot exited"):
        make_bot(**BOT_ENV)
    # ... the next one disables it, tells the owners, and serves.
    again = make_bot(**BOT_ENV)
    told = dm_about(server, "suicidal", 60)
    assert "while it was being imported" in told, told
    imagine_works(server, "after the crash")
    [(enabled, error)] = rows(
        bot.data_dir,
        "select enabled, error from installed_plugins where distribution=?",
        "suicidal",
    )
    assert enabled == 0 and "while it was being imported" in error, error
    easel = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"
    doctor = subprocess.run(
        [easel, "doctor", "--no-settings"],
        env=again.env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=bot.data_dir.parent,
        check=False,
    )
    assert "plugin suicidal was disabled by easel" in doctor.stdout, doctor.stdout
    assert again.proc.poll() is None
    assert os.path.isdir(bot.data_dir / ".plugin-breadcrumbs")
    assert not list((bot.data_dir / ".plugin-breadcrumbs").glob("*.json"))
