"""ComfyUI's specs for the conditioning-model kinds (``nodes.py``: CLIPVisionLoader,
CLIPVisionEncode, unCLIPCheckpointLoader, unCLIPConditioning, StyleModelLoader,
StyleModelApply, GLIGENLoader, GLIGENTextBoxApply; ``comfy_extras/nodes_hypernetwork.py``:
HypernetworkLoader). COMBO choices that depend on files are left out."""

MAX_RESOLUTION = 16384

SPECS = {
    "CLIPVisionLoader": {"clip_name": {"type": "COMBO"}},
    "CLIPVisionEncode": {
        "clip_vision": {"type": "CLIP_VISION"},
        "image": {"type": "IMAGE"},
        "crop": {"type": "COMBO", "choices": ["center", "none"]},
    },
    "unCLIPCheckpointLoader": {"ckpt_name": {"type": "COMBO"}},
    "unCLIPConditioning": {
        "conditioning": {"type": "CONDITIONING"},
        "clip_vision_output": {"type": "CLIP_VISION_OUTPUT"},
        "strength": {"type": "FLOAT", "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01},
        "noise_augmentation": {
            "type": "FLOAT",
            "default": 0.0,
            "min": 0.0,
            "max": 1.0,
            "step": 0.01,
        },
    },
    "StyleModelLoader": {"style_model_name": {"type": "COMBO"}},
    "StyleModelApply": {
        "conditioning": {"type": "CONDITIONING"},
        "style_model": {"type": "STYLE_MODEL"},
        "clip_vision_output": {"type": "CLIP_VISION_OUTPUT"},
        "strength": {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001},
        "strength_type": {"type": "COMBO", "choices": ["multiply", "attn_bias"]},
    },
    "HypernetworkLoader": {
        "model": {"type": "MODEL"},
        "hypernetwork_name": {"type": "COMBO"},
        "strength": {"type": "FLOAT", "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01},
    },
    "GLIGENLoader": {"gligen_name": {"type": "COMBO"}},
    "GLIGENTextBoxApply": {
        "conditioning_to": {"type": "CONDITIONING"},
        "clip": {"type": "CLIP"},
        "gligen_textbox_model": {"type": "GLIGEN"},
        "text": {"type": "STRING"},
        "width": {"type": "INT", "default": 64, "min": 8, "max": MAX_RESOLUTION, "step": 8},
        "height": {"type": "INT", "default": 64, "min": 8, "max": MAX_RESOLUTION, "step": 8},
        "x": {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8},
        "y": {"type": "INT", "default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8},
    },
}

EXCEPTIONS: dict[str, str] = {}
