"""Same seed and settings give identical pixels; another seed gives another image; and
easel's KSampler computes exactly what diffusers' own StableDiffusionPipeline computes."""

from __future__ import annotations

import numpy as np
import pytest
from runner_testlib import image_of, png_pixels, txt2img_workflow, with_inputs


def test_same_seed_gives_identical_pixels_in_two_environments(make_env, tmp_path):
    env_a, env_b = make_env(data_dir=tmp_path / "a"), make_env(data_dir=tmp_path / "b")
    first = env_a.run(txt2img_workflow(env_a))
    second = env_b.run(txt2img_workflow(env_b))
    assert first.executed and second.executed  # both really ran: no shared node cache
    assert np.array_equal(image_of(first), image_of(second))
    assert np.array_equal(png_pixels(first.images[0]), png_pixels(second.images[0]))


def test_same_seed_gives_identical_pixels_after_the_cache_is_cleared(env):
    workflow = txt2img_workflow(env, seed=11)
    first = env.run(workflow)
    env.node_cache.clear()
    second = env.run(workflow)
    assert second.executed == first.executed  # ran again, not from cache
    assert np.array_equal(image_of(first), image_of(second))


def test_a_different_seed_changes_the_image(env):
    workflow = txt2img_workflow(env, seed=1)
    a = image_of(env.run(workflow))
    b = image_of(env.run(with_inputs(workflow, "3", seed=2)))
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a - b).mean() > 1e-3


def test_batch_images_differ_from_each_other_and_are_reproducible(env):
    workflow = txt2img_workflow(env, batch_size=2, steps=2)
    first = env.run(workflow)
    images = image_of(first)
    assert images.shape == (2, 64, 64, 3)
    assert np.abs(images[0] - images[1]).mean() > 1e-3
    assert len(first.images) == 2
    env.node_cache.clear()
    assert np.array_equal(image_of(env.run(workflow)), images)


def test_seed_is_honoured_beyond_32_bits(env):
    """ComfyUI seeds go up to 2**64 - 1; big seeds are valid and distinct."""
    workflow = txt2img_workflow(env, seed=2**64 - 1, steps=2)
    a = image_of(env.run(workflow))
    b = image_of(env.run(with_inputs(workflow, "3", seed=2**63)))
    assert np.isfinite(a).all()
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("cfg", "negative", "batch"),
    [(7.5, "blurry, low quality", 1), (1.0, "", 1), (4.0, "", 2)],
    ids=["cfg-negative", "no-cfg", "batch2"],
)
def test_ksampler_matches_diffusers_stable_diffusion_pipeline(env, cfg, negative, batch):
    """With denoise 1 and a zero latent, KSampler + VAEDecode give the pixels diffusers'
    StableDiffusionPipeline gives from the same initial latents, prompt, negative, steps,
    cfg and an EulerDiscreteScheduler with linspace spacing."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from runner.diffusion.sampling import initial_noise

    prompt, seed, steps = "a lighthouse at dawn", 1234, 4
    workflow = txt2img_workflow(
        env, prompt=prompt, negative=negative, seed=seed, steps=steps, cfg=cfg, batch_size=batch
    )
    ours = image_of(env.run(workflow))

    loaded = env.models.checkpoint("tiny-random").pipe
    reference = StableDiffusionPipeline(**loaded.components)
    reference.scheduler = EulerDiscreteScheduler.from_config(
        loaded.scheduler.config, timestep_spacing="linspace"
    )
    reference.set_progress_bar_config(disable=True)
    latents = initial_noise((batch, 4, 8, 8), seed)
    theirs = reference(
        prompt=prompt,
        negative_prompt=negative or None,
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=latents,
        height=64,
        width=64,
        num_images_per_prompt=batch,
        output_type="np",
    ).images
    assert ours.shape == theirs.shape == (batch, 64, 64, 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_initial_noise_is_drawn_on_the_cpu_from_the_seed():
    import torch

    from runner.diffusion.sampling import initial_noise

    a = initial_noise((1, 4, 8, 8), 42)
    assert a.device.type == "cpu" and a.dtype == torch.float32
    assert torch.equal(a, initial_noise((1, 4, 8, 8), 42))
    assert torch.equal(a, torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42)))
    assert not torch.equal(a, initial_noise((1, 4, 8, 8), 43))


def test_concurrent_jobs_in_one_environment_match_sequential_ones(env):
    """Jobs from two threads share the loaded model; locks keep each job's result its own."""
    import threading

    seeds = [21, 22, 23, 24]
    workflows = [txt2img_workflow(env, seed=s, steps=2, prompt=f"fox {s}") for s in seeds]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(indexes):
        try:
            for i in indexes:
                results[i] = image_of(env.run(workflows[i]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(part,)) for part in ([0, 1], [2, 3])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    env.node_cache.clear()
    for i, workflow in enumerate(workflows):
        assert np.array_equal(results[i], image_of(env.run(workflow))), seeds[i]


def test_a_workflow_with_integer_node_ids_runs(env):
    workflow = {int(k): v for k, v in txt2img_workflow(env, steps=2).items()}
    result = env.run(workflow)
    assert result.executed == ["4", "6", "7", "5", "3", "8", "9"] and len(result.images) == 1


@pytest.mark.parametrize(
    ("sampler", "scheduler", "diffusers_class", "options"),
    [
        (
            "dpmpp_2m",
            "karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        ),
        (
            "euler_ancestral",
            "normal",
            "EulerAncestralDiscreteScheduler",
            {"timestep_spacing": "linspace"},
        ),
        (
            "ddim",
            "ddim_uniform",
            "DDIMScheduler",
            {"timestep_spacing": "leading", "steps_offset": 1},
        ),
    ],
)
def test_other_samplers_match_the_same_diffusers_scheduler_in_the_pipeline(
    env, sampler, scheduler, diffusers_class, options
):
    """Other sampler names through the same check; an ancestral sampler's step noise comes from
    a CPU generator seeded with seed + 1, which the pipeline is given as its generator."""
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline

    from runner.diffusion.sampling import initial_noise

    seed, steps, cfg = 77, 3, 5.0
    workflow = txt2img_workflow(
        env,
        prompt="a fox",
        negative="",
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler=sampler,
        scheduler=scheduler,
    )
    ours = image_of(env.run(workflow))

    loaded = env.models.checkpoint("tiny-random").pipe
    reference = StableDiffusionPipeline(**loaded.components)
    reference.scheduler = getattr(diffusers, diffusers_class).from_config(
        loaded.scheduler.config, **options
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(
        prompt="a fox",
        num_inference_steps=steps,
        guidance_scale=cfg,
        latents=initial_noise((1, 4, 8, 8), seed),
        generator=torch.Generator("cpu").manual_seed(seed + 1),
        height=64,
        width=64,
        output_type="np",
    ).images
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
