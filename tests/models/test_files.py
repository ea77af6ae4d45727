"""File safety in one place (runner.files): one pickle list and refusal, one safe-path
rule, the safetensors header read with the safetensors library; and every caller (model
manager, LoRA uploads, stored paths) using them."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from runner.errors import ModelError, UnsafeFileError  # noqa: E402
from runner.files import (  # noqa: E402
    PICKLE_SUFFIXES,
    HeaderTooLarge,
    UnsafePath,
    read_safetensors_header,
    refuse_pickle,
    safe_relative_path,
)

ALL_PICKLES = [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"]


def test_one_pickle_list_with_every_suffix() -> None:
    assert sorted(PICKLE_SUFFIXES) == sorted(ALL_PICKLES)


@pytest.mark.parametrize("suffix", [*ALL_PICKLES, ".PICKLE", ".Ckpt"])
def test_refuse_pickle_names_the_file(suffix: str) -> None:
    with pytest.raises(UnsafeFileError) as err:
        refuse_pickle(f"models/weights{suffix}")
    message = str(err.value)
    assert message.startswith(f"models/weights{suffix}: ")
    assert "pickle" in message and "run any code" in message and ".safetensors" in message
    refuse_pickle("models/weights.safetensors")  # nothing to refuse


@pytest.mark.parametrize("suffix", [".pickle", ".pkl"])
def test_every_caller_refuses_every_pickle_suffix(settings, suffix: str) -> None:
    from bot.services import lora_files as lf
    from runner.models.manager import ModelManager

    manager = ModelManager(settings)
    with pytest.raises(UnsafeFileError, match="pickle"):
        manager.resolve_checkpoint(f"model{suffix}")
    with pytest.raises(UnsafeFileError, match="pickle"):
        manager.lora_path(f"style{suffix}")
    with pytest.raises(lf.PickleFile, match=f"^style{suffix}: .*pickle"):
        lf.check_lora_filename(f"style{suffix}")


@pytest.mark.parametrize("name", ["a.safetensors", "sub/b.safetensors", "sub\\c.safetensors"])
def test_safe_relative_path_accepts_plain_names(name: str) -> None:
    assert safe_relative_path(name).as_posix() == name.replace("\\", "/")


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../x", "a/../../b", "a\\..\\..\\b", "C:/x", "c:x", "\\\\server\\s"]
)
def test_one_safe_path_rule_for_models_and_stored_files(settings, name: str) -> None:
    from bot.services.errors import UnsafeStoredPath
    from bot.services.storage import stored_path
    from runner.models.manager import ModelManager

    with pytest.raises(UnsafePath, match="must be a plain name"):
        safe_relative_path(name)
    with pytest.raises(
        ModelError, match="model name .* must be a plain name relative to the models"
    ):
        ModelManager(settings).resolve_checkpoint(name or "")
    with pytest.raises(UnsafeStoredPath, match="outside the data folder"):
        stored_path(settings.data_dir, name)


def test_header_read_with_the_library(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(
        {"a": np.zeros((2, 3), np.float16), "b": np.zeros((4,), np.int32)},
        str(path),
        metadata={"ss_base_model_version": "sd_v1"},
    )
    header = read_safetensors_header(path)
    assert header.shapes == {"a": (2, 3), "b": (4,)}
    assert header.dtypes == {"a": "F16", "b": "I32"}
    assert header.metadata == {"ss_base_model_version": "sd_v1"}
    assert header.header_bytes == int.from_bytes(path.read_bytes()[:8], "little")
    with pytest.raises(HeaderTooLarge, match="claims .* more than the 16 bytes") as err:
        read_safetensors_header(path, max_header_bytes=16)
    assert err.value.claimed == header.header_bytes and isinstance(err.value, ModelError)
