"""Fault run: a real ``easel bot`` against the loopback Discord stand-in, SIGKILLed again
and again at random moments while users send jobs; at the end, count what was lost,
posted twice or never posted, from the stand-in's channel and the database.

    python bench/fault_run.py                       # 50 jobs, 3 users, 14 kills
    python bench/fault_run.py --jobs 10 --kills 3 --seed 2

Kill moments, drawn at random for each kill: a random delay after the bot connects,
while a job samples, just after a job was accepted, right after a result reached the
channel (the bot may not have recorded it yet), and with the channel's answer held
(the message exists, the bot never hears back). Before each restart the stand-in
forgets every nonce (Discord remembers one a few minutes only), so a result posted
twice cannot hide behind ``enforce_nonce``. Interactions reach the bot only while it
is connected (a slash command sent to a dead bot is Discord's to refuse), and each is
answered ("Job #N") before the kill, except for the kills just after an acceptance.

A job is *lost* if the user saw it accepted ("Job #N") but the database has no such job,
or it never finished; *doubled* if the channel holds more than one message of it (the
stand-in records each send's nonce for this count); *never posted* if it finished but no
message of it is in the channel or the database does not say posted as that message.
``statuses_not_final`` counts private statuses that do not end saying where the job went
(done with a link, failed or cancelled), e.g. left "Queued" by a killed run.
Prints one JSON line with the figures; exit code 1 when any is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "discord"))

from fake_discord import FakeDiscord  # noqa: E402

EASEL = shutil.which("easel", path=str(Path(sys.executable).parent)) or "easel"
KINDS = ("delay", "sampling", "accepted", "after_post", "held_post")
JOB = re.compile(r"Job #(\d+)")


class Bot:
    """``easel bot`` in a subprocess on one data folder, started and killed again."""

    def __init__(self, server: FakeDiscord, root: Path, cache: Path, env: dict[str, str]):
        self.server = server
        self.root = root
        self.data_dir = root / "data"
        self.cache = cache
        self.extra = env
        self.log = root / "bot.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "DISCORD_"))}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(
            {
                "DISCORD_TOKEN": self.server.token,
                "DISCORD_API_BASE": self.server.api_base,
                "DISCORD_GATEWAY_URL": self.server.gateway_url,
                "EASEL_CONFIG": os.devnull,
                "EASEL_DATA_DIR": str(self.data_dir),
                "EASEL_CACHE_FOLDER": str(self.cache),
                "EASEL_DEFAULT_WIDTH": "64",
                "EASEL_DEFAULT_HEIGHT": "64",
                "EASEL_PROGRESS_INTERVAL_S": "0.2",
                "EASEL_GUILD_READY_TIMEOUT": "0.2",
                "EASEL_OWNER_IDS": self.server.owner["id"],
                "EASEL_THREADS": "1",
                "EASEL_MAX_QUEUED_PER_USER": "100",
                "EASEL_COOLDOWN_S": "0",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TRANSFORMERS_VERBOSITY": "error",
            }
        )
        env.update(self.extra)
        return env

    def start(self) -> None:
        identified = self.server.identified
        with open(self.log, "a") as out:
            out.write(f"\n===== start {self.starts + 1} =====\n")
            out.flush()
            self.proc = subprocess.Popen(
                [EASEL, "-v", "bot"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        self.starts += 1
        self.server.wait_for(
            lambda: self.server.identified > identified or self.proc.poll() is not None,
            180,
            "the bot to connect",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"the bot exited at start; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no clean shutdown of any kind
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def rows(data_dir: Path, sql: str, *args) -> list[tuple]:
    path = data_dir / "easel.sqlite3"
    if not path.exists():
        return []
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def job_ids_seen(logs) -> set[int]:
    """Jobs whose status told the user they were accepted ("Job #N")."""
    seen = set()
    for log in logs:
        for body in [*log.edits, *log.followups]:
            match = JOB.search(body.get("content") or "")
            if match:
                seen.add(int(match[1]))
    return seen


def posts_by_job(server: FakeDiscord) -> Counter:
    """How many channel messages the bot created for each job (by the nonce each send
    carried: the stand-in's own record, not its nonce memory)."""
    counts: Counter = Counter()
    for message in server.bot_messages():
        nonce = (message.get("_sent") or {}).get("nonce") or ""
        if nonce.startswith("easel-job-"):
            counts[int(nonce.removeprefix("easel-job-"))] += 1
    return counts


def run(
    *,
    jobs: int = 50,
    users: int = 3,
    kills: int = 14,
    seed: int = 1,
    root: Path | None = None,
    cache: Path | None = None,
    settle_s: float = 600,
    moments: list[str] | None = None,
    say=print,
) -> dict:
    """Run the fault run; returns the figures (see the module's docstring). ``moments``
    names the kinds of the first kills (the rest are drawn at random)."""
    planned = list(moments or [])
    rng = random.Random(seed)
    root = Path(root or tempfile.mkdtemp(prefix="easel-fault-"))
    root.mkdir(parents=True, exist_ok=True)
    cache = Path(cache or root / "cache")
    server = FakeDiscord().start()
    bot = Bot(server, root, cache, {})
    people = [server.user(7100 + i, f"user{i}") for i in range(users)]
    logs = []
    kinds: Counter = Counter()
    started = time.monotonic()
    try:
        bot.start()
        sent = 0
        killed = 0
        while killed < kills:
            # A few submissions while it is up, then a kill at a moment of this kind.
            kind = planned.pop(0) if planned else rng.choice(KINDS)
            burst = min(jobs - sent, rng.randint(1, 5))
            for _ in range(burst):
                user = people[sent % users]
                steps = rng.choice((2, 3, 4, 6, 12))
                prompt = f"fault run {sent} --steps {steps} --seed {sent + 1}"
                logs.append(server.slash("imagine", {"prompt": prompt}, user=user))
                sent += 1
                if kind != "accepted":  # users see "Job #N" before the kill comes
                    accepted(server, logs[-1])
            try:
                moment(kind, server, bot, logs, rng)
            except TimeoutError:
                kind += " (timed out)"
            if kind.startswith("held_post"):
                bot.kill()
                server.release_posts()
            bot.kill()
            killed += 1
            kinds[kind] += 1
            say(f"kill {killed}/{kills} ({kind}); {sent} job(s) sent")
            server.forget_nonces()  # as if down longer than Discord remembers nonces
            bot.start()
        while sent < jobs:  # the rest, without kills
            user = people[sent % users]
            logs.append(
                server.slash(
                    "imagine",
                    {"prompt": f"fault run {sent} --steps 3 --seed {sent + 1}"},
                    user=user,
                )
            )
            sent += 1
            time.sleep(rng.uniform(0, 0.3))

        def settled() -> bool:
            left = rows(
                bot.data_dir,
                "select count(*) from jobs where status in ('queued','running') or posted = 0",
            )
            seen = job_ids_seen(logs)
            known = {r[0] for r in rows(bot.data_dir, "select id from jobs")}
            return bool(left) and left[0][0] == 0 and seen <= known

        try:
            server.wait_for(settled, settle_s, "every job to finish and be posted")
        except TimeoutError:
            say("not settled in time; counting as it is")
        time.sleep(2)  # anything posted late would show now
    finally:
        bot.stop()
        figures = count(server, bot, logs)
        figures.update(
            {
                "jobs_sent": len(logs),
                "users": users,
                "kills": sum(kinds.values()),
                "kill_moments": dict(kinds),
                "starts": bot.starts,
                "seconds": round(time.monotonic() - started, 1),
                "data": str(root),
            }
        )
        server.stop()
    return figures


def accepted(server: FakeDiscord, log, timeout: float = 60) -> None:
    """Wait until the interaction's status says its job was accepted ("Job #N")."""
    try:
        server.wait_for(lambda: JOB.search(log.last_text), timeout, "the job to be accepted")
    except TimeoutError:
        pass  # counted as unanswered


def moment(kind: str, server: FakeDiscord, bot: Bot, logs, rng: random.Random) -> None:
    """Wait for a moment of ``kind`` to kill the bot at."""
    if kind == "delay":
        time.sleep(rng.uniform(0.0, 4.0))
    elif kind == "sampling":
        server.wait_for(
            lambda: any("Generating: step" in log.last_text for log in logs[-5:]),
            30,
            "a job to sample",
        )
    elif kind == "accepted":
        last = logs[-1]
        server.wait_for(lambda: JOB.search(last.last_text), 60, "a job to be accepted")
    elif kind == "after_post":
        before = len(server.bot_messages())
        server.wait_for(lambda: len(server.bot_messages()) > before, 90, "a result to be posted")
    elif kind == "held_post":
        server.hold_posts()
        before = len(server.bot_messages())
        server.wait_for(
            lambda: len(server.bot_messages()) > before, 90, "a result to reach the channel"
        )


def count(server: FakeDiscord, bot: Bot, logs) -> dict:
    seen = job_ids_seen(logs)
    table = {
        r[0]: r[1:]
        for r in rows(bot.data_dir, "select id, status, posted, posted_message_id from jobs")
    }
    posts = posts_by_job(server)
    message_ids = {}
    for message in server.bot_messages():
        nonce = (message.get("_sent") or {}).get("nonce") or ""
        if nonce.startswith("easel-job-"):
            message_ids.setdefault(int(nonce.removeprefix("easel-job-")), int(message["id"]))
    lost = sorted(
        (seen - set(table)) | {j for j, (status, *_) in table.items() if status not in FINISHED}
    )
    doubled = sorted(j for j, n in posts.items() if n > 1)
    never = sorted(
        j
        for j, (status, posted, message_id) in table.items()
        if status in ("done", "failed")
        and (not posted or posts[j] == 0 or message_ids.get(j) != message_id)
    )
    final = ("✅", "⚠️", "🛑")
    stale = [
        log for log in logs if JOB.search(log.last_text) and not log.last_text.startswith(final)
    ]
    return {
        "statuses_not_final": len(stale),
        "interactions_unanswered": len(logs) - len(seen),
        "jobs_accepted": len(seen),
        "jobs_stored": len(table),
        "done": sum(1 for s, *_ in table.values() if s == "done"),
        "failed": sum(1 for s, *_ in table.values() if s == "failed"),
        "cancelled": sum(1 for s, *_ in table.values() if s == "cancelled"),
        "lost": len(lost),
        "doubled": len(doubled),
        "never_posted": len(never),
        "lost_ids": lost,
        "doubled_ids": doubled,
        "never_posted_ids": never,
        "channel_messages": len(server.bot_messages()),
    }


FINISHED = ("done", "failed", "cancelled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--kills", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", type=Path, default=None, help="data folder (a new temp one)")
    parser.add_argument("--cache", type=Path, default=None, help="model cache folder")
    args = parser.parse_args(argv)
    figures = run(
        jobs=args.jobs,
        users=args.users,
        kills=args.kills,
        seed=args.seed,
        root=args.root,
        cache=args.cache,
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(json.dumps(figures))
    return 0 if figures["lost"] == figures["doubled"] == figures["never_posted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
