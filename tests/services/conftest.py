"""Fixtures for the service layer: a migrated SQLite file in the test's data folder, real
LoRA files made with peft for the built-in tiny model, and small fake LoRAs with the key
names and shapes of real SD1, SD2 and SDXL LoRAs."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Make sure the real `db` package wins over tests/db when pytest puts test folders first.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if "db" in sys.modules and getattr(sys.modules["db"], "__file__", None) is None:
    del sys.modules["db"]

from db.engine import Database  # noqa: E402
from tests.services.lora_factory import fake_lora, peft_lora_files  # noqa: E402


@pytest.fixture(scope="session")
def migrated_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file migrated to head once per run; tests get copies."""
    from db import migrate

    path = tmp_path_factory.mktemp("services-db") / "easel.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db(settings, migrated_db_template: Path) -> Iterator[Database]:
    """The database of ``settings``: ``DATA_DIR/easel.sqlite3``, at head."""
    path = settings.data_dir / "easel.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db_template, path)
    database = Database(f"sqlite:///{path}")
    yield database
    database.close()


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory: pytest.TempPathFactory, cache_folder: Path) -> dict[str, Path]:
    """Real LoRA files (made once per run) for the tiny model: ``style``, ``other``,
    ``style_kohya``."""
    return peft_lora_files(cache_folder, tmp_path_factory.mktemp("lora-files"))


@pytest.fixture(scope="session")
def lora_bytes(lora_files: dict[str, Path]) -> dict[str, bytes]:
    """The same files' contents, as an upload hands them over."""
    return {name: path.read_bytes() for name, path in lora_files.items()}


@pytest.fixture
def make_fake_lora() -> Callable[..., bytes]:
    """:func:`fake_lora`: ``make_fake_lora("sd2", "kohya")``."""
    return fake_lora
