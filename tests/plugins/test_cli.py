"""``easel plugins ...``: the owners' /plugin commands from the shell (click's runner, in
process; pip still runs for real)."""

from __future__ import annotations

import json

NAME = "easel-plugin-example"


def test_plugins_commands(easel, database, offline_builds, monkeypatch, example):
    declined = easel("plugins", "install", str(example), input="n\n")
    assert declined.exit_code == 0
    assert f"{NAME} 0.1.0" in declined.output and "nothing installed" in declined.output

    installed = easel("plugins", "install", "--yes", str(example))
    assert installed.exit_code == 0, installed.output
    assert (
        f"{NAME} 0.1.0 (distribution) enabled [Posterize, Vignette, template vignette]"
        in installed.output
    )

    listed = json.loads(easel("plugins", "list", "--json").output)
    by_name = {p["name"]: p for p in listed}
    assert by_name[NAME]["status"] == "enabled" and by_name[NAME]["version"] == "0.1.0"
    assert by_name["plugins.core.sampling"]["kind"] == "builtin"

    info = json.loads(easel("plugins", "info", "easel_plugin_example", "--json").output)
    assert info["source"] == str(example) and len(info["wheel_sha256"]) == 64

    assert "disabled" in easel("plugins", "disable", NAME).output
    enabled = easel("plugins", "enable", NAME)
    assert enabled.exit_code == 0 and f"{NAME} 0.1.0 (distribution) enabled" in enabled.output
    assert easel("plugins", "reload").exit_code == 0

    removed = easel("plugins", "remove", "--yes", NAME)
    assert removed.exit_code == 0 and "removed" in removed.output
    assert easel("plugins", "info", NAME).exit_code == 2

    audit = json.loads(easel("plugins", "audit", "--json").output)
    assert [e["action"] for e in reversed(audit)] == [
        "plugin.declined",
        "plugin.install",
        "plugin.disable",
        "plugin.enable",
        "plugin.reload",
        "plugin.remove",
    ]
    assert all(e["actor"] == 0 for e in audit)

    monkeypatch.setenv("EASEL_PLUGIN_INSTALLS_ENABLED", "false")
    refused = easel("plugins", "install", "--yes", str(example))
    assert refused.exit_code == 2 and "switched off" in refused.output
