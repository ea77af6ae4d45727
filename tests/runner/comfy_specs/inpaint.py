"""ComfyUI's specs for the inpainting nodes (``nodes.py``: VAEEncodeForInpaint,
SetLatentNoiseMask, InpaintModelConditioning, ImagePadForOutpaint)."""

MAX_RESOLUTION = 16384

SPECS = {
    "VAEEncodeForInpaint": {
        "pixels": {"type": "IMAGE"},
        "vae": {"type": "VAE"},
        "mask": {"type": "MASK"},
        "grow_mask_by": {"type": "INT", "default": 6, "min": 0, "max": 64, "step": 1},
    },
    "SetLatentNoiseMask": {"samples": {"type": "LATENT"}, "mask": {"type": "MASK"}},
    "InpaintModelConditioning": {
        "positive": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "vae": {"type": "VAE"},
        "pixels": {"type": "IMAGE"},
        "mask": {"type": "MASK"},
        "noise_mask": {"type": "BOOLEAN", "default": True},
    },
    "ImagePadForOutpaint": {
        "image": {"type": "IMAGE"},
        **{
            side: {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
            for side in ("left", "top", "right", "bottom")
        },
        "feathering": {"type": "INT", "default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1},
    },
}

EXCEPTIONS: dict[str, str] = {}
