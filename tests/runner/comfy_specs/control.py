"""ComfyUI's specs for the ControlNet nodes (``nodes.py``: ControlNetLoader,
DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced) and the Canny preprocessor
(``comfy_extras/nodes_canny.py``)."""

_STRENGTH = {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
_THRESHOLD = {"type": "FLOAT", "min": 0.01, "max": 0.99, "step": 0.01}

SPECS = {
    "ControlNetLoader": {"control_net_name": {"type": "COMBO"}},
    "DiffControlNetLoader": {"model": {"type": "MODEL"}, "control_net_name": {"type": "COMBO"}},
    "ControlNetApply": {
        "conditioning": {"type": "CONDITIONING"},
        "control_net": {"type": "CONTROL_NET"},
        "image": {"type": "IMAGE"},
        "strength": _STRENGTH,
    },
    "ControlNetApplyAdvanced": {
        "positive": {"type": "CONDITIONING"},
        "negative": {"type": "CONDITIONING"},
        "control_net": {"type": "CONTROL_NET"},
        "image": {"type": "IMAGE"},
        "strength": _STRENGTH,
        "start_percent": {"type": "FLOAT", "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001},
        "end_percent": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001},
        "vae": {"type": "VAE", "required": False},
    },
    "Canny": {
        "image": {"type": "IMAGE"},
        "low_threshold": {**_THRESHOLD, "default": 0.4},
        "high_threshold": {**_THRESHOLD, "default": 0.8},
    },
}
