"""Benchmark: best of N in one batch against N separate jobs, side by side.

    .venv/bin/python bench/bench_best_of.py [--model tiny-random] [--size 256] [--steps 8] [--n 4] [--repeats 5]

Interleaved, each repeat with a new seed (so the sampler runs every time; the prompt
encoding is cached as it is between a member's jobs):

* one: one image (batch 1), no ranking;
* best of N: the request with ``best_of=N`` (one batch of N, then CLIPImageTextRank with
  the tiny ranker CLIP of tests/helpers/tiny_clip.py, keeping 1);
* N jobs: N runs of ``one`` with N seeds (what ranking N separate jobs would cost at
  least, before any CLIP).

Prints the median times and the ratios to ``one``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from helpers.tiny_clip import RANKER, write_tiny_clip

    from runner.environment import Environment
    from runner.settings import EngineSettings
    from runner.templates import GenerationRequest

    data = Path(tempfile.mkdtemp(prefix="easel-bench-best-of-"))
    env = Environment(EngineSettings(data_dir=data))
    write_tiny_clip(env.settings.models_root)
    base = GenerationRequest(
        prompt="a lighthouse at dawn",
        steps=args.steps,
        width=args.size,
        height=args.size,
        model=args.model,
        seed=0,
    )

    def one(seed: int) -> None:
        env.run(env.build_workflow(base.model_copy(update={"seed": seed})))

    def best(seed: int) -> None:
        ranked = base.model_copy(update={"seed": seed, "best_of": args.n, "best_of_clip": RANKER})
        env.run(env.build_workflow(ranked))

    def jobs(seed: int) -> None:
        for k in range(args.n):
            one(seed * 100 + k)

    cases = {"one": one, f"best of {args.n}": best, f"{args.n} jobs": jobs}
    for fn in cases.values():  # warm-up: load the model and the CLIP
        fn(10_000)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn(repeat + 1)
            times[name].append(time.perf_counter() - t0)
    reference = statistics.median(times["one"])
    print(
        f"model {args.model}, {args.size} px, {args.steps} steps, N={args.n}, "
        f"median of {args.repeats}, torch threads {__import__('torch').get_num_threads()}"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>12}: {median * 1000:8.1f} ms  ({median / reference:.2f}x one)")
    env.close()


if __name__ == "__main__":
    main()
