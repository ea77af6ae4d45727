"""A real Ray head for tests: ``ray start --head --block`` in its own process group, bound
to loopback, with its own HOME and temp folder (so ~/.ray/auth_token of this machine is
neither read nor written), optionally with token authentication on. ``stop()`` ends every
process of the group (the GCS, the raylet and its workers), also when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without Ray's and easel's settings, with ``home`` as
    HOME and Ray bound to loopback, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "EASEL_", "DISCORD_"))}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


class RayHead:
    def __init__(self, *, token: str | None = None, num_cpus: int = 2, port: int | None = None):
        # Short paths: Ray's unix sockets live under the temp folder (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="eh", dir="/tmp"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.token = token
        self.num_cpus = num_cpus
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "head.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        if self.token:
            path = self.root / "token"
            path.write_text(self.token)
            return clean_env(self.home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
        return clean_env(self.home, RAY_AUTH_MODE="disabled")

    def start(self, timeout: float = 90) -> RayHead:
        args = [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray'}",
            "--object-store-memory=100000000",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                args, env=self.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start failed:\n{self.log.read_text()[-3000:]}")
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"the Ray head did not start:\n{self.log.read_text()[-3000:]}")

    def _session(self) -> list[int]:
        """Every process of the head's session (Ray's workers leave its process group)."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # the session id
                pids.append(int(entry.name))
        return pids

    def _signal_all(self, sig: int) -> None:
        for pid in self._session():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL every process of the head, its workers included (a crash of the head
        machine)."""
        if self.proc is None:
            return
        self._signal_all(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal_all(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        self._signal_all(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
