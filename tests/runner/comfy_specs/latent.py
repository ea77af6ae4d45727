"""ComfyUI's specs for the latent nodes added with the inpainting work (``nodes.py``;
LatentCompositeMasked from ``comfy_extras/nodes_mask.py``). LatentUpscaleBy and
RepeatLatentBatch are in ``core.py``."""

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


def _px(default: int = 0, minimum: int = 0) -> dict:
    return {"type": "INT", "default": default, "min": minimum, "max": MAX_RESOLUTION, "step": 8}


SPECS = {
    "LatentUpscale": {
        "samples": {"type": "LATENT"},
        "upscale_method": {"type": "COMBO", "choices": UPSCALE_METHODS},
        "width": _px(512),
        "height": _px(512),
        "crop": {"type": "COMBO", "choices": ["disabled", "center"]},
    },
    "LatentComposite": {
        "samples_to": {"type": "LATENT"},
        "samples_from": {"type": "LATENT"},
        "x": _px(),
        "y": _px(),
        "feather": _px(),
    },
    "LatentCompositeMasked": {
        "destination": {"type": "LATENT"},
        "source": {"type": "LATENT"},
        "x": _px(),
        "y": _px(),
        "resize_source": {"type": "BOOLEAN", "default": False},
        "mask": {"type": "MASK", "required": False},
    },
    "LatentBlend": {
        "samples1": {"type": "LATENT"},
        "samples2": {"type": "LATENT"},
        "blend_factor": {"type": "FLOAT", "default": 0.5, "min": 0, "max": 1, "step": 0.01},
    },
    "LatentCrop": {
        "samples": {"type": "LATENT"},
        "width": _px(512, 64),
        "height": _px(512, 64),
        "x": _px(),
        "y": _px(),
    },
    "LatentFlip": {
        "samples": {"type": "LATENT"},
        "flip_method": {"type": "COMBO", "choices": ["x-axis: vertically", "y-axis: horizontally"]},
    },
    "LatentRotate": {
        "samples": {"type": "LATENT"},
        "rotation": {
            "type": "COMBO",
            "choices": ["none", "90 degrees", "180 degrees", "270 degrees"],
        },
    },
    "LatentFromBatch": {
        "samples": {"type": "LATENT"},
        "batch_index": {
            "type": "INT",
            "default": 0,
            "min": -MAX_RESOLUTION,
            "max": MAX_RESOLUTION,
        },
        "length": {"type": "INT", "default": 1, "min": 1, "max": 64},
    },
    "VAEDecodeTiled": {
        "samples": {"type": "LATENT"},
        "vae": {"type": "VAE"},
        "tile_size": {"type": "INT", "default": 512, "min": 64, "max": 4096, "step": 32},
        "overlap": {"type": "INT", "default": 64, "min": 0, "max": 4096, "step": 32},
        "temporal_size": {"type": "INT", "default": 64, "min": 8, "max": 4096, "step": 4},
        "temporal_overlap": {"type": "INT", "default": 8, "min": 4, "max": 4096, "step": 4},
    },
    "VAEEncodeTiled": {
        "pixels": {"type": "IMAGE"},
        "vae": {"type": "VAE"},
        "tile_size": {"type": "INT", "default": 512, "min": 64, "max": 4096, "step": 64},
        "overlap": {"type": "INT", "default": 64, "min": 0, "max": 4096, "step": 32},
        "temporal_size": {"type": "INT", "default": 64, "min": 8, "max": 4096, "step": 4},
        "temporal_overlap": {"type": "INT", "default": 8, "min": 4, "max": 4096, "step": 4},
    },
}

EXCEPTIONS: dict[str, str] = {}
