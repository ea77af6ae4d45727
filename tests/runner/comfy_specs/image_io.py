"""ComfyUI's specs for the image output nodes (``nodes.py`` SaveImage / PreviewImage,
``comfy_extras/nodes_images.py`` SaveAnimatedWEBP / SaveAnimatedPNG, and
``custom_nodes/websocket_image_save.py`` SaveImageWebsocket)."""

SPECS = {
    "SaveImage": {
        "images": {"type": "IMAGE"},
        "filename_prefix": {"type": "STRING", "default": "ComfyUI"},
    },
    "PreviewImage": {"images": {"type": "IMAGE"}},
    "SaveImageWebsocket": {"images": {"type": "IMAGE"}},
    "SaveAnimatedWEBP": {
        "images": {"type": "IMAGE"},
        "filename_prefix": {"type": "STRING", "default": "ComfyUI"},
        "fps": {"type": "FLOAT", "default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01},
        "lossless": {"type": "BOOLEAN", "default": True},
        "quality": {"type": "INT", "default": 80, "min": 0, "max": 100},
        "method": {"type": "COMBO", "choices": ["default", "fastest", "slowest"]},
    },
    "SaveAnimatedPNG": {
        "images": {"type": "IMAGE"},
        "filename_prefix": {"type": "STRING", "default": "ComfyUI"},
        "fps": {"type": "FLOAT", "default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01},
        "compress_level": {"type": "INT", "default": 4, "min": 0, "max": 9},
    },
}

EXCEPTIONS: dict[str, str] = {}
