"""Benchmark: the conditioning model's cost against plain txt2img, side by side.

    .venv/bin/python bench/bench_conditioning.py [--model tiny-random] [--size 256] [--steps 8] [--repeats 7]

One denoising loop (runner.diffusion.sampling.sample: euler / normal, cfg 7, the same
seed, size and steps) with, interleaved so that drift hits all alike:

* plain: one prompt per side (the fast path, one UNet call per step);
* two areas: a full-image prompt plus two half-image area prompts (ComfyUI's area
  composition; the negative is mirrored into both areas, so 2 UNet calls per step:
  the full-image inputs and the four half-image inputs);
* controlnet: one prompt with a ControlNet made from the model's UNet (strength 1).

Prints the median times and the ratios to plain.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch
    from diffusers import ControlNetModel

    from runner import EngineSettings, Environment
    from runner.diffusion.sampling import SampleJob, sample
    from runner.handles import Area, CondEntry, Conditioning, ControlSpec

    class ControlModel:
        kind = "controlnet"

        def __init__(self, module):
            self.module = module

    env = Environment(EngineSettings(data_dir=Path(tempfile.mkdtemp(prefix="easel-bench-"))))
    ckpt = env.models.checkpoint(args.model)
    pipe = ckpt.pipe
    with torch.inference_mode():
        ids = pipe.tokenizer(
            ["a lighthouse", "blurry", "a red boat", "a green forest"],
            padding="max_length",
            max_length=77,
            return_tensors="pt",
        ).input_ids.to(ckpt.device)
        embeds = pipe.text_encoder(ids)[0].float().cpu()
    prompt, negative, left, right = (CondEntry(e[None]) for e in embeds)
    lat = args.size // 8
    net = ControlNetModel.from_unet(pipe.unet).to(ckpt.device, ckpt.dtype).eval()
    hint = torch.rand(1, args.size, args.size, 3)
    cases = {
        "plain": Conditioning(entries=[prompt]),
        "two areas": Conditioning(
            entries=[
                prompt,
                left.replace(area=Area(lat, lat // 2, 0, 0)),
                right.replace(area=Area(lat, lat // 2, 0, lat // 2)),
            ]
        ),
        "controlnet": Conditioning(
            entries=[prompt.replace(control=ControlSpec(ControlModel(net), hint, 1.0))]
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}

    def run(positive):
        job = SampleJob(1, torch.zeros(1, 4, lat, lat), positive, Conditioning(entries=[negative]))
        with ckpt.lock:
            ckpt.activate_loras()
            return sample(
                ckpt,
                [job],
                steps=args.steps,
                cfg=7.0,
                sampler_name="euler",
                scheduler_name="normal",
            )

    for positive in cases.values():  # warm-up
        run(positive)
    for _ in range(args.repeats):
        for name, positive in cases.items():
            start = time.perf_counter()
            run(positive)
            times[name].append(time.perf_counter() - start)
    env.close()
    base = statistics.median(times["plain"])
    print(
        f"{args.model}, {args.size} px, {args.steps} steps, euler/normal, cfg 7, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<11} {median * 1000:8.1f} ms   x{median / base:.2f} plain")


if __name__ == "__main__":
    main()
