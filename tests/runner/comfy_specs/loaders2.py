"""ComfyUI's specs for the text encoder loaders (``nodes.py``: CLIPLoader, DualCLIPLoader)
and the model merging nodes (``comfy_extras/nodes_model_merging.py``). COMBO choices that
depend on files are left out."""

from runner.models.text_encoders import CLIP_LOADER_TYPES, DUAL_CLIP_LOADER_TYPES

_DEVICE = {"type": "COMBO", "choices": ["default", "cpu"], "required": False}
_RATIO = {"type": "FLOAT", "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}

SPECS = {
    "CLIPLoader": {
        "clip_name": {"type": "COMBO"},
        "type": {"type": "COMBO", "choices": list(CLIP_LOADER_TYPES)},
        "device": _DEVICE,
    },
    "DualCLIPLoader": {
        "clip_name1": {"type": "COMBO"},
        "clip_name2": {"type": "COMBO"},
        "type": {"type": "COMBO", "choices": list(DUAL_CLIP_LOADER_TYPES)},
        "device": _DEVICE,
    },
    "ModelMergeSimple": {"model1": {"type": "MODEL"}, "model2": {"type": "MODEL"}, "ratio": _RATIO},
    "ModelMergeBlocks": {
        "model1": {"type": "MODEL"},
        "model2": {"type": "MODEL"},
        "input": _RATIO,
        "middle": _RATIO,
        "out": _RATIO,
    },
    "ModelMergeAdd": {"model1": {"type": "MODEL"}, "model2": {"type": "MODEL"}},
    "ModelMergeSubtract": {
        "model1": {"type": "MODEL"},
        "model2": {"type": "MODEL"},
        "multiplier": {"type": "FLOAT", "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01},
    },
    "CLIPMergeSimple": {"clip1": {"type": "CLIP"}, "clip2": {"type": "CLIP"}, "ratio": _RATIO},
    "CheckpointSave": {
        "model": {"type": "MODEL"},
        "clip": {"type": "CLIP"},
        "vae": {"type": "VAE"},
        "filename_prefix": {"type": "STRING", "default": "checkpoints/ComfyUI"},
    },
}

EXCEPTIONS: dict[str, str] = {}
