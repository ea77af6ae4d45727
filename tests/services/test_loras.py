"""The per-user LoRA library on a real SQLite file and data folder: adding (once by
content hash), listing, renaming, sharing, removing, privacy between users, resolving a
request's names, and a real generation that a library LoRA changes."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from bot.services import lora_files as lf
from bot.services.history import History
from bot.services.loras import AlreadyInLibrary, LoraLibrary, apply_loras, model_family
from db.errors import FamilyMismatch, Forbidden, InvalidName, NameTaken, NotFound
from db.models import Lora
from runner.templates import GenerationRequest, LoraRef
from tests.services.lora_factory import files_under, raw_safetensors

ALICE, BOB, CAROL = 1001, 1002, 1003


@pytest.fixture
def library(db, settings) -> LoraLibrary:
    # The tiny model is SD1; no torch needed to say so in these tests.
    return LoraLibrary(db, settings, family_of=lambda model: "sd1")


def library_files(settings) -> list:
    return files_under(settings.lora_library_dir)


def lora_rows(db) -> list:
    def everything(session):
        return [(r.owner_id, r.name) for r in session.scalars(select(Lora))]

    return db.read_sync(everything)


# ------------------------------------------------------------------------ adding


def test_add_stores_the_file_once_by_hash(library, settings, lora_bytes):
    a = library.add(
        ALICE, lora_bytes["style"], "style.safetensors", name="style", model="tiny-random"
    )
    b = library.add(BOB, lora_bytes["style"], "copy.safetensors", name="mine", model="tiny-random")
    assert a.sha256 == b.sha256
    path = settings.lora_library_dir / f"{a.sha256}.safetensors"
    assert library_files(settings) == [path]
    assert path.read_bytes() == lora_bytes["style"]
    assert a.path == f"lora-library/{a.sha256}.safetensors"
    assert library.file_path(a) == path
    assert (a.family.value, a.key_format, a.original_filename) == (
        "sd1",
        "diffusers",
        "style.safetensors",
    )
    assert (a.shared, a.default_weight, a.trigger_words) == (False, 1.0, [])


def test_add_kohya_with_trigger_words_and_weight(library, lora_bytes):
    row = library.add(
        ALICE,
        lora_bytes["style_kohya"],
        "style_kohya.safetensors",
        name="ink",
        trigger_words=["ink wash", " ", "ink wash", "sumi-e"],
        default_weight=0.6,
        shared=True,
        model="tiny-random",
    )
    assert row.key_format == "kohya"
    assert row.trigger_words == ["ink wash", "sumi-e"]
    assert (row.default_weight, row.shared) == (0.6, True)


def test_family_from_shapes_needs_no_model(library, make_fake_lora):
    assert (
        library.add(
            ALICE, make_fake_lora("sdxl", "kohya"), "xl.safetensors", name="xl"
        ).family.value
        == "sdxl"
    )
    assert (
        library.add(ALICE, make_fake_lora("sd2"), "two.safetensors", name="two").family.value
        == "sd2"
    )


def test_same_file_twice_for_one_user(library, make_fake_lora):
    data = make_fake_lora("sd1")
    library.add(ALICE, data, "a.safetensors", name="first")
    with pytest.raises(AlreadyInLibrary, match="'first'"):
        library.add(ALICE, data, "b.safetensors", name="second")
    assert [r.name for r in library.list_visible(ALICE)] == ["first"]


@pytest.mark.parametrize(
    ("data", "filename", "name", "model", "error"),
    [
        ("ckpt", "model.safetensors", "x", None, lf.PickleFile),
        ("ok", "model.ckpt", "x", None, lf.PickleFile),
        ("truncated", "t.safetensors", "x", None, lf.BadHeader),
        ("longer", "t.safetensors", "x", None, lf.BadHeader),
        ("100mb", "t.safetensors", "x", None, lf.HeaderTooLarge),
        ("nolora", "t.safetensors", "x", None, lf.NotALora),
        ("sd2", "t.safetensors", "x", "tiny-random", lf.WrongFamily),
        ("ok", "t.safetensors", "my/lora", None, InvalidName),
        ("ok", "t.safetensors", "..\\up", None, InvalidName),
        ("ok", "t.safetensors", "", None, InvalidName),
    ],
)
def test_refused_uploads_store_nothing(
    library, settings, db, make_fake_lora, data, filename, name, model, error
):
    import pickle
    import struct

    contents = {
        "ckpt": b"PK\x03\x04" + pickle.dumps({"state_dict": {}}),
        "ok": make_fake_lora("sd1"),
        "truncated": make_fake_lora("sd1")[:40],
        "longer": raw_safetensors(b"{}", length=1 << 20),
        "100mb": struct.pack("<Q", 100 * 1024 * 1024) + b"{}",
        "nolora": _not_a_lora(),
        "sd2": make_fake_lora("sd2"),
    }[data]
    with pytest.raises(error) as info:
        library.add(ALICE, contents, filename, name=name, model=model)
    assert str(info.value)
    assert library_files(settings) == []
    assert lora_rows(db) == []


def _not_a_lora() -> bytes:
    from tests.services.lora_factory import safetensors_bytes

    return safetensors_bytes({"weight": np.zeros((2, 2), np.float16)})


def test_name_taken(library, make_fake_lora, settings):
    library.add(ALICE, make_fake_lora("sd1"), "a.safetensors", name="style")
    with pytest.raises(NameTaken, match="'style'"):
        library.add(ALICE, make_fake_lora("sd2"), "b.safetensors", name="style")
    assert len(library_files(settings)) == 1
    # Another user may use the same name.
    library.add(BOB, make_fake_lora("sd2"), "b.safetensors", name="style")


def test_add_file_checks_the_size_before_reading(library, settings, tmp_path, make_fake_lora):
    path = tmp_path / "big.safetensors"
    path.write_bytes(make_fake_lora("sd1"))
    settings.max_upload_mb = 0.001
    with pytest.raises(lf.FileTooLarge):
        library.add_file(ALICE, path, name="big")
    settings.max_upload_mb = 25
    assert library.add_file(ALICE, path, name="big").name == "big"


# --------------------------------------------------------------- privacy, sharing


def test_other_users_private_lora_is_invisible_and_untouchable(library, make_fake_lora, settings):
    library.add(ALICE, make_fake_lora("sd1"), "a.safetensors", name="secret")
    assert library.list_visible(BOB) == []
    for attempt in (
        lambda: library.get(BOB, "secret"),
        lambda: library.rename(BOB, "secret", "mine"),
        lambda: library.update(BOB, "secret", default_weight=0.1),
        lambda: library.share(BOB, "secret"),
        lambda: library.remove(BOB, "secret"),
        lambda: library.resolve(BOB, ["secret"]),
    ):
        with pytest.raises(NotFound):
            attempt()
    row = library.get(ALICE, "secret")
    assert (row.name, row.default_weight, row.shared) == ("secret", 1.0, False)
    assert len(library_files(settings)) == 1


def test_shared_lora_is_visible_but_only_its_owner_changes_it(library, make_fake_lora):
    library.add(ALICE, make_fake_lora("sd1"), "a.safetensors", name="ink", shared=True)
    library.add(BOB, make_fake_lora("sd2"), "b.safetensors", name="bobs")
    assert [(r.owner_id, r.name) for r in library.list_visible(BOB)] == [
        (BOB, "bobs"),
        (ALICE, "ink"),
    ]
    assert [r.name for r in library.list_visible(BOB, include_shared=False)] == ["bobs"]
    assert library.get(BOB, "ink").owner_id == ALICE
    for attempt in (
        lambda: library.rename(BOB, "ink", "x"),
        lambda: library.remove(BOB, "ink"),
        lambda: library.share(BOB, "ink", False),
        lambda: library.update(BOB, "ink", trigger_words=["x"]),
    ):
        with pytest.raises(Forbidden):
            attempt()
    library.share(ALICE, "ink", False)
    assert [r.name for r in library.list_visible(BOB)] == ["bobs"]


def test_rename_and_update(library, make_fake_lora):
    library.add(ALICE, make_fake_lora("sd1"), "a.safetensors", name="a")
    library.add(ALICE, make_fake_lora("sd2"), "b.safetensors", name="b")
    with pytest.raises(NameTaken):
        library.rename(ALICE, "a", "b")
    with pytest.raises(InvalidName):
        library.rename(ALICE, "a", "x/y")
    assert library.rename(ALICE, "a", "c").name == "c"
    row = library.update(ALICE, "c", trigger_words=["red"], default_weight=0.5)
    assert (row.trigger_words, row.default_weight) == (["red"], 0.5)
    assert library.update(ALICE, "c", default_weight=0.7).trigger_words == ["red"]


def test_remove_deletes_the_file_with_its_last_row(library, settings, make_fake_lora):
    data = make_fake_lora("sd1")
    a = library.add(ALICE, data, "a.safetensors", name="a", shared=True)
    library.add(BOB, data, "a.safetensors", name="b")
    path = library.file_path(a)
    assert library.remove(ALICE, "a") is False  # Bob's row still uses the file
    assert path.is_file()
    assert library.remove(BOB, "b") is True
    assert not path.exists()
    with pytest.raises(NotFound):
        library.remove(BOB, "b")
    assert library_files(settings) == []


# --------------------------------------------------------------------- resolving


def test_resolve_prefers_own_then_shared(library, make_fake_lora):
    library.add(
        ALICE,
        make_fake_lora("sd1"),
        "a.safetensors",
        name="ink",
        shared=True,
        trigger_words=["ink"],
    )
    own = library.add(
        BOB, make_fake_lora("sd1", "kohya"), "b.safetensors", name="ink", default_weight=0.3
    )
    [mine] = library.resolve(BOB, ["ink"])
    assert (mine.owner_id, mine.sha256, mine.strength_model) == (BOB, own.sha256, 0.3)
    assert mine.lora_name == f"{own.sha256}.safetensors"
    [shared] = library.resolve(CAROL, [LoraRef(name="ink", strength_model=0.8, strength_clip=0.2)])
    assert (shared.owner_id, shared.strength_model, shared.strength_clip) == (ALICE, 0.8, 0.2)
    assert shared.trigger_words == ("ink",)
    # A strength the request leaves out is the LoRA's default weight.
    [default] = library.resolve(BOB, [LoraRef(name="ink")])
    assert default.strength_model == 0.3
    [given] = library.resolve(BOB, [("ink", 1.5)])
    assert given.strength_model == 1.5


def test_resolve_refuses_another_family_by_name(db, settings, make_fake_lora):
    families = {"tiny-random": "sd1", "big-xl": "sdxl"}
    library = LoraLibrary(db, settings, family_of=lambda model: families[model or "tiny-random"])
    library.add(ALICE, make_fake_lora("sdxl"), "xl.safetensors", name="xl-style")
    with pytest.raises(FamilyMismatch, match="'xl-style' is for sdxl models") as info:
        library.resolve(ALICE, ["xl-style"], model="tiny-random")
    assert info.value.name == "xl-style"
    assert library.resolve(ALICE, ["xl-style"], model="big-xl")[0].family == "sdxl"


def test_apply_loras_rewrites_names_and_adds_trigger_words(library, make_fake_lora):
    library.add(
        ALICE,
        make_fake_lora("sd1"),
        "a.safetensors",
        name="ink",
        trigger_words=["Ink Wash", "sumi"],
    )
    resolved = library.resolve(ALICE, ["ink"])
    request = GenerationRequest(prompt="a fox, ink wash", loras=[LoraRef(name="ink")], seed=1)
    applied = apply_loras(request, resolved)
    assert applied.prompt == "a fox, ink wash, sumi"
    assert applied.loras[0].name == resolved[0].lora_name
    assert apply_loras(request, resolved, add_trigger_words=False).prompt == "a fox, ink wash"


def test_model_family_of_checkpoint_names(settings):
    assert model_family(settings, "tiny-random") == "sd1"
    assert model_family(settings) == "sd1"  # the configured default
    from runner.errors import ModelError

    with pytest.raises(ModelError, match="no checkpoint named 'nope'"):
        model_family(settings, "nope")


# ---------------------------------------------------------------------- asyncio


def test_async_api_keeps_work_off_the_event_loop(library, db, make_fake_lora, monkeypatch):
    loop_threads: set[int] = set()
    seen: list[str] = []

    def guard(name, fn):
        def wrapper(*args, **kwargs):
            assert threading.get_ident() not in loop_threads, f"{name} ran on the event loop"
            seen.append(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(db, "run_sync", guard("run_sync", db.run_sync))
    monkeypatch.setattr(db, "read_sync", guard("read_sync", db.read_sync))
    monkeypatch.setattr(library, "stage", guard("stage", library.stage))

    async def main():
        loop_threads.add(threading.get_ident())
        data = make_fake_lora("sd1")
        row = await asyncio.to_thread(
            library.add, ALICE, data, "a.safetensors", name="a", shared=True
        )
        await asyncio.to_thread(library.rename, ALICE, "a", "b")
        await asyncio.to_thread(library.update, ALICE, "b", default_weight=0.4)
        await asyncio.to_thread(library.share, ALICE, "b", True)
        listed = await asyncio.to_thread(library.list_visible, BOB)
        got = await asyncio.to_thread(library.get, BOB, "b")
        resolved = await asyncio.to_thread(library.resolve, BOB, ["b"])
        with pytest.raises(AlreadyInLibrary):
            await asyncio.to_thread(library.add, ALICE, data, "again.safetensors", name="c")
        deleted = await asyncio.to_thread(library.remove, ALICE, "b")
        return row, listed, got, resolved, deleted

    row, listed, got, resolved, deleted = asyncio.run(main())
    assert [r.name for r in listed] == ["b"] and got.sha256 == row.sha256
    assert resolved[0].strength_model == 0.4
    assert deleted is True
    assert {"run_sync", "read_sync", "stage"} <= set(seen)


# ------------------------------------------------------------- a real generation


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def test_library_lora_used_by_name_changes_the_image(db, make_env, lora_bytes):
    env = make_env()
    library = LoraLibrary(
        db, env.settings, family_of=lambda m: model_family(env.settings, m, env.models)
    )
    library.add(ALICE, lora_bytes["style"], "style.safetensors", name="style", model="tiny-random")
    history = History.for_environment(db, env)

    def generate(user_id, loras, seed=5):
        request = GenerationRequest(
            prompt="a red fox", seed=seed, steps=2, width=64, height=64, loras=loras
        )
        prepared = history.prepare(user_id, request)
        generation = history.record_result(prepared.generation_id, env.run(prepared.workflow))
        return prepared, _pixels(history.output_paths(generation)[0])

    _, base = generate(ALICE, [])
    prepared, styled = generate(ALICE, [LoraRef(name="style")])
    loaders = [n for n in prepared.workflow.values() if n["class_type"] == "LoraLoader"]
    assert loaders[0]["inputs"]["lora_name"] == f"{prepared.loras[0].sha256}.safetensors"
    assert not np.array_equal(base, styled)
    # Bob cannot use Alice's private LoRA until she shares it.
    with pytest.raises(NotFound):
        generate(BOB, [LoraRef(name="style")])
    library.share(ALICE, "style")
    _, bobs = generate(BOB, [LoraRef(name="style")])
    assert np.array_equal(styled, bobs)


def test_model_family_of_checkpoint_files_and_folders(settings):
    from tests.services.lora_factory import safetensors_bytes

    checkpoints = settings.models_root / "checkpoints"
    checkpoints.mkdir(parents=True)
    one = np.zeros((1,), np.float16)
    unet_in = {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((1, 4, 1, 1), np.float16)}
    sd2 = {**unet_in, "cond_stage_model.model.ln_final.weight": one, "first_stage_model.x": one}
    (checkpoints / "two.safetensors").write_bytes(safetensors_bytes(sd2))
    xl = {
        **unet_in,
        "model.diffusion_model.label_emb.0.0.weight": np.zeros((1, 2816), np.float16),
        "conditioner.embedders.0.transformer.text_model.x": one,
        "conditioner.embedders.1.model.ln_final.weight": one,
        "first_stage_model.x": one,
    }
    (checkpoints / "xl.safetensors").write_bytes(safetensors_bytes(xl))
    folder = checkpoints / "xl-folder"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert model_family(settings, "two.safetensors") == "sd2"  # from the header alone
    assert model_family(settings, "xl.safetensors") == "sdxl"
    assert model_family(settings, "xl-folder") == "sdxl"
