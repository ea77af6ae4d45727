"""Binding detection on several graphs, against bindings written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.workflow_bindings import (
    BindingError,
    Target,
    apply_bindings,
    find_bindings,
    with_image_input,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def targets(bindings) -> dict[str, list[str]]:
    return {k: [str(t) for t in b.targets] for k, b in bindings.options.items()}


def default_graph() -> dict:
    return json.loads((FIXTURES / "comfyui_default_api.json").read_text())


def test_comfyui_default_workflow():
    b = find_bindings(default_graph())
    assert targets(b) == {
        "prompt": ["6.text"],
        "negative": ["7.text"],
        "seed": ["3.seed"],
        "steps": ["3.steps"],
        "cfg": ["3.cfg"],
        "sampler": ["3.sampler_name"],
        "scheduler": ["3.scheduler"],
        "denoise": ["3.denoise"],
        "width": ["5.width"],
        "height": ["5.height"],
        "batch_size": ["5.batch_size"],
        "model": ["4.ckpt_name"],
    }
    assert b.sampler == "3" and b.loras == ()
    assert b.value(default_graph(), "prompt") == "masterpiece best quality girl"


def sdxl_base_refiner() -> dict:
    """ComfyUI's SDXL example shape: base (KSamplerAdvanced 0-20 of 25) then refiner."""
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sdxl_base.safetensors"},
        },
        "12": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sdxl_refiner.safetensors"},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
        },
        "6": {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {
                "clip": ["4", 1],
                "width": 1024,
                "height": 1024,
                "crop_w": 0,
                "crop_h": 0,
                "target_width": 1024,
                "target_height": 1024,
                "text_g": "a castle",
                "text_l": "a castle",
            },
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "15": {
            "class_type": "CLIPTextEncodeSDXLRefiner",
            "inputs": {
                "clip": ["12", 1],
                "ascore": 6,
                "width": 1024,
                "height": 1024,
                "text": "a castle",
            },
        },
        "16": {
            "class_type": "CLIPTextEncodeSDXLRefiner",
            "inputs": {
                "clip": ["12", 1],
                "ascore": 2.5,
                "width": 1024,
                "height": 1024,
                "text": "blurry",
            },
        },
        "10": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["4", 0],
                "add_noise": "enable",
                "noise_seed": 7,
                "steps": 25,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "start_at_step": 0,
                "end_at_step": 20,
                "return_with_leftover_noise": "enable",
            },
        },
        "11": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["12", 0],
                "add_noise": "disable",
                "noise_seed": 0,
                "steps": 25,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["15", 0],
                "negative": ["16", 0],
                "latent_image": ["10", 0],
                "start_at_step": 20,
                "end_at_step": 10000,
                "return_with_leftover_noise": "disable",
            },
        },
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["12", 2]}},
        "19": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "sdxl", "images": ["17", 0]},
        },
    }


def test_sdxl_base_and_refiner_bind_the_first_sampler_and_both_prompts():
    b = find_bindings(sdxl_base_refiner())
    assert b.sampler == "10" and b.samplers == ("10", "11")
    assert targets(b) == {
        "prompt": ["6.text_g", "6.text_l", "15.text"],
        "negative": ["7.text", "16.text"],
        "seed": ["10.noise_seed"],
        "steps": ["10.steps"],
        "cfg": ["10.cfg"],
        "sampler": ["10.sampler_name"],
        "scheduler": ["10.scheduler"],
        "width": ["5.width"],
        "height": ["5.height"],
        "batch_size": ["5.batch_size"],
        "model": ["4.ckpt_name"],
    }
    out = apply_bindings(sdxl_base_refiner(), b, {"prompt": "a ship", "seed": 99})
    assert out["6"]["inputs"]["text_g"] == out["15"]["inputs"]["text"] == "a ship"
    assert out["10"]["inputs"]["noise_seed"] == 99 and out["11"]["inputs"]["noise_seed"] == 0


def sampler_custom_advanced() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": "a.safetensors",
                "strength_model": 1,
                "strength_clip": 1,
            },
        },
        "3": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["2", 0],
                "clip": ["2", 1],
                "lora_name": "b.safetensors",
                "strength_model": 0.5,
                "strength_clip": 0.5,
            },
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "a fox"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "ugly"}},
        "6": {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": ["4", 0], "conditioning_2": ["9", 0]},
        },
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "forest"}},
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "21": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["3", 0], "positive": ["6", 0], "negative": ["5", 0], "cfg": 5.5},
        },
        "22": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "23": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["3", 0], "scheduler": "karras", "steps": 12, "denoise": 1.0},
        },
        "24": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 640, "height": 384, "batch_size": 2},
        },
        "25": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["20", 0],
                "guider": ["21", 0],
                "sampler": ["22", 0],
                "sigmas": ["23", 0],
                "latent_image": ["24", 0],
            },
        },
        "26": {"class_type": "VAEDecode", "inputs": {"samples": ["25", 0], "vae": ["1", 2]}},
        "27": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["26", 0]}},
    }


