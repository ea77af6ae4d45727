"""Data rights: exporting one user's data (JSON plus copies of their files) and forgetting
them (every row, the files nobody else uses, and the plugins' deletion hook)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from bot.services import userdata
from bot.services.errors import ExportTargetNotEmpty
from bot.services.history import History
from bot.services.loras import LoraLibrary
from db import audit as db_audit
from db import jobs as db_jobs
from db import users as db_users
from db.errors import NotFound
from db.userdata import user_row_counts
from plugins.templates import build_txt2img
from runner import hookimpl
from runner.executor import RunResult
from runner.plugin_manager import build_plugin_manager
from runner.templates import GenerationRequest, LoraRef
from tests.services.lora_factory import files_under

ALICE, BOB, CAROL = 3001, 3002, 3003


class Recorder:
    """A plugin that remembers whom it was asked to forget."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Path]] = []

    @hookimpl
    def easel_forget_user(self, user_id: int, data_dir: Path) -> None:
        self.calls.append((user_id, data_dir))


class Broken:
    """A plugin whose deletion fails."""

    @hookimpl
    def easel_forget_user(self, user_id: int) -> None:
        raise RuntimeError(f"cannot reach the archive for {user_id}")


@pytest.fixture
def services(db, settings):
    library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
    history = History(
        db,
        settings,
        build_workflow=lambda r: build_txt2img(r, settings.default_model),
        family_of=lambda model: "sd1",
    )
    return library, history


def generate(history: History, settings, user_id: int, color, **kwargs) -> int:
    prepared = history.prepare(
        user_id, GenerationRequest(prompt=f"{user_id} {color}", steps=2, **kwargs)
    )
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    path = settings.output_dir / f"g{prepared.generation_id}.png"
    Image.new("RGB", (8, 8), color).save(path)
    history.record_result(
        prepared.generation_id, RunResult("j", outputs={"9": {"images": [{"path": str(path)}]}})
    )
    return prepared.generation_id


@pytest.fixture
def populated(services, db, settings, make_fake_lora):
    """Alice, Bob and Carol with LoRAs, generations, a job, settings and an audit entry.

    Alice: a private LoRA only she has, a LoRA file Carol has too, two generations (one
    image only hers, one image identical to one of Bob's), one using Bob's shared LoRA.
    Bob: a shared LoRA, a generation whose parent is Alice's.
    """
    library, history = services
    library.add(ALICE, make_fake_lora("sd1"), "mine.safetensors", name="mine", trigger_words=["x"])
    common = make_fake_lora("sd2")
    library.add(ALICE, common, "common.safetensors", name="common")
    library.add(CAROL, common, "c.safetensors", name="carols")
    library.add(BOB, make_fake_lora("sdxl"), "bob.safetensors", name="bobs", shared=True)
    db.run_sync(db_users.update_settings, ALICE, seed_policy="fixed", fixed_seed=7)
    alice_only = generate(history, settings, ALICE, (1, 1, 1))
    alice_shared_image = generate(history, settings, ALICE, (2, 2, 2))
    history.family_of = lambda model: "sdxl"  # "some-xl", the model Bob's LoRA is for
    with_bobs = generate(
        history, settings, ALICE, (3, 3, 3), loras=[LoraRef(name="bobs")], model="some-xl"
    )
    history.family_of = lambda model: "sd1"
    bobs = history.prepare(BOB, GenerationRequest(prompt="bob", steps=2), parent_id=alice_only)
    path = settings.output_dir / "bob.png"
    Image.new("RGB", (8, 8), (2, 2, 2)).save(path)
    history.record_result(
        bobs.generation_id, RunResult("j", outputs={"9": {"images": [{"path": str(path)}]}})
    )
    db.run_sync(db_jobs.create_job, ALICE, request={"prompt": "queued"})
    db.run_sync(db_audit.log_action, ALICE, "lora.share", target="common")
    return {
        "alice_generations": [alice_only, alice_shared_image, with_bobs],
        "bob_generation": bobs.generation_id,
    }


def test_export_writes_the_document_and_copies(populated, db, settings, tmp_path):
    report = userdata.export_user(db, settings, ALICE, tmp_path / "export")
    document = json.loads(report.document.read_text())
    assert document["format"] == "easel.user-export"
    assert document["user"]["id"] == ALICE
    assert document["settings"]["fixed_seed"] == 7
    assert sorted(lora["name"] for lora in document["loras"]) == ["common", "mine"]
    assert [g["id"] for g in document["generations"]] == populated["alice_generations"]
    assert document["generations"][2]["parameters"]["loras"][0]["name"] == "bobs"
    assert len(document["jobs"]) == 1 and document["audit"][0]["action"] == "lora.share"
    assert "bob" not in {g["prompt"] for g in document["generations"]}
    # Every file the rows point at is copied, named by its hash, byte for byte.
    assert len(document["files"]) == len(report.files) == 5  # 2 LoRAs + 3 images
    for entry in document["files"]:
        copy = report.folder / entry["export_path"]
        assert copy.is_file()
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry["sha256"]
        assert (settings.data_dir / entry["path"]).read_bytes() == copy.read_bytes()
    assert report.missing == [] and document["files_missing"] == []


def test_export_refuses_a_non_empty_folder_and_unknown_users(populated, db, settings, tmp_path):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportTargetNotEmpty, match="not empty"):
        userdata.export_user(db, settings, ALICE, target)
    with pytest.raises(NotFound):
        userdata.export_user(db, settings, 424242, tmp_path / "nobody")
    assert not (tmp_path / "nobody").exists()


