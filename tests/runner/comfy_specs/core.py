"""ComfyUI's specs for the nodes easel had before the conditioning work (``nodes.py``)."""

MAX_RESOLUTION = 16384

SPECS = {
    "KSampler": {
        "model": {"type": "MODEL"},
        "seed": {"type": "INT", "default": 0, "min": 0},
        "steps": {"type": "INT", "default": 20, "min": 1, "max": 10000},
        "cfg": {"type": "FLOAT", "default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1},
        "sampler_name": {"type": "COMBO"},
        "scheduler": {"type": "COMBO"},
        "positive": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "latent_image": {"type": "LATENT"},
        "denoise": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01},
    },
    "EmptyLatentImage": {
        "width": {"type": "INT", "default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8},
        "height": {"type": "INT", "default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8},
        "batch_size": {"type": "INT", "default": 1, "min": 1, "max": 4096},
    },
    "CLIPTextEncode": {"text": {"type": "STRING"}, "clip": {"type": "CLIP"}},
    "CLIPSetLastLayer": {
        "clip": {"type": "CLIP"},
        "stop_at_clip_layer": {"type": "INT", "default": -1, "min": -24, "max": -1, "step": 1},
    },
    "VAEDecode": {"samples": {"type": "LATENT"}, "vae": {"type": "VAE"}},
    "VAEEncode": {"pixels": {"type": "IMAGE"}, "vae": {"type": "VAE"}},
    "LatentUpscaleBy": {
        "samples": {"type": "LATENT"},
        "upscale_method": {"type": "COMBO"},
        "scale_by": {"type": "FLOAT", "default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01},
    },
    "RepeatLatentBatch": {
        "samples": {"type": "LATENT"},
        "amount": {"type": "INT", "default": 1, "min": 1, "max": 64},
    },
}

EXCEPTIONS: dict[str, str] = {}
