"""Engine settings: one pydantic-settings object read from a TOML file and the environment.

Every field ``name`` can be set as ``EASEL_NAME`` in the environment (which wins over
the file) or as ``name = ...`` in the TOML file named by ``EASEL_CONFIG`` (default
``easel.toml`` in the current folder, if present). The bot extends this class with its
own Discord and database settings (``bot.settings.Settings``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def config_file_path() -> Path:
    """The TOML configuration file in force: ``$EASEL_CONFIG`` or ``./easel.toml``."""
    return Path(os.environ.get("EASEL_CONFIG", "easel.toml")).expanduser()


class EngineSettings(BaseSettings):
    """Everything the runner needs to know: folders, device, memory, limits, speed options."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path("easel-data"),
        description="Folder for outputs, inputs, caches and the database.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="Models folder in ComfyUI's layout (checkpoints/, loras/, vae/). "
        "Defaults to DATA_DIR/models; may point at an existing ComfyUI models folder.",
    )
    cache_folder: Path | None = Field(
        default=None,
        description="Where built models and tokenizers are kept; defaults to DATA_DIR/cache.",
    )
    extra_model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="More models folders in the same layout, searched after models_dir.",
    )
    default_model: str = Field(
        default="tiny-random", description="Checkpoint used when a request names none."
    )
    allow_hub_downloads: bool = Field(
        default=False,
        description="Allow Hugging Face repo ids as model names (needs a network; off by default).",
    )

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    gpu_index: int = 0
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    attention: Literal["sdpa", "default"] = Field(
        default="sdpa", description="Attention implementation: PyTorch SDPA or the library default."
    )
    vae_tiling: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Decode/encode in tiles; 'auto' tiles images larger than 1024 px.",
    )
    low_vram: bool = Field(
        default=False, description="Model CPU offload: slower, much less GPU memory."
    )
    compile: bool = Field(
        default=False, description="torch.compile the UNet (slow first run, faster after)."
    )
    model_cache_gb: float = Field(
        default=0.0, description="Memory budget for loaded models in GB; 0 = auto."
    )
    node_cache_size: int = Field(
        default=256, ge=1, description="Node outputs kept for reuse (most entries)."
    )
    node_cache_mb: float = Field(
        default=1024.0,
        gt=0,
        description="Memory budget for node outputs kept for reuse (images, latents, "
        "conditioning) in MB; least recently used are dropped first. Models are not counted.",
    )

    max_width: int = Field(default=2048, ge=64)
    max_height: int = Field(default=2048, ge=64)
    max_steps: int = Field(default=150, ge=1)
    max_batch: int = Field(default=8, ge=1)
    max_upload_mb: float = Field(
        default=25.0, gt=0, description="Largest image or LoRA file accepted."
    )

    threads: int = Field(default=0, ge=0, description="CPU threads for torch; 0 = torch's default.")

    plugins_dir: Path | None = Field(
        default=None,
        description="Drop-in plugins folder (modules or packages, like ComfyUI's custom_nodes); "
        "defaults to DATA_DIR/plugins.",
    )
    plugin_packages_dir: Path | None = Field(
        default=None,
        description="Where plugins installed with pip live (a pip --prefix); "
        "defaults to DATA_DIR/plugin-packages.",
    )
    plugin_hook_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="A plugin's hook that runs longer is abandoned and the plugin disabled; 0 = no limit.",
    )

    # Input checks (issue 10, input) ---------------------------------------------------
    max_prompt_chars: int = Field(
        default=8000,
        ge=1,
        description="Longest prompt text a CLIPTextEncode node takes (checked before anything "
        "loads, whoever sent the workflow).",
    )
    allow_model_symlinks_outside: bool = Field(
        default=False,
        description="Follow symbolic links in the models folders that point outside them "
        "(off: such links are left out of the model lists, with a warning).",
    )

    # Model files ----------------------------------------------------------------
    allow_pickle_weights: bool = Field(
        default=True,
        description="Load pickle-based weights (.ckpt/.pt/.pth/.bin) found in the models "
        "folders with PyTorch's restricted weights_only unpickler (tensors only; a file "
        "needing more is refused). Uploads are always safetensors-only.",
    )
    extra_model_paths: Path | None = Field(
        default=None,
        description="ComfyUI's extra_model_paths.yaml to read more model folders from; by "
        "default the one of the ComfyUI install models_dir belongs to, if any.",
    )

    @field_validator("extra_model_dirs", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order is priority: explicit arguments, then the environment, then the TOML file.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file_path())
        return (init_settings, env_settings, toml)

    # Derived folders -------------------------------------------------------------
    @property
    def models_root(self) -> Path:
        """The main models folder (ComfyUI layout)."""
        return self.models_dir or (self.data_dir / "models")

    @property
    def model_roots(self) -> list[Path]:
        """All models folders, searched in order."""
        return [self.models_root, *self.extra_model_dirs]

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    @property
    def lora_library_dir(self) -> Path:
        """Where the bot's per-user LoRA library keeps files, named ``<sha256>.safetensors``."""
        return self.data_dir / "lora-library"

    @property
    def cache_dir(self) -> Path:
        return self.cache_folder or (self.data_dir / "cache")

    @property
    def plugins_root(self) -> Path:
        """The drop-in plugins folder."""
        return self.plugins_dir or (self.data_dir / "plugins")

    @property
    def plugin_packages_root(self) -> Path:
        """The pip prefix that plugin installs go to."""
        return self.plugin_packages_dir or (self.data_dir / "plugin-packages")
