"""Fixtures for the bot's tests: the stand-in Discord server and the real bot, started
with ``easel bot`` in its own process and pointed at it over loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fake_discord import FakeDiscord  # noqa: E402

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"


class BotProcess:
    """``easel bot`` in a subprocess; its output goes to ``log`` for failure reports."""

    def __init__(
        self, server: FakeDiscord, data_dir: Path, cache_folder: Path, extra_env: dict[str, str]
    ):
        self.server = server
        self.data_dir = data_dir
        self.cache_folder = cache_folder
        self.extra_env = extra_env
        self.log = data_dir.parent / "bot.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "DISCORD_"))}
        env.update(
            {
                "DISCORD_TOKEN": self.server.token,
                "DISCORD_API_BASE": self.server.api_base,
                "DISCORD_GATEWAY_URL": self.server.gateway_url,
                "EASEL_CONFIG": os.devnull,
                "EASEL_DATA_DIR": str(self.data_dir),
                "EASEL_CACHE_FOLDER": str(self.cache_folder),
                "EASEL_DEFAULT_WIDTH": "64",
                "EASEL_DEFAULT_HEIGHT": "64",
                "EASEL_DEFAULT_STEPS": "2",
                "EASEL_PROGRESS_INTERVAL_S": "0.2",
                "EASEL_GUILD_READY_TIMEOUT": "0.2",
                "EASEL_OWNER_IDS": self.server.owner["id"],
                # One torch thread leaves a core for the bot's event loop and the stand-in server.
                "EASEL_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, *args: str) -> BotProcess:
        identified = self.server.identified
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [EASEL, "-v", "bot", *args],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
            )
        try:
            self.server.wait_for(
                lambda: self.server.identified > identified or self.proc.poll() is not None,
                90,
                "the bot to connect",
            )
        except TimeoutError:
            raise AssertionError(f"the bot did not connect:\n{self.output()}") from None
        assert self.proc.poll() is None, f"the bot exited:\n{self.output()}"
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture(scope="module")
def server():
    """A stand-in Discord server for a module's tests."""
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def make_bot(server, tmp_path_factory, cache_folder):
    """A factory of bot processes sharing one data folder (so a restart keeps the data)."""
    root = tmp_path_factory.mktemp("bot")
    made: list[BotProcess] = []

    def factory(*args: str, **extra_env: str) -> BotProcess:
        bot = BotProcess(
            server, root / "data", cache_folder, {k.upper(): v for k, v in extra_env.items()}
        )
        made.append(bot)
        return bot.start(*args)

    yield factory
    for bot in made:
        bot.stop()