def test_sampler_custom_advanced_through_its_helper_nodes_and_loras():
    b = find_bindings(sampler_custom_advanced())
    assert targets(b) == {
        "prompt": ["4.text"],
        "negative": ["5.text"],
        "seed": ["20.noise_seed"],
        "steps": ["23.steps"],
        "cfg": ["21.cfg"],
        "sampler": ["22.sampler_name"],
        "scheduler": ["23.scheduler"],
        "denoise": ["23.denoise"],
        "width": ["24.width"],
        "height": ["24.height"],
        "batch_size": ["24.batch_size"],
        "model": ["1.ckpt_name"],
    }
    assert b.loras == ("2", "3")
    out = apply_bindings(sampler_custom_advanced(), b, {}, loras=[("mine.safetensors", 0.7, 0.6)])
    assert out["2"]["inputs"]["lora_name"] == "mine.safetensors"
    assert (out["2"]["inputs"]["strength_model"], out["2"]["inputs"]["strength_clip"]) == (0.7, 0.6)
    assert out["3"]["inputs"]["lora_name"] == "b.safetensors"
    with pytest.raises(BindingError, match="3 LoRA"):
        apply_bindings(sampler_custom_advanced(), b, {}, loras=[("a", 1, 1)] * 3)


def test_sampler_custom_with_controlnet_between_prompt_and_sampler():
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "pos"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "neg"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}},
        "5": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn"}},
        # outputs 0 = positive, 1 = negative: the sampler's sides are crossed on purpose
        "6": {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["3", 0],
                "negative": ["2", 0],
                "control_net": ["5", 0],
                "image": ["4", 0],
                "strength": 1,
                "start_percent": 0,
                "end_percent": 1,
            },
        },
        "7": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
        },
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {
            "class_type": "KarrasScheduler",
            "inputs": {"steps": 9, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7},
        },
        "10": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["1", 0],
                "add_noise": True,
                "noise_seed": 3,
                "cfg": 6,
                "positive": ["6", 1],
                "negative": ["6", 0],
                "sampler": ["8", 0],
                "sigmas": ["9", 0],
                "latent_image": ["7", 0],
            },
        },
    }
    b = find_bindings(graph)
    t = targets(b)
    assert t["prompt"] == ["2.text"] and t["negative"] == ["3.text"]
    assert t["seed"] == ["10.noise_seed"] and t["cfg"] == ["10.cfg"] and t["steps"] == ["9.steps"]
    assert t["sampler"] == ["8.sampler_name"] and "scheduler" not in t
    assert t["image"] == ["4.image"]  # the ControlNet's image: the only LoadImage


def img2img_graph() -> dict:
    graph = default_graph()
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    graph["11"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["10", 0],
            "upscale_method": "bicubic",
            "width": 512,
            "height": 512,
            "crop": "center",
        },
    }
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    graph["13"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["12", 0], "amount": 2}}
    graph["14"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    graph["3"]["inputs"]["latent_image"] = ["13", 0]
    graph["3"]["inputs"]["denoise"] = 0.6
    return graph


def test_img2img_binds_the_loadimage_the_latent_is_encoded_from():
    b = find_bindings(img2img_graph())
    t = targets(b)
    assert t["image"] == ["10.image"] and t["batch_size"] == ["13.amount"]
    assert "width" not in t and "height" not in t
    assert b.value(img2img_graph(), "denoise") == 0.6


def test_titles_bind_and_beat_the_guess():
    graph = default_graph()
    graph["6"]["_meta"] = {"title": "Negative Prompt"}
    graph["7"]["_meta"] = {"title": "prompt"}
    graph["30"] = {"class_type": "PrimitiveInt", "inputs": {"value": 5}, "_meta": {"title": "Seed"}}
    b = find_bindings(graph)
    t = targets(b)
    assert t["prompt"] == ["7.text"] and t["negative"] == ["6.text"] and t["seed"] == ["30.value"]
    assert {b.options[k].source for k in ("prompt", "negative", "seed")} == {"title"}
    assert b.options["steps"].source == "graph"


def test_explicit_bindings_beat_titles_and_name_every_bad_entry():
    graph = default_graph()
    graph["7"]["_meta"] = {"title": "prompt"}
    b = find_bindings(graph, explicit={"prompt": "6.text", "steps": ["3.steps"]})
    assert targets(b)["prompt"] == ["6.text"] and b.options["prompt"].source == "explicit"
    with pytest.raises(BindingError) as err:
        find_bindings(graph, explicit={"prompt": "99.text", "colour": "3.seed", "seed": "3.nope"})
    text = str(err.value)
    assert (
        "no node '99'" in text and "unknown option 'colour'" in text and "no input 'nope'" in text
    )


def test_apply_writes_values_and_refuses_unbound_options():
    b = find_bindings(default_graph())
    out = apply_bindings(default_graph(), b, {"prompt": "a fox", "width": 64, "cfg": None})
    assert out["6"]["inputs"]["text"] == "a fox" and out["5"]["inputs"]["width"] == 64
    assert out["3"]["inputs"]["cfg"] == 8  # None: left as it is
    assert default_graph()["6"]["inputs"]["text"] != "a fox"  # a copy
    with pytest.raises(BindingError, match="image"):
        apply_bindings(default_graph(), b, {"image": "x.png"})


def test_with_image_input_turns_text_to_image_into_image_to_image():
    graph, b = with_image_input(default_graph(), find_bindings(default_graph()))
    assert graph["3"]["inputs"]["latent_image"] == ["easel_encode", 0]
    assert graph["easel_encode"]["inputs"]["vae"] == ["4", 2]  # the VAEDecode's VAE
    assert b.options["image"].targets == (Target("easel_image", "image"),)
    assert graph["easel_scale"]["inputs"]["width"] == 512 and "batch_size" not in b.options
    again = find_bindings(graph)  # the edited graph reads the same way
    assert targets(again)["image"] == ["easel_image.image"]
