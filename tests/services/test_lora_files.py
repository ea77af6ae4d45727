"""Inspection of LoRA files before anything is loaded: accepted formats, family detection
from shapes, and every kind of refused file, each leaving nothing behind."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bot.services import lora_files as lf
from runner.models.families import lora_family
from tests.services.lora_factory import files_under, raw_safetensors, safetensors_bytes

MB = 1024 * 1024


def stage(data: bytes, tmp_path: Path, filename: str = "upload.safetensors", **kwargs):
    kwargs.setdefault("max_bytes", 25 * MB)
    return lf.stage_lora_upload(data, filename, tmp_path / "staging", **kwargs)


# ----------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("name", "key_format", "tensors"), [("style", "diffusers", 80), ("style_kohya", "kohya", 120)]
)
def test_real_peft_loras_in_both_formats(lora_bytes, tmp_path, name, key_format, tensors):
    with stage(lora_bytes[name], tmp_path, f"{name}.safetensors", expected_family="sd1") as staged:
        info = staged.info
        assert staged.path.is_file()
    assert info.key_format == key_format
    assert info.components == ("unet", "text_encoder")
    assert info.rank == 4 and info.modules == 40 and info.tensor_count == tensors
    # The tiny model's widths (32) match no real family: the chosen model's family is used.
    assert info.family == "sd1" and "chosen model" in info.family_evidence
    assert info.size_bytes == len(lora_bytes[name])
    assert files_under(tmp_path) == []  # discarded on leaving the block


@pytest.mark.parametrize("key_format", ["diffusers", "kohya"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_family_from_shapes(make_fake_lora, tmp_path, family, key_format):
    info = lf.inspect_lora_file(_write(tmp_path, make_fake_lora(family, key_format)))
    assert info.family == family
    assert info.key_format == key_format
    expected_components = (
        ("unet", "text_encoder", "text_encoder_2") if family == "sdxl" else ("unet", "text_encoder")
    )
    assert info.components == expected_components


def test_family_from_the_unet_alone(make_fake_lora, tmp_path):
    info = lf.inspect_lora_file(_write(tmp_path, make_fake_lora("sd2", text=False)))
    assert info.family == "sd2"
    assert "cross-attention width 1024" in info.family_evidence


def test_family_from_kohya_metadata_when_shapes_do_not_tell(tmp_path):
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": np.zeros((2, 32), np.float32),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": np.zeros((32, 2), np.float32),
    }
    data = safetensors_bytes(tensors, {"ss_base_model_version": "sdxl_base_v1-0"})
    info = lf.inspect_lora_file(_write(tmp_path, data))
    assert info.family == "sdxl" and "ss_base_model_version" in info.family_evidence


def test_shapes_that_disagree_are_refused(tmp_path):
    tensors = {
        "unet.a.attn2.to_k.lora_A.weight": np.zeros((1, 768), np.float16),
        "unet.a.attn2.to_k.lora_B.weight": np.zeros((320, 1), np.float16),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": np.zeros(
            (1, 1024), np.float16
        ),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": np.zeros(
            (1024, 1), np.float16
        ),
    }
    with pytest.raises(lf.FamilyConflict, match="disagree"):
        lf.inspect_lora_file(_write(tmp_path, safetensors_bytes(tensors)))


def test_unknown_family_without_a_model_is_refused(lora_bytes, tmp_path):
    with pytest.raises(lf.FamilyUnknown, match="cannot tell which base model"):
        stage(lora_bytes["style"], tmp_path)
    assert files_under(tmp_path) == []


# ----------------------------------------------------------------------- refused


def _write(tmp_path: Path, data: bytes, name: str = "lora.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pickle_checkpoint(tmp_path: Path) -> bytes:
    """What torch.save writes (a zip holding a pickle), made without torch."""
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}))
    return path.read_bytes()


def _header(tensors: dict) -> bytes:
    return json.dumps(tensors).encode()


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("zip pickle renamed", lf.PickleFile, "zip archive"),
        ("plain pickle renamed", lf.PickleFile, "pickle"),
        ("empty file", lf.BadHeader, "too short"),
        ("truncated header", lf.BadHeader, "not JSON"),
        ("header longer than the file", lf.BadHeader, "truncated"),
        ("header claims 100 MB", lf.HeaderTooLarge, "is not a LoRA file"),
        ("tensor past the end", lf.BadHeader, "truncated"),
        ("offsets disagree with shape", lf.BadHeader, "does not match"),
        ("trailing bytes", lf.BadHeader, "extra or missing bytes"),
        ("no tensors", lf.NotALora, "no tensors"),
        ("checkpoint keys", lf.NotALora, "full checkpoint"),
        ("other keys", lf.NotALora, "no LoRA keys"),
        ("lycoris", lf.NotALora, "LyCORIS"),
        ("some keys not lora", lf.NotALora, "not LoRA weights"),
        ("down without up", lf.NotALora, "no up"),
        ("ranks differ", lf.NotALora, "rank"),
        ("mixed formats", lf.NotALora, "mixes"),
        ("integer weights", lf.NotALora, "floating point"),
    ],
)
def test_refused_files_leave_nothing(tmp_path, case, error, message):
    data = _bad_file(tmp_path, case)
    with pytest.raises(error, match=message) as info:
        stage(data, tmp_path, "mine.safetensors")
    assert str(info.value).startswith("mine.safetensors: ")
    assert "staging" not in str(info.value)  # the temporary file's path never shows
    assert files_under(tmp_path / "staging") == []


def _bad_file(tmp_path: Path, case: str) -> bytes:
    f32 = {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]}
    good_pair = {
        "unet.a.attn1.to_q.lora_A.weight": np.zeros((2, 8), np.float32),
        "unet.a.attn1.to_q.lora_B.weight": np.zeros((8, 2), np.float32),
    }
    if case == "zip pickle renamed":
        return _pickle_checkpoint(tmp_path)
    if case == "plain pickle renamed":
        return pickle.dumps({"weights": [1, 2, 3]}, protocol=4)
    if case == "empty file":
        return b""
    if case == "truncated header":
        full = safetensors_bytes(good_pair)
        return raw_safetensors(full[8:40], length=32)
    if case == "header longer than the file":
        return raw_safetensors(b'{"a": 1}', length=5000)
    if case == "header claims 100 MB":
        return raw_safetensors(b"{}", length=100 * MB)
    if case == "tensor past the end":
        return raw_safetensors(_header({"unet.a.lora_A.weight": f32}), b"\0" * 8)
    if case == "offsets disagree with shape":
        bad = {**f32, "data_offsets": [0, 12]}
        return raw_safetensors(_header({"unet.a.lora_A.weight": bad}), b"\0" * 12)
    if case == "trailing bytes":
        return safetensors_bytes(good_pair) + b"\0" * 16
    if case == "no tensors":
        return safetensors_bytes({})
    if case == "checkpoint keys":
        return safetensors_bytes(
            {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float16)}
        )
    if case == "other keys":
        return safetensors_bytes({"emb_params": np.zeros((2, 768), np.float16)})
    if case == "lycoris":
        return safetensors_bytes({"lora_unet_a.hada_w1_a": np.zeros((2, 2), np.float16)})
    if case == "some keys not lora":
        return safetensors_bytes(
            {**good_pair, "unet.a.attn1.to_q.weight": np.zeros((8, 8), np.float32)}
        )
    if case == "down without up":
        return safetensors_bytes({"unet.a.attn1.to_q.lora_A.weight": np.zeros((2, 8), np.float32)})
    if case == "ranks differ":
        return safetensors_bytes(
            {
                "unet.a.attn1.to_q.lora_A.weight": np.zeros((2, 8), np.float32),
                "unet.a.attn1.to_q.lora_B.weight": np.zeros((8, 3), np.float32),
            }
        )
    if case == "mixed formats":
        return safetensors_bytes(
            {
                **good_pair,
                "lora_unet_b.lora_down.weight": np.zeros((2, 8), np.float32),
                "lora_unet_b.lora_up.weight": np.zeros((8, 2), np.float32),
            }
        )
    if case == "integer weights":
        return safetensors_bytes(
            {
                "unet.a.attn1.to_q.lora_A.weight": np.zeros((2, 8), np.int32),
                "unet.a.attn1.to_q.lora_B.weight": np.zeros((8, 2), np.int32),
            }
        )
    raise AssertionError(case)


@pytest.mark.parametrize("filename", ["model.ckpt", "lora.pt", "weights.bin", "x.PTH"])
def test_pickle_suffixes_are_refused_by_name(make_fake_lora, tmp_path, filename):
    with pytest.raises(lf.PickleFile, match="pickle"):
        stage(make_fake_lora("sd1"), tmp_path, filename)
    assert not (tmp_path / "staging").exists()


def test_other_suffixes_are_refused(make_fake_lora, tmp_path):
    with pytest.raises(lf.NotSafetensors, match="suffix '.png'"):
        stage(make_fake_lora("sd1"), tmp_path, "cat.png")


def test_path_in_the_file_name_is_dropped(make_fake_lora, tmp_path):
    with stage(make_fake_lora("sd1"), tmp_path, "../../etc/x.safetensors") as staged:
        assert staged.filename == "x.safetensors"
        assert staged.path.parent == tmp_path / "staging"


def test_size_and_count_limits(make_fake_lora, tmp_path):
    data = make_fake_lora("sdxl")
    with pytest.raises(lf.FileTooLarge, match="more than the"):
        stage(data, tmp_path, max_bytes=len(data) - 1)
    with pytest.raises(lf.TooManyTensors, match="holds 8 tensors, more than the 4 allowed"):
        stage(make_fake_lora("sdxl", "kohya"), tmp_path, max_tensors=4)
    with pytest.raises(lf.HeaderTooLarge):
        stage(data, tmp_path, max_header_bytes=64)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(("lora", "model"), [("sd2", "sd1"), ("sdxl", "sd1"), ("sd1", "sd2-v")])
def test_wrong_family_for_the_chosen_model(make_fake_lora, tmp_path, lora, model):
    with pytest.raises(lf.WrongFamily, match=f"for {lora} models") as info:
        stage(make_fake_lora(lora), tmp_path, expected_family=model, model_name="my-model")
    assert "'my-model'" in str(info.value)
    assert info.value.expected == lora_family(model)
    assert files_under(tmp_path) == []


def test_commit_moves_once_by_content(make_fake_lora, tmp_path):
    data = make_fake_lora("sd1")
    target = tmp_path / "library" / "x.safetensors"
    first = stage(data, tmp_path)
    assert first.commit(target) is True
    second = stage(data, tmp_path)
    assert second.commit(target) is False  # already there: the temporary copy goes
    assert target.read_bytes() == data
    assert files_under(tmp_path / "staging") == []
