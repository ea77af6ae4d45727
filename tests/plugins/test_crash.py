"""A plugin that ends the whole process (``os._exit`` at import or in a hook) leaves a
breadcrumb in the data folder; the next start disables it with the reason instead of
crash-looping, the owners hear of it, and ``easel doctor`` shows it. Real processes: the
``easel`` command line, killed for real by the plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_testlib import OWNER, write_dropin

from db import plugins as db_plugins

pytestmark = pytest.mark.slow

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"

HEALTHY = """
from runner import hookimpl

@hookimpl
def easel_check_prompt(prompt, negative, user_id, nsfw_allowed):
    return None
"""

EXITS_AT_IMPORT = """
import os
os._exit(1)
"""

EXITS_IN_A_HOOK = """
import os
from runner import hookimpl

@hookimpl
def easel_startup(env):
    os._exit(3)
"""


def easel(settings, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "DISCORD_"))}
    env.update(
        EASEL_CONFIG=os.devnull,
        EASEL_DATA_DIR=str(settings.data_dir),
        EASEL_CACHE_FOLDER=str(settings.cache_folder),
        EASEL_OWNER_IDS=str(OWNER),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return subprocess.run(
        [EASEL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("code", "rc", "doing"),
    [
        (EXITS_AT_IMPORT, 1, "while it was being imported"),
        (EXITS_IN_A_HOOK, 3, "in its hook easel_startup"),
    ],
    ids=["at-import", "in-a-hook"],
)
def test_a_plugin_that_ends_the_process_is_disabled_at_the_next_start(
    plugin_settings, database, make_runtime, code, rc, doing
):
    write_dropin(plugin_settings, "healthy", HEALTHY)
    write_dropin(plugin_settings, "suicidal", code)

    # The first start dies in the plugin, with nothing on stdout or stderr...
    first = easel(plugin_settings, "plugins", "reload")
    assert first.returncode == rc, first
    crumbs = list((plugin_settings.data_dir / ".plugin-breadcrumbs").glob("*.json"))
    assert len(crumbs) == 1 and "suicidal" in crumbs[0].name, crumbs
    # ... but doctor knows which plugin it was (it imports no plugin itself).
    doctor = easel(plugin_settings, "doctor", "--no-settings")
    assert "plugin suicidal ended the process" in doctor.stdout, doctor.stdout
    assert doing in doctor.stdout and doctor.returncode == 1, doctor.stdout

    # The next start disables it with the reason and serves with the rest.
    second = easel(plugin_settings, "plugins", "reload")
    assert "suicidal (dropin) failed" in second.stdout, second
    assert "healthy (dropin) enabled" in second.stdout, second
    assert not list((plugin_settings.data_dir / ".plugin-breadcrumbs").glob("*.json"))
    row = database.read_sync(db_plugins.get_plugin, "suicidal")
    assert row is not None and not row.enabled and doing in row.error, row

    # Later starts leave it off (no crash loop); the owners hear why at the bot's start.
    runtime = make_runtime()
    events = []
    runtime.service.add_listener(events.append)
    status = runtime.service.info(OWNER, "suicidal")
    assert status.status == "failed" and doing in status.error, status
    assert runtime.service.info(OWNER, "healthy").status == "enabled"
    doctor = easel(plugin_settings, "doctor", "--no-settings")
    assert "plugin suicidal was disabled by easel" in doctor.stdout, doctor.stdout
    assert doing in doctor.stdout
    actions = [e.action for e in runtime.service.audit(OWNER)]
    assert "plugin.failed" in actions, actions


def test_a_hook_that_returns_leaves_no_breadcrumb(plugin_settings, database, make_runtime):
    write_dropin(plugin_settings, "healthy", HEALTHY)
    runtime = make_runtime()
    runtime.env.pm.hook.easel_check_prompt(prompt="x", negative="", user_id=1, nsfw_allowed=False)
    folder = plugin_settings.data_dir / ".plugin-breadcrumbs"
    assert folder.is_dir() and not list(folder.glob("*.json"))
