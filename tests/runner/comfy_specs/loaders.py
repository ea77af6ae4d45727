"""ComfyUI's specs for the loader-area nodes (``nodes.py``: VAELoader, CheckpointLoader,
LoraLoaderModelOnly, SaveLatent, LoadLatent, LoadImageOutput;
``comfy_extras/nodes_upscale_model.py``: UpscaleModelLoader, ImageUpscaleWithModel).
COMBO choices that depend on files are left out."""

SPECS = {
    "VAELoader": {"vae_name": {"type": "COMBO"}},
    "CheckpointLoader": {"config_name": {"type": "COMBO"}, "ckpt_name": {"type": "COMBO"}},
    "LoraLoaderModelOnly": {
        "model": {"type": "MODEL"},
        "lora_name": {"type": "COMBO"},
        "strength_model": {
            "type": "FLOAT",
            "default": 1.0,
            "min": -100.0,
            "max": 100.0,
            "step": 0.01,
        },
    },
    "SaveLatent": {
        "samples": {"type": "LATENT"},
        "filename_prefix": {"type": "STRING", "default": "latents/ComfyUI"},
    },
    "LoadLatent": {"latent": {"type": "COMBO"}},
    "LoadImageOutput": {"image": {"type": "COMBO"}},
    "UpscaleModelLoader": {"model_name": {"type": "COMBO"}},
    "ImageUpscaleWithModel": {
        "upscale_model": {"type": "UPSCALE_MODEL"},
        "image": {"type": "IMAGE"},
    },
}

EXCEPTIONS: dict[str, str] = {}
