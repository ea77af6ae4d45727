"""``easel bot --backend ray --ray-address ADDR``: the bot is the Ray driver of a local
cluster (started here on CPU, bound to 127.0.0.1); its jobs run in a worker actor it
starts, and results come back through the object store to be recorded and posted."""

from __future__ import annotations

import os
import sqlite3

import pytest

from runner.jobs.ray_backend import wait_until

# Ray binds a single-machine cluster to loopback only when told it is not a real cluster
# (read when ray is first imported; the bot's process inherits it). If ray was imported
# earlier in this session the cluster binds to this machine's address instead: still
# this machine, and the test works the same.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ray = pytest.importorskip("ray", exc_type=ImportError)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def rows(data_dir, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def driver_actors() -> list:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if "easel-driver-" in str(a)]


@pytest.fixture(scope="module")
def ray_address():
    context = ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        namespace="easel-discord-test",
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


def test_the_bot_runs_its_jobs_on_a_ray_cluster(server, make_bot, ray_address):
    bot = make_bot("--backend", "ray", "--ray-address", ray_address)
    log = server.slash("imagine", {"prompt": "a fox on ray --seed 4"})
    message = server.wait_for(
        lambda: next((m for m in server.bot_messages() if m.get("attachments")), None),
        120,
        "the result",
    )
    server.wait_for(lambda: "Done" in log.last_text, 20, "the final status")
    assert message["content"].startswith("<@4242> **a fox on ray** · seed 4")
    assert any("step" in e.get("content", "") for e in log.edits)  # progress came back
    ((status, posted, worker, message_id),) = rows(
        bot.data_dir, "select status, posted, worker, posted_message_id from jobs"
    )
    assert (status, posted, message_id) == ("done", 1, int(message["id"]))
    assert worker.startswith("easel-driver-")  # an actor the bot started on the cluster
    assert driver_actors(), "the bot's worker actor is on the cluster"
    bot.stop()  # a clean stop kills the actors the bot started
    assert bot.proc.returncode == 0, bot.output()[-3000:]
    assert wait_until(lambda: not driver_actors(), 30)
    assert "jobs run on the ray backend" in bot.output()


def test_the_bot_survives_the_loss_of_its_ray_head(server, make_bot):
    """A real head is SIGKILLed under the bot and started again on the same port: the bot
    lives on, a job asked for meanwhile waits, the owners are told once, and the bot
    reconnects by itself and runs it (no restart)."""
    import time

    from tests.helpers.ray_head import RayHead

    head = RayHead().start()
    again = None
    try:
        bot = make_bot(
            "--backend",
            "ray",
            "--ray-address",
            head.address,
            easel_ray_workers="1",
            ray_auth_mode="disabled",
        )
        server.slash("imagine", {"prompt": "before the loss --seed 1"})
        server.wait_for(
            lambda: any(
                "before the loss" in m["content"] and m.get("attachments")
                for m in server.bot_messages()
            ),
            180,
            "the result before the loss",
        )
        head.kill()  # the head's machine is gone, with the worker on it
        waiting = server.slash("imagine", {"prompt": "during the loss --seed 2"})
        server.wait_for(lambda: waiting.edits, 30, "the job to be acknowledged")
        time.sleep(15)
        assert bot.proc.poll() is None, bot.output()[-4000:]
        # The waiting job's own status says why it waits (not only a running job's).
        shown = [edit.get("content") or "" for edit in waiting.edits]
        assert any("unreachable; your job is kept" in text for text in shown), shown
        statuses = rows(
            bot.data_dir,
            "select j.status from jobs j join generations g on g.id = j.generation_id "
            "where g.prompt like 'during the loss%'",
        )
        assert statuses == [("queued",)], statuses
        again = RayHead(port=head.port).start()
        server.wait_for(
            lambda: any(
                "during the loss" in m["content"] and m.get("attachments")
                for m in server.bot_messages()
            ),
            240,
            "the result after the head came back",
        )
        assert bot.proc.poll() is None, bot.output()[-4000:]
        output = bot.output()
        assert output.count("The GPU cluster is unreachable") == 1, output[-4000:]
        assert "WrongClusterID" not in output
        bot.stop()
        assert bot.proc.returncode == 0, bot.output()[-4000:]
    finally:
        head.cleanup()
        if again is not None:
            again.cleanup()
