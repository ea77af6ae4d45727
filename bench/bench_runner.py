"""Benchmark: easel against bare diffusers on the same weights and settings, side by side.

    .venv/bin/python bench/bench_runner.py [--model tiny-random] [--size 256] [--steps 8] [--repeats 7]

Prints medians and ratios measured in one run, interleaving the contenders so drift on
the machine hits both alike:

* txt2img, euler / normal, cfg 7: easel (a new seed each run, as people use it) against
  ``StableDiffusionPipeline.__call__`` on the same loaded components (target ratio <= 1.05);
* cold start (a new Environment: model load + first run) against a warm run;
* a seed-only rerun (cached loader and prompts) against a full run (node cache cleared).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from diffusers import EulerDiscreteScheduler
    from diffusers.utils import logging as dlogging

    from runner import EngineSettings, Environment, GenerationRequest

    dlogging.disable_progress_bar()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="easel-bench-"))
    settings = EngineSettings(data_dir=data_dir)
    prompt, negative, cfg = "a lighthouse at dawn, oil painting", "blurry", 7.0

    def request(seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            negative=negative,
            seed=seed,
            steps=args.steps,
            cfg=cfg,
            sampler="euler",
            scheduler="normal",
            width=args.size,
            height=args.size,
            model=args.model,
        )

    # Cold start: a new Environment, model load and first image.
    cold = []
    for i in range(3):
        t0 = time.perf_counter()
        env = Environment(settings)
        env.run(env.build_workflow(request(1000 + i)))
        cold.append(time.perf_counter() - t0)
        if i < 2:
            env.close()

    checkpoint = env.models.checkpoint(args.model)
    pipe = checkpoint.pipe
    bare_scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="linspace"
    )

    def run_bare(seed: int) -> None:
        from diffusers import StableDiffusionPipeline

        bare = StableDiffusionPipeline(**{**pipe.components, "scheduler": bare_scheduler})
        bare.set_progress_bar_config(disable=True)
        generator = torch.Generator("cpu").manual_seed(seed)
        with checkpoint.lock:
            checkpoint.activate_loras()
            image = bare(
                prompt,
                negative_prompt=negative,
                num_inference_steps=args.steps,
                guidance_scale=cfg,
                height=args.size,
                width=args.size,
                generator=generator,
            ).images[0]
        image.save(io.BytesIO(), format="PNG", compress_level=4)

    def run_easel(seed: int) -> None:
        env.run(env.build_workflow(request(seed)))

    def run_full(seed: int) -> None:
        env.node_cache.clear()
        env.run(env.build_workflow(request(seed)))

    for warm in range(2):  # warm-up
        run_bare(warm)
        run_easel(warm + 50)
    timings: dict[str, list[float]] = {"bare": [], "easel": [], "full": []}
    for i in range(args.repeats):
        for name, fn in (("bare", run_bare), ("easel", run_easel), ("full", run_full)):
            t0 = time.perf_counter()
            fn(100 + i)
            timings[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in timings.items()}
    cold_med = statistics.median(cold)
    print(
        f"device {checkpoint.device}, dtype {checkpoint.dtype}, model {args.model}, {args.size}px, {args.steps} steps, "
        f"euler/normal, cfg {cfg}, torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'measure':44} {'seconds':>9}")
    print(f"{'bare diffusers StableDiffusionPipeline':44} {med['bare']:9.4f}")
    print(f"{'easel txt2img (new seed, warm)':44} {med['easel']:9.4f}")
    print(f"{'easel full run (node cache cleared)':44} {med['full']:9.4f}")
    print(f"{'easel cold start (new env, load + run)':44} {cold_med:9.4f}")
    print()
    print(f"easel / bare diffusers           = {med['easel'] / med['bare']:.3f}   (target <= 1.05)")
    print(f"easel full run / bare diffusers  = {med['full'] / med['bare']:.3f}")
    print(f"cold start / warm run            = {cold_med / med['easel']:.2f}")
    print(f"seed-only rerun / full run       = {med['easel'] / med['full']:.3f}")


if __name__ == "__main__":
    main()
