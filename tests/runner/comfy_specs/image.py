"""ComfyUI's specs for the image nodes added with the inpainting work (``nodes.py``:
EmptyImage, ImageInvert, ImageBatch; ``comfy_extras/nodes_images.py``: ImageCrop;
``nodes_post_processing.py``: ImageBlend; ``nodes_mask.py``: ImageCompositeMasked)."""

MAX_RESOLUTION = 16384


def _int(default: int, minimum: int, maximum: int = MAX_RESOLUTION) -> dict:
    return {"type": "INT", "default": default, "min": minimum, "max": maximum, "step": 1}


SPECS = {
    "EmptyImage": {
        "width": _int(512, 1),
        "height": _int(512, 1),
        "batch_size": {"type": "INT", "default": 1, "min": 1, "max": 4096},
        "color": _int(0, 0, 0xFFFFFF),
    },
    "ImageInvert": {"image": {"type": "IMAGE"}},
    "ImageBatch": {"image1": {"type": "IMAGE"}, "image2": {"type": "IMAGE"}},
    "ImageCrop": {
        "image": {"type": "IMAGE"},
        "width": _int(512, 1),
        "height": _int(512, 1),
        "x": _int(0, 0),
        "y": _int(0, 0),
    },
    "ImageBlend": {
        "image1": {"type": "IMAGE"},
        "image2": {"type": "IMAGE"},
        "blend_factor": {"type": "FLOAT", "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01},
        "blend_mode": {
            "type": "COMBO",
            "choices": ["normal", "multiply", "screen", "overlay", "soft_light", "difference"],
        },
    },
    "ImageCompositeMasked": {
        "destination": {"type": "IMAGE"},
        "source": {"type": "IMAGE"},
        "x": _int(0, 0),
        "y": _int(0, 0),
        "resize_source": {"type": "BOOLEAN", "default": False},
        "mask": {"type": "MASK", "required": False},
    },
}

EXCEPTIONS: dict[str, str] = {}
