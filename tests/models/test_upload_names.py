"""Names of uploaded files (issue 10, item 13): a NUL, control or bidi-override character
in the name a user gave a file is not stored or shown as is. One function cleans them
(runner.files.clean_filename); every upload path uses it: a LoRA uploaded from Discord or
added from the command line (stored as the row's original_filename and named in refusals)
and an init image attachment (named when it is refused for its size)."""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if "db" in sys.modules and getattr(sys.modules["db"], "__file__", None) is None:
    del sys.modules["db"]

import pytest  # noqa: E402

NASTY = "sty\x00le\x1b[2J\u202egnp.\u200b\r\nfinal.safetensors"
"""NUL, an ANSI escape, a right-to-left override, a zero-width space and a line break."""


def visible(text: str) -> bool:
    return not any(
        unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") or c in "\u2028\u2029"
        for c in text
    )


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        (NASTY, "style[2Jgnp. final.safetensors"),
        ("a\x00b.png", "ab.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\lora.safetensors", "lora.safetensors"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("\u2066iso\u2069late\u200f.png", "isolate.png"),
        ("tab\there\nand\u2028there.png", "tab here and there.png"),
        ("  spaced   out .png ", "spaced out .png"),
        ("", "upload"),
        ("\x00\x01", "upload"),
        ("..", "upload"),
        ("folder/", "upload"),
        ("ok name (1).safetensors", "ok name (1).safetensors"),
        ("café-ünïcode 画像.png", "café-ünïcode 画像.png"),
    ],
)
def test_clean_filename(name, cleaned):
    from runner.files import clean_filename

    assert clean_filename(name) == cleaned
    assert visible(clean_filename(name))


def test_long_names_keep_their_suffix():
    from runner.files import MAX_FILENAME_CHARS, clean_filename

    cleaned = clean_filename("x" * 500 + ".safetensors")
    assert len(cleaned) == MAX_FILENAME_CHARS and cleaned.endswith(".safetensors")


# A real LoRA upload into a real SQLite library ------------------------------------------


@pytest.fixture
def library(tmp_path, cache_folder):
    from bot.services.loras import LoraLibrary
    from db import migrate
    from db.engine import Database
    from runner.settings import EngineSettings

    settings = EngineSettings(data_dir=tmp_path / "data", cache_folder=cache_folder)
    settings.data_dir.mkdir(parents=True)
    url = f"sqlite:///{settings.data_dir / 'easel.sqlite3'}"
    migrate.upgrade(url)
    database = Database(url)
    yield LoraLibrary(database, settings, family_of=lambda model: "sd1"), database
    database.close()


def stored_names(database) -> list:
    from sqlalchemy import select

    from db.models import Lora

    return database.read_sync(lambda s: [r.original_filename for r in s.scalars(select(Lora))])


def test_a_lora_uploaded_with_control_characters_in_its_name_is_stored_clean(library):
    from tests.services.lora_factory import fake_lora

    lib, database = library
    row = lib.add(1, fake_lora("sd1"), NASTY, name="style", model="tiny-random")
    assert row.original_filename == "style[2Jgnp. final.safetensors"
    assert stored_names(database) == ["style[2Jgnp. final.safetensors"]  # read back from disk


def test_a_refused_lora_names_it_clean(library):
    from bot.services.lora_files import LoraFileError

    lib, _ = library
    with pytest.raises(LoraFileError) as caught:
        lib.add(1, b"x" * 64, "bad\x00\u202e.ckpt", name="bad")
    assert str(caught.value).startswith("bad.ckpt: ") and visible(str(caught.value))


def test_a_lora_added_from_a_file_with_an_escape_in_its_name(library, tmp_path):
    from tests.services.lora_factory import fake_lora

    lib, database = library
    path = tmp_path / "ink\x1b]0;pwned\x07\u202e.safetensors"  # a real file, named so
    path.write_bytes(fake_lora("sd1", "kohya"))
    row = lib.add_file(2, path, name="ink", model="tiny-random")
    assert row.original_filename == "ink]0;pwned.safetensors"
    assert stored_names(database) == ["ink]0;pwned.safetensors"]


def test_an_init_image_refused_for_its_size_is_named_clean(tmp_path):
    from bot.discord.requests import RequestBuilder
    from bot.services.moderation import Refused

    bot = SimpleNamespace(settings=SimpleNamespace(max_upload_mb=1.0))
    attachment = SimpleNamespace(filename="cat\x00\u202egnp.png", size=5_000_000)
    with pytest.raises(Refused) as caught:
        asyncio.run(RequestBuilder(bot).read_attachment(attachment))
    assert str(caught.value).startswith("catgnp.png is 5.0 MB") and visible(str(caught.value))
