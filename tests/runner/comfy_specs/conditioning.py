"""ComfyUI's specs for the conditioning nodes (``nodes.py``, ``comfy_extras/nodes_clip_sdxl.py``)."""

MAX_RESOLUTION = 16384

_STRENGTH = {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
_PIXELS = {"type": "INT", "min": 0, "max": MAX_RESOLUTION, "step": 8}
_FRACTION = {"type": "FLOAT", "min": 0, "max": 1.0, "step": 0.01}
_SIZE = {"type": "INT", "min": 0, "max": MAX_RESOLUTION}

SPECS = {
    "ConditioningCombine": {
        "conditioning_1": {"type": "CONDITIONING"},
        "conditioning_2": {"type": "CONDITIONING"},
    },
    "ConditioningAverage": {
        "conditioning_to": {"type": "CONDITIONING"},
        "conditioning_from": {"type": "CONDITIONING"},
        "conditioning_to_strength": {
            "type": "FLOAT",
            "default": 1.0,
            "min": 0.0,
            "max": 1.0,
            "step": 0.01,
        },
    },
    "ConditioningConcat": {
        "conditioning_to": {"type": "CONDITIONING"},
        "conditioning_from": {"type": "CONDITIONING"},
    },
    "ConditioningSetArea": {
        "conditioning": {"type": "CONDITIONING"},
        "width": {**_PIXELS, "default": 64, "min": 64},
        "height": {**_PIXELS, "default": 64, "min": 64},
        "x": {**_PIXELS, "default": 0},
        "y": {**_PIXELS, "default": 0},
        "strength": _STRENGTH,
    },
    "ConditioningSetAreaPercentage": {
        "conditioning": {"type": "CONDITIONING"},
        "width": {**_FRACTION, "default": 1.0},
        "height": {**_FRACTION, "default": 1.0},
        "x": {**_FRACTION, "default": 0},
        "y": {**_FRACTION, "default": 0},
        "strength": _STRENGTH,
    },
    "ConditioningSetAreaStrength": {
        "conditioning": {"type": "CONDITIONING"},
        "strength": _STRENGTH,
    },
    "ConditioningSetMask": {
        "conditioning": {"type": "CONDITIONING"},
        "mask": {"type": "MASK"},
        "strength": _STRENGTH,
        "set_cond_area": {"type": "COMBO", "choices": ["default", "mask bounds"]},
    },
    "ConditioningZeroOut": {"conditioning": {"type": "CONDITIONING"}},
    "ConditioningSetTimestepRange": {
        "conditioning": {"type": "CONDITIONING"},
        "start": {"type": "FLOAT", "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001},
        "end": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001},
    },
    "CLIPTextEncodeSDXL": {
        "clip": {"type": "CLIP"},
        "width": {**_SIZE, "default": 1024},
        "height": {**_SIZE, "default": 1024},
        "crop_w": {**_SIZE, "default": 0},
        "crop_h": {**_SIZE, "default": 0},
        "target_width": {**_SIZE, "default": 1024},
        "target_height": {**_SIZE, "default": 1024},
        "text_g": {"type": "STRING"},
        "text_l": {"type": "STRING"},
    },
    "CLIPTextEncodeSDXLRefiner": {
        "ascore": {"type": "FLOAT", "default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01},
        "width": {**_SIZE, "default": 1024},
        "height": {**_SIZE, "default": 1024},
        "text": {"type": "STRING"},
        "clip": {"type": "CLIP"},
    },
}

EXCEPTIONS: dict[str, str] = {}
