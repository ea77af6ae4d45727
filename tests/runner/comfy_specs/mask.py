"""ComfyUI's specs for the MASK nodes (``comfy_extras/nodes_mask.py``; LoadImageMask from
``nodes.py``)."""

MAX_RESOLUTION = 16384

SPECS = {
    "SolidMask": {
        "value": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01},
        "width": {"type": "INT", "default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1},
        "height": {"type": "INT", "default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1},
    },
    "InvertMask": {"mask": {"type": "MASK"}},
    "MaskComposite": {
        "destination": {"type": "MASK"},
        "source": {"type": "MASK"},
        "x": {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1},
        "y": {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1},
        "operation": {
            "type": "COMBO",
            "choices": ["multiply", "add", "subtract", "and", "or", "xor"],
        },
    },
    "ImageToMask": {
        "image": {"type": "IMAGE"},
        "channel": {"type": "COMBO", "choices": ["red", "green", "blue", "alpha"]},
    },
    "MaskToImage": {"mask": {"type": "MASK"}},
    "FeatherMask": {
        "mask": {"type": "MASK"},
        **{
            side: {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}
            for side in ("left", "top", "right", "bottom")
        },
    },
    "GrowMask": {
        "mask": {"type": "MASK"},
        "expand": {
            "type": "INT",
            "default": 0,
            "min": -MAX_RESOLUTION,
            "max": MAX_RESOLUTION,
            "step": 1,
        },
        "tapered_corners": {"type": "BOOLEAN", "default": True},
    },
    "LoadImageMask": {
        "image": {"type": "COMBO"},
        "channel": {"type": "COMBO", "choices": ["alpha", "red", "green", "blue"]},
    },
}

EXCEPTIONS: dict[str, str] = {}
