"""What every start does to the data folder (``tidy_data_folder``, run by
``open_database``): finish recorded deletions, sweep stored files no row references, and
remove staging files of dead processes, keeping everything still in use."""

from __future__ import annotations

import os
import time

from bot.services import storage
from bot.services.database import open_database
from bot.services.loras import LoraLibrary
from bot.settings import Settings
from db.results import StoredFile


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def test_start_sweeps_unreferenced_files_and_keeps_the_rest(tmp_path, make_fake_lora):
    settings = _settings(tmp_path)
    with open_database(settings) as db:
        library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
        kept = library.file_path(library.add(1, make_fake_lora("sd1"), "a.safetensors", name="a"))
    images = settings.data_dir / "images"
    images.mkdir()
    leaked_image = images / f"{'a' * 64}.png"  # e.g. a delete killed after its commit
    leaked_lora = settings.lora_library_dir / f"{'b' * 64}.safetensors"
    not_ours = images / "operator-notes.txt"
    for path in (leaked_image, leaked_lora, not_ours):
        path.write_bytes(b"x")
    old_tmp = images / ".tmp-abc"
    young_tmp = images / ".tmp-def"
    old_tmp.write_bytes(b"x")
    young_tmp.write_bytes(b"x")
    past = time.time() - 2 * storage.TEMP_GRACE_S
    os.utime(old_tmp, (past, past))

    with open_database(settings):
        pass
    assert not leaked_image.exists() and not leaked_lora.exists() and not old_tmp.exists()
    assert kept.is_file() and not_ours.is_file() and young_tmp.is_file()


def test_recorded_deletions_are_finished_only_for_unreferenced_files(tmp_path, make_fake_lora):
    settings = _settings(tmp_path)
    with open_database(settings) as db:
        library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
        lora = library.add(1, make_fake_lora("sd1"), "a.safetensors", name="a")
        inputs = settings.input_dir
        inputs.mkdir(parents=True)
        upload = inputs / "0123456789abcdef01234567.png"
        upload.write_bytes(b"png")
        # A deletion that never committed (its rows are there) and one that did.
        storage.record_pending_deletions(
            settings.data_dir,
            [
                StoredFile("lora", lora.sha256, lora.path),
                StoredFile("input", upload.name, f"input/{upload.name}"),
            ],
        )
    with open_database(settings) as db:
        assert library.file_path(lora).is_file()  # still referenced: kept
        assert not upload.exists()  # nothing references it: deleted
        assert not list((settings.data_dir / storage.PENDING_FOLDER).iterdir())


def test_a_staging_file_in_use_is_kept_and_a_dead_ones_removed(tmp_path):
    folder = tmp_path / ".incoming"
    folder.mkdir()
    live, dead = folder / "upload-live.safetensors", folder / "upload-dead.safetensors"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    past = time.time() - 60
    for path in (live, dead):
        os.utime(path, (past, past))
    fd = storage.lock_staging_file(live)
    try:
        assert storage.remove_stale_staging(folder) == [dead]
        assert live.is_file()
    finally:
        storage.release_staging_file(fd)
    assert storage.remove_stale_staging(folder) == [live]


def test_forget_twice_is_harmless(tmp_path, make_fake_lora):
    from bot.services.userdata import forget_user

    settings = _settings(tmp_path)
    with open_database(settings) as db:
        library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
        path = library.file_path(library.add(7, make_fake_lora("sd1"), "a.safetensors", name="a"))
        first = forget_user(db, settings, 7, pm=_no_plugins())
        second = forget_user(db, settings, 7, pm=_no_plugins())
    assert first.files_deleted and not path.exists()
    assert sum(second.rows.values()) == 0 and second.files_deleted == [] and second.complete


def _no_plugins():
    from runner.plugin_manager import build_plugin_manager

    return build_plugin_manager(builtins=(), entry_points=False)