def test_export_reports_missing_files(populated, db, settings, tmp_path):
    victim = next((settings.data_dir / "images").iterdir())
    victim.unlink()
    report = userdata.export_user(db, settings, ALICE, tmp_path / "export")
    assert report.missing == [f"images/{victim.name}"]


def test_export_then_forget_leaves_nothing_of_the_user(populated, db, settings, tmp_path):
    exported = userdata.export_user(db, settings, ALICE, tmp_path / "export")
    alice_files = {e["path"] for e in json.loads(exported.document.read_text())["files"]}
    before = db.read_sync(user_row_counts, ALICE)
    recorder = Recorder()
    pm = build_plugin_manager(builtins=(), entry_points=False)
    pm.register(recorder, name="recorder")
    pm.register(Broken(), name="broken-archive")
    pm.register(Recorder(), name="second")

    report = userdata.forget_user(db, settings, ALICE, pm=pm)

    assert report.rows == before and report.rows["generations"] == 3
    assert db.read_sync(user_row_counts, ALICE) == dict.fromkeys(before, 0)
    # The plugins: each called, the failing one reported by name, the others unaffected.
    assert recorder.calls == [(ALICE, settings.data_dir)]
    assert set(report.plugins_called) == {"recorder", "broken-archive", "second"}
    assert list(report.plugin_errors) == ["broken-archive"]
    assert "cannot reach the archive for 3001" in report.plugin_errors["broken-archive"]
    assert not report.complete
    # Files: hers are gone, those other users' rows use stay.
    remaining = {
        p.relative_to(settings.data_dir).as_posix() for p in files_under(settings.data_dir)
    }
    kept = set(report.files_kept)
    assert set(report.files_deleted) == alice_files - kept
    assert not (set(report.files_deleted) & remaining)
    assert len(report.files_deleted) == 3  # her own LoRA and two images only she had
    assert kept <= remaining and len(kept) == 2  # the LoRA Carol has, the image Bob has
    library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
    bobs = library.get(CAROL, "bobs")  # Bob's shared LoRA, which Alice used, stays
    assert library.file_path(bobs).is_file()
    assert library.file_path(library.get(CAROL, "carols")).is_file()
    history = History(db, settings)
    bob_generation = history.get(BOB, populated["bob_generation"])
    assert bob_generation.parent_id is None
    assert all(p.is_file() for p in history.output_paths(bob_generation))
    assert history.history(ALICE).total == 0
    with pytest.raises(NotFound):
        userdata.export_user(db, settings, ALICE, tmp_path / "again")


def test_forget_an_unknown_user_and_the_default_plugins(db, settings, monkeypatch):
    report = userdata.forget_user(db, settings, 777)
    assert sum(report.rows.values()) == 0 and report.files_deleted == []
    assert report.complete

    def broken_loading():
        raise ImportError("plugin 'easel-x' is broken")

    monkeypatch.setattr(userdata, "default_forget_plugin_manager", broken_loading)
    report = userdata.forget_user(db, settings, 777)
    assert report.plugin_errors == {"(plugin loading)": "ImportError: plugin 'easel-x' is broken"}


def test_async_export_and_forget(populated, db, settings, tmp_path):
    recorder = Recorder()
    pm = build_plugin_manager(builtins=(), entry_points=False)
    pm.register(recorder, name="recorder")

    async def main():
        exported = await asyncio.to_thread(
            userdata.export_user, db, settings, BOB, tmp_path / "bob"
        )
        forgotten = await asyncio.to_thread(userdata.forget_user, db, settings, BOB, pm=pm)
        return exported, forgotten

    exported, forgotten = asyncio.run(main())
    assert len(exported.files) == 2  # his LoRA and his image
    assert forgotten.rows["loras"] == 1 and recorder.calls == [(BOB, settings.data_dir)]
    # Bob's image is identical to one of Alice's: it stays; his LoRA goes.
    assert len(forgotten.files_kept) == 1 and forgotten.files_kept[0].startswith("images/")
    assert len(forgotten.files_deleted) == 1 and forgotten.files_deleted[0].startswith(
        "lora-library/"
    )
    assert db.read_sync(user_row_counts, BOB) == dict.fromkeys(forgotten.rows, 0)


def test_uploaded_init_images_are_exported_and_forgotten(db, settings, tmp_path):
    """An image a user uploaded for img2img is theirs: exported with their data, deleted by
    forget unless another user's generation used the same image."""
    from db.generations import record_generation
    from db.users import get_or_create_user

    inputs = settings.input_dir
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "aaaa.png").write_bytes(b"alice's upload")
    (inputs / "bbbb.png").write_bytes(b"uploaded by both")

    def populate(session):
        for user in (ALICE, BOB):
            get_or_create_user(session, user)
        record_generation(
            session, ALICE, prompt="a", workflow={}, parameters={"init_image": "aaaa.png"}
        )
        record_generation(
            session, ALICE, prompt="b", workflow={}, parameters={"init_image": "bbbb.png"}
        )
        record_generation(
            session, BOB, prompt="c", workflow={}, parameters={"init_image": "bbbb.png"}
        )

    db.run_sync(populate)
    exported = userdata.export_user(db, settings, ALICE, tmp_path / "export")
    paths = {e["path"] for e in json.loads(exported.document.read_text())["files"]}
    assert {"input/aaaa.png", "input/bbbb.png"} <= paths
    assert (tmp_path / "export" / "files").exists()

    report = userdata.forget_user(
        db, settings, ALICE, pm=build_plugin_manager(builtins=(), entry_points=False)
    )
    assert "input/aaaa.png" in report.files_deleted and not (inputs / "aaaa.png").exists()
    assert "input/bbbb.png" in report.files_kept and (inputs / "bbbb.png").is_file()
