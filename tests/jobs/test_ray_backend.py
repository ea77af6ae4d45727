"""The Ray backend on a local Ray cluster on CPU: two worker actors run jobs, stream
progress, honour cancellation, receive LoRA files and send images back through the
object store; killing a worker's process mid-job sends its job to the other worker,
with nothing lost and nothing done twice."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", exc_type=ImportError)

from PIL import Image  # noqa: E402

from runner.jobs import JobRunner, LocalWorker, MemoryStore, make_job  # noqa: E402
from runner.jobs.ray_backend import RayBackend, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
        namespace="easel-test",
    )
    yield
    ray.shutdown()


def _write_lora(path, cache_folder) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from runner.models.tiny import tiny_model_dir

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir(cache_folder), local_files_only=True
    )
    torch.manual_seed(3)
    pipe.unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=get_peft_model_state_dict(pipe.unet), weight_name=path.name
    )


@pytest.fixture(scope="module")
def cluster_runner(ray_cluster, jobs_env, tmp_path_factory, cache_folder):
    """A runner with two Ray workers. The workers get their own data folder (no models
    folder of their own): LoRAs reach them only through the object store."""
    from runner.settings import EngineSettings

    _write_lora(jobs_env.settings.models_root / "loras" / "style.safetensors", cache_folder)
    worker_settings = EngineSettings(
        data_dir=tmp_path_factory.mktemp("ray-workers"), cache_folder=cache_folder, threads=1
    )
    store = MemoryStore()
    runner = JobRunner(store=store, max_batch=2)
    backend = RayBackend(
        worker_settings,
        workers=2,
        num_gpus=0,
        replace_lost=False,
        lora_resolver=jobs_env.models.lora_path,
    )
    workers = backend.start(runner)
    runner.start()
    assert len(workers) == 2 and len({w.pid for w in workers}) == 2
    yield runner, backend, store
    runner.stop(timeout=10)
    backend.stop()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_ray_workers_run_jobs_and_stream_progress(cluster_runner, make_workflow, jobs_env):
    runner, backend, store = cluster_runner
    progress: dict[str, int] = {}
    remove = runner.bus.add_listener(
        lambda e: e.type == "progress" and progress.__setitem__(e.job_id, e.step)
    )
    workflows = {f"r{i}": make_workflow(f"ray job {i}", 40 + i, steps=4) for i in range(4)}
    workflows["lora"] = make_workflow("with a lora", 7, loras=[("style.safetensors", 0.8)])
    try:
        for i, (job_id, wf) in enumerate(workflows.items()):
            runner.submit(make_job(job_id, wf, user_id=i))
        assert runner.wait_idle(120)
    finally:
        remove()
    for job_id in workflows:
        outcome = store.outcomes[job_id]
        assert outcome.status == "done", outcome.error
        assert outcome.worker in backend.workers and outcome.images[0].data.startswith(b"\x89PNG")
        assert outcome.images[0].path is None  # bytes through the object store, no shared path
        assert progress[job_id] == (4 if job_id != "lora" else 3)
    assert {store.outcomes[j].worker for j in workflows} == set(
        backend.workers
    )  # both workers worked
    # The same image as a local run of the same workflow on this machine.
    local = MemoryStore()
    jobs_env.node_cache.clear()
    with JobRunner([LocalWorker(jobs_env)], store=local) as here:
        here.submit(make_job("lora-here", workflows["lora"], user_id=1))
        assert here.wait_idle(60)
    a, b = (
        _pixels(store.outcomes["lora"].images[0].data),
        _pixels(local.outcomes["lora-here"].images[0].data),
    )
    assert np.abs(a - b).max() <= 1
    assert any("style.safetensors" in w.held["loras"] for w in backend.workers.values())


def test_cancelling_a_job_running_on_a_ray_worker(cluster_runner, make_workflow):
    runner, _, store = cluster_runner
    cancelled = threading.Event()

    def listener(event):
        if (
            event.job_id == "rc"
            and event.type == "progress"
            and event.step == 2
            and not cancelled.is_set()
        ):
            cancelled.set()
            runner.cancel("rc")

    remove = runner.bus.add_listener(listener)
    try:
        runner.submit(make_job("rc", make_workflow("cancel me", 3, steps=120), user_id=1))
        assert runner.wait_idle(120)
    finally:
        remove()
    assert store.outcomes["rc"].status == "cancelled" and store.outcomes["rc"].images == []


def test_a_killed_worker_hands_its_job_to_the_other(cluster_runner, make_workflow):
    runner, backend, store = cluster_runner
    seen = threading.Event()
    remove = runner.bus.add_listener(
        lambda e: e.job_id == "kill" and e.type == "progress" and seen.set()
    )
    try:
        runner.submit(make_job("kill", make_workflow("survive", 9, steps=120), user_id=5))
        runner.submit(
            make_job("bystander", make_workflow("bystander", 10, steps=3, width=128), user_id=6)
        )
        assert seen.wait(60)
        victim = next(r.worker for r in runner.running() if r.job.job_id == "kill")
        os.kill(backend.workers[victim].pid, signal.SIGKILL)
        assert runner.wait_idle(120)
    finally:
        remove()
    outcome = store.outcomes["kill"]
    assert outcome.status == "done" and outcome.worker != victim and len(outcome.images) == 1
    assert store.starts["kill"] == [victim, outcome.worker]  # started twice, finished once
    assert len(store.requeues["kill"]) == 1 and victim in store.requeues["kill"][0]
    assert store.outcomes["bystander"].status == "done"
    assert victim not in backend.workers and len(runner.workers) == 1


def test_easel_worker_and_easel_generate_on_ray(
    ray_cluster, make_workflow, tmp_path, cache_folder, monkeypatch
):
    from click.testing import CliRunner

    from bot.cli import cli
    from runner.settings import EngineSettings

    for key, value in {
        "EASEL_DATA_DIR": str(tmp_path / "cli-data"),
        "EASEL_CACHE_FOLDER": str(cache_folder),
        "EASEL_CONFIG": os.devnull,
        "EASEL_RAY_NAMESPACE": "easel-test",
        "EASEL_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    started = runner.invoke(cli, ["worker", "--ray-address", "auto", "--workers", "1", "--detach"])
    assert started.exit_code == 0, started.output
    assert "ready" in started.output
    names = [n for n in ray.util.list_named_actors() if n.startswith("easel-worker-")]
    try:
        out = tmp_path / "fox.png"
        args = [
            "generate",
            "a fox",
            "--seed",
            "5",
            "--steps",
            "3",
            "--width",
            "64",
            "--height",
            "64",
            "--backend",
            "ray",
            "--ray-address",
            "auto",
            "--out",
            str(out),
        ]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(b"\x89PNG") and Image.open(out).size == (64, 64)

        # A driver that starts no workers of its own finds the `easel worker` actors.
        store = MemoryStore()
        jobs = JobRunner(store=store)
        backend = RayBackend(
            EngineSettings(data_dir=tmp_path / "d"), namespace="easel-test", workers=0
        )
        try:
            assert [w.name for w in backend.start(jobs)] == names
            jobs.start()
            jobs.submit(make_job("named", make_workflow("named worker", 1), user_id=1))
            assert jobs.wait_idle(60) and store.outcomes["named"].status == "done"
            assert store.outcomes["named"].worker == names[0]
        finally:
            jobs.stop(timeout=10)
            backend.stop()
    finally:
        for name in names:
            ray.kill(ray.get_actor(name))
    assert wait_until(
        lambda: not [n for n in ray.util.list_named_actors() if n.startswith("easel-worker-")], 10
    )


# A real `ray start --head` and real `easel worker` processes -------------------------------
TOKEN = "easel-test-token-0123456789abcdef"


class WorkerProcess:
    """``easel worker`` in its own process group (killed at the end whatever happens)."""

    def __init__(self, head, data_dir, cache_folder, *args: str, **env: str):
        from tests.helpers.ray_head import clean_env

        self.log = head.root / f"worker-{len(list(head.root.glob('worker-*')))}.log"
        easel = str(Path(sys.executable).parent / "easel")
        environment = clean_env(
            head.root / "worker-home",
            EASEL_CONFIG=os.devnull,
            EASEL_DATA_DIR=str(data_dir),
            EASEL_CACHE_FOLDER=str(cache_folder),
            EASEL_THREADS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=os.environ.get("PYTHONPATH", ""),
            **env,
        )
        (head.root / "worker-home").mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [easel, "worker", "--ray-address", head.address, *args],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        if not wait_until(
            lambda: text in self.output() or self.proc.poll() is not None, timeout, 0.3
        ):
            raise AssertionError(f"no {text!r} from easel worker:\n{self.output()[-3000:]}")
        assert text in self.output(), self.output()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _named_workers(head) -> list[str]:
    """The easel worker actors alive on ``head``'s cluster, asked by a separate driver."""
    from tests.helpers.ray_head import clean_env

    code = (
        "import json, ray\n"
        f"ray.init(address={head.address!r}, log_to_driver=False)\n"
        "print('NAMES', json.dumps(sorted(a['name'] for a in "
        "ray.util.list_named_actors(all_namespaces=True) if a['name'].startswith('easel-worker-'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(head.root / "home", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("NAMES ")), None)
    assert line, result.stdout + result.stderr[-3000:]
    return json.loads(line[6:])


@pytest.fixture
def auth_head():
    from tests.helpers.ray_head import RayHead

    head = RayHead(token=TOKEN)
    try:
        yield head.start()
    finally:
        head.cleanup()


def test_easel_worker_on_a_head_with_token_authentication(auth_head, tmp_path, cache_folder):
    """Ray 2.60's token authentication: without the token, or with a wrong one, `easel
    worker` says so in one sentence at once (not a minute of InvalidAuthToken and then
    "no Ray cluster"); with the head's token in RAY_AUTH_TOKEN it serves."""
    from runner.models.tiny import tiny_model_dir

    tiny_model_dir(cache_folder)
    started = []
    try:
        for env, expected in (
            ({}, "requires an authentication token"),
            (
                {"RAY_AUTH_TOKEN": "not-the-token-0000000000000000"},
                "rejected the authentication token",
            ),
        ):
            worker = WorkerProcess(auth_head, tmp_path / "data", cache_folder, **env)
            started.append(worker)
            worker.proc.wait(60)
            out = worker.output()
            assert worker.proc.returncode == 1, out[-3000:]
            assert (
                expected in out and "RAY_AUTH_TOKEN" in out and "RAY_AUTH_MODE=disabled" in out
            ), out
            # One line logged by Ray's own probe at most, not a minute of retries.
            assert "Traceback" not in out and out.count("InvalidAuthToken") <= 1, out
        good = WorkerProcess(
            auth_head, tmp_path / "data", cache_folder, "--workers", "1", RAY_AUTH_TOKEN=TOKEN
        )
        started.append(good)
        good.wait_for("serving jobs", 180)
        assert len(_named_workers(auth_head)) == 1
    finally:
        for worker in started:
            worker.kill()


def test_two_easel_workers_on_one_machine_have_their_own_actors(auth_head, tmp_path, cache_folder):
    """Two `easel worker` on one machine: two actors (not one shared by name); Ctrl-C on
    one stops only its own, the other keeps serving."""
    from runner.models.tiny import tiny_model_dir

    tiny_model_dir(cache_folder)
    first = WorkerProcess(
        auth_head,
        tmp_path / "a",
        cache_folder,
        "--workers",
        "1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=TOKEN,
    )
    second = WorkerProcess(
        auth_head,
        tmp_path / "b",
        cache_folder,
        "--workers",
        "1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=TOKEN,
    )
    try:
        first.wait_for("serving jobs", 180)
        second.wait_for("serving jobs", 180)
        names = _named_workers(auth_head)
        assert len(names) == 2, names
        first.proc.send_signal(signal.SIGINT)  # Ctrl-C
        first.proc.wait(60)
        assert "workers stopped" in first.output(), first.output()[-3000:]
        assert wait_until(lambda: len(_named_workers(auth_head)) == 1, 60, 1)
        (left,) = _named_workers(auth_head)
        assert str(second.proc.pid) in left and second.proc.poll() is None
        # The second one still serves: a job from the command line runs on it.
        from tests.helpers.ray_head import clean_env

        out = tmp_path / "fox.png"
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "easel"),
                "generate",
                "a fox",
                "--seed",
                "5",
                "--steps",
                "2",
                "--width",
                "64",
                "--height",
                "64",
                "--backend",
                "ray",
                "--ray-address",
                auth_head.address,
                "--out",
                str(out),
            ],
            env=clean_env(
                auth_head.root / "home",
                RAY_AUTH_TOKEN=TOKEN,
                EASEL_CONFIG=os.devnull,
                EASEL_DATA_DIR=str(tmp_path / "gen"),
                EASEL_CACHE_FOLDER=str(cache_folder),
                EASEL_RAY_WORKERS="0",
                HF_HUB_OFFLINE="1",
                PYTHONPATH=os.environ.get("PYTHONPATH", ""),
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert out.read_bytes().startswith(b"\x89PNG")
    finally:
        first.kill()
        second.kill()
