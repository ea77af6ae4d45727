"""Choosing the device and dtype: CUDA (fp16, or bf16 when asked), Apple MPS, else CPU fp32."""

from __future__ import annotations

import os

import torch

from runner.settings import EngineSettings

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(settings: EngineSettings) -> torch.device:
    """The device in force: the configured one, else the first available of CUDA, MPS, CPU."""
    wanted = settings.device
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        index = settings.gpu_index if settings.gpu_index < torch.cuda.device_count() else 0
        return torch.device("cuda", index)
    mps = getattr(torch.backends, "mps", None)
    if wanted in ("auto", "mps") and mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(settings: EngineSettings, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and MPS, fp32 on CPU, unless the settings name one."""
    if settings.dtype != "auto":
        if device.type == "cpu" and settings.dtype == "float16":
            return torch.float32  # fp16 convolutions are not implemented on every CPU build
        return _DTYPES[settings.dtype]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def system_memory_bytes() -> int:
    """Total physical memory, or 8 GiB if it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 1024**3


def memory_budget_bytes(settings: EngineSettings, device: torch.device) -> int:
    """How much memory loaded models may take: the configured budget, else 80 % of the
    GPU's memory or half of the machine's."""
    if settings.model_cache_gb > 0:
        return int(settings.model_cache_gb * 1024**3)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    return system_memory_bytes() // 2
