"""Jobs benchmark: throughput of N compatible jobs batched against one at a time, and the
asyncio loop's latency while jobs generate on the local worker's thread.

    python bench/bench_jobs.py                      # tiny-random, 8 jobs, 64 px, 8 steps
    python bench/bench_jobs.py --jobs 4 --size 256 --model my-model.safetensors

Both sides run in this process on the same environment, side by side, after a warm-up;
the node cache is cleared before each run so that every job really samples. Each job
has its own prompt and seed. The batched images are checked against the sequential ones.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def build(env, args, n: int, seed0: int) -> list:
    from runner.jobs import make_job
    from runner.templates import GenerationRequest

    jobs = []
    for i in range(n):
        request = GenerationRequest(
            prompt=f"a lighthouse at dawn, study {seed0 + i}",
            negative="blurry",
            seed=seed0 + i,
            steps=args.steps,
            width=args.size,
            height=args.size,
            cfg=6.0,
            model=args.model,
        )
        jobs.append(make_job(f"{seed0}-{i}", env.build_workflow(request), user_id=i))
    return jobs


def run(env, jobs, max_batch: int) -> tuple[float, dict]:
    """Seconds to run ``jobs`` through a fresh runner (all queued before it starts)."""
    from runner.jobs import JobRunner, LocalWorker, MemoryStore

    env.node_cache.clear()
    store = MemoryStore()
    runner = JobRunner([LocalWorker(env)], store=store, max_batch=max_batch, paused=True).start()
    for job in jobs:
        runner.submit(job)
    t0 = time.perf_counter()
    runner.resume()
    runner.wait_idle()
    seconds = time.perf_counter() - t0
    runner.stop()
    bad = [o for o in store.outcomes.values() if o.status != "done"]
    if bad:
        raise SystemExit(f"job {bad[0].job_id} {bad[0].status}: {bad[0].error}")
    return seconds, store.outcomes


def pixels(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


async def loop_lag(seconds: float, work=None) -> list[float]:
    """How late a 1 ms timer fires, in ms, for ``seconds`` (while ``work`` runs)."""
    lags: list[float] = []
    task = asyncio.ensure_future(work) if work is not None else None
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or (task is not None and not task.done()):
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t0 - 0.001) * 1000)
        if task is not None and task.done() and time.perf_counter() >= end:
            break
    if task is not None:
        await task
    return lags


def describe(lags: list[float]) -> str:
    lags = sorted(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    return f"median {statistics.median(lags):6.2f} ms  p99 {p99:7.2f} ms  max {lags[-1]:7.2f} ms  ({len(lags)} ticks)"


def latency(env, args) -> None:
    from runner.jobs import JobRunner, LocalWorker, MemoryStore

    jobs = build(env, args, args.jobs, 10_000)

    async def main() -> None:
        idle = await loop_lag(1.0)
        env.node_cache.clear()
        runner = JobRunner([LocalWorker(env)], store=MemoryStore(), max_batch=1).start()

        async def generate() -> None:
            for job in jobs:
                runner.submit(job)
            await asyncio.to_thread(runner.wait_idle)

        busy = await loop_lag(0.0, generate())
        await asyncio.to_thread(runner.stop)
        env.node_cache.clear()
        more = build(env, args, args.jobs, 20_000)

        async def blocking() -> None:  # what the worker thread avoids: running on the loop
            for job in more:
                env.run(job.workflow)
                await asyncio.sleep(0)

        blocked = await loop_lag(0.0, blocking())
        print(f"asyncio loop lag, idle:                           {describe(idle)}")
        print(f"asyncio loop lag, {args.jobs} jobs on the worker thread:    {describe(busy)}")
        print(
            f"asyncio loop lag, the same jobs run on the loop:   {describe(blocked)}  (for contrast)"
        )

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="compatible jobs per run")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--model", default=None, help="checkpoint (default: the configured one, tiny-random)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; the best is kept")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()

    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from runner.environment import Environment
    from runner.settings import EngineSettings

    data = Path(args.data_dir or tempfile.mkdtemp(prefix="easel-bench-"))
    settings = EngineSettings(
        data_dir=data, cache_folder=os.environ.get("EASEL_CACHE_FOLDER") or data / "cache"
    )
    env = Environment(settings)
    print(
        f"device {env.models.device}, torch threads {torch.get_num_threads()}, model {args.model or settings.default_model}, "
        f"{args.jobs} jobs of {args.size}x{args.size} px, {args.steps} steps, cfg 6"
    )
    run(env, build(env, args, 2, 1), 2)  # warm-up: load, first calls, a batched call

    sequential, batched = [], []
    for r in range(args.repeat):
        jobs = build(env, args, args.jobs, 100 * (r + 1))
        s, alone = run(env, jobs, 1)
        b, together = run(env, jobs, args.jobs)
        sequential.append(s)
        batched.append(b)
    diff = max(
        int(abs(pixels(alone[j].images[0].data) - pixels(together[j].images[0].data)).max())
        for j in alone
    )
    s, b = min(sequential), min(batched)
    print(
        f"sequential: {args.jobs / s:7.2f} jobs/s  ({s:.3f} s for {args.jobs}; runs {', '.join(f'{x:.3f}' for x in sequential)})"
    )
    print(
        f"batched:    {args.jobs / b:7.2f} jobs/s  ({b:.3f} s for {args.jobs}; runs {', '.join(f'{x:.3f}' for x in batched)})"
    )
    print(
        f"batched / sequential throughput: {s / b:.2f}x   (largest pixel difference batched vs alone: {diff}/255)"
    )
    latency(env, args)
    env.close()


if __name__ == "__main__":
    main()
