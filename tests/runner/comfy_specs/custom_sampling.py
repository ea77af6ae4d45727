"""ComfyUI's specs for the custom sampler family (``comfy_extras/nodes_custom_sampler.py``)
and ModelSamplingDiscrete (``comfy_extras/nodes_model_advanced.py``)."""

SEED = {"type": "INT", "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}
CFG = {"type": "FLOAT", "default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}
STEPS = {"type": "INT", "default": 20, "min": 1, "max": 10000}
SIGMA_MAX = {"type": "FLOAT", "default": 14.614642, "min": 0.0, "max": 5000.0, "step": 0.01}
SIGMA_MIN = {"type": "FLOAT", "default": 0.0291675, "min": 0.0, "max": 5000.0, "step": 0.01}
DENOISE = {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}

SPECS = {
    "SamplerCustom": {
        "model": {"type": "MODEL"},
        "add_noise": {"type": "BOOLEAN", "default": True},
        "noise_seed": SEED,
        "cfg": CFG,
        "positive": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "sampler": {"type": "SAMPLER"},
        "sigmas": {"type": "SIGMAS"},
        "latent_image": {"type": "LATENT"},
    },
    "SamplerCustomAdvanced": {
        "noise": {"type": "NOISE"},
        "guider": {"type": "GUIDER"},
        "sampler": {"type": "SAMPLER"},
        "sigmas": {"type": "SIGMAS"},
        "latent_image": {"type": "LATENT"},
    },
    "KSamplerSelect": {"sampler_name": {"type": "COMBO"}},
    "BasicScheduler": {
        "model": {"type": "MODEL"},
        "scheduler": {
            "type": "COMBO",
            "choices": [
                "simple",
                "sgm_uniform",
                "karras",
                "exponential",
                "ddim_uniform",
                "beta",
                "normal",
                "linear_quadratic",
                "kl_optimal",
            ],
        },
        "steps": STEPS,
        "denoise": DENOISE,
    },
    "KarrasScheduler": {
        "steps": STEPS,
        "sigma_max": SIGMA_MAX,
        "sigma_min": SIGMA_MIN,
        "rho": {"type": "FLOAT", "default": 7.0, "min": 0.0, "max": 100.0, "step": 0.01},
    },
    "ExponentialScheduler": {"steps": STEPS, "sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN},
    "PolyexponentialScheduler": {
        "steps": STEPS,
        "sigma_max": SIGMA_MAX,
        "sigma_min": SIGMA_MIN,
        "rho": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01},
    },
    "SDTurboScheduler": {
        "model": {"type": "MODEL"},
        "steps": {"type": "INT", "default": 1, "min": 1, "max": 10},
        "denoise": DENOISE,
    },
    "SplitSigmas": {
        "sigmas": {"type": "SIGMAS"},
        "step": {"type": "INT", "default": 0, "min": 0, "max": 10000},
    },
    "FlipSigmas": {"sigmas": {"type": "SIGMAS"}},
    "RandomNoise": {"noise_seed": SEED},
    "DisableNoise": {},
    "BasicGuider": {"model": {"type": "MODEL"}, "conditioning": {"type": "CONDITIONING"}},
    "CFGGuider": {
        "model": {"type": "MODEL"},
        "positive": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "cfg": CFG,
    },
    "DualCFGGuider": {
        "model": {"type": "MODEL"},
        "cond1": {"type": "CONDITIONING"},
        "cond2": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "cfg_conds": CFG,
        "cfg_cond2_negative": CFG,
        "style": {"type": "COMBO", "choices": ["regular", "nested"]},
    },
    "ModelSamplingDiscrete": {
        "model": {"type": "MODEL"},
        "sampling": {"type": "COMBO"},
        "zsnr": {"type": "BOOLEAN", "default": False},
    },
}

EXCEPTIONS = {
    "KSamplerSelect.sampler_name": "easel lists the ComfyUI samplers it runs on the sigma path",
    "ModelSamplingDiscrete.sampling": (
        "eps, v_prediction, lcm, x0; ComfyUI also has img_to_img(_flow) for other model kinds"
    ),
}
