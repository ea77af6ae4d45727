"""Recording generations: seeds from the user's policy, the workflow, outputs stored by
hash, status and timings; history pages and filters, privacy, finding a generation from a
Discord message or an image, reruns that give the same image with the real tiny model."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.services.history import History, NoSeedRecorded, with_output_prefix
from bot.services.loras import LoraLibrary
from db import users as db_users
from db.errors import FamilyMismatch, InvalidTransition, NotFound
from db.models import JobStatus, SeedPolicy
from db.seeds import RANDOM_SEED_LIMIT
from plugins.templates import build_txt2img
from runner.errors import JobCancelled, NodeExecutionError, TemplateError
from runner.executor import RunResult
from runner.templates import GenerationRequest, LoraRef

ALICE, BOB = 2001, 2002


@pytest.fixture
def history(db, settings) -> History:
    """A History on the real txt2img template, without an engine: results are made by
    the tests."""

    def build(request: GenerationRequest) -> dict:
        if request.template_name != "txt2img":
            raise TemplateError(f"unknown template {request.template_name!r}")
        return build_txt2img(request, settings.default_model)

    return History(db, settings, build_workflow=build, family_of=lambda model: "sd1")


def request(prompt: str = "a red fox", **kwargs) -> GenerationRequest:
    kwargs.setdefault("steps", 2)
    kwargs.setdefault("width", 64)
    kwargs.setdefault("height", 64)
    return GenerationRequest(prompt=prompt, **kwargs)


def fake_result(settings, *colors: tuple[int, int, int], seconds: float = 0.25) -> RunResult:
    """A RunResult whose SaveImage wrote one 16x8 PNG per colour into the output folder."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i, color in enumerate(colors):
        path = settings.output_dir / f"fake_{len(list(settings.output_dir.iterdir()))}_{i}.png"
        Image.new("RGB", (16, 8), color).save(path)
        images.append({"filename": path.name, "path": str(path)})
    return RunResult("job", outputs={"9": {"images": images}}, seconds=seconds)


def sampler_seed(workflow: dict) -> int:
    return next(n["inputs"]["seed"] for n in workflow.values() if n["class_type"] == "KSampler")


# ---------------------------------------------------------------------- submitting


def test_prepare_records_a_queued_generation(history, db):
    prepared = history.prepare(ALICE, request(seed=42, negative="blurry"), channel_id=5, guild_id=6)
    generation = history.get(ALICE, prepared.generation_id)
    assert generation.status is JobStatus.QUEUED
    assert generation.workflow == prepared.workflow
    assert (generation.seed, sampler_seed(generation.workflow)) == (42, 42)
    assert (generation.prompt, generation.negative_prompt) == ("a red fox", "blurry")
    assert (generation.model, generation.template) == ("tiny-random", "txt2img")
    assert (generation.channel_id, generation.guild_id, generation.parent_id) == (5, 6, None)
    assert generation.parameters["steps"] == 2 and generation.parameters["seed_requested"] == 42
    assert generation.queued_at is not None and generation.started_at is None
    save = prepared.workflow["9"]["inputs"]["filename_prefix"]
    assert save == f"easel-g{prepared.generation_id}"
    assert db.read_sync(db_users.get_settings, ALICE).last_seed == 42


def test_seed_policies_apply_at_submission(history, db):
    first, second = (history.prepare(ALICE, request()).seed for _ in range(2))
    assert first != second and 0 <= first < RANDOM_SEED_LIMIT  # random by default
    db.run_sync(db_users.update_settings, ALICE, seed_policy="fixed", fixed_seed=77)
    assert [history.prepare(ALICE, request()).seed for _ in range(2)] == [77, 77]
    db.run_sync(db_users.update_settings, ALICE, seed_policy=SeedPolicy.INCREMENT)
    assert [history.prepare(ALICE, request()).seed for _ in range(2)] == [78, 79]
    prepared = history.prepare(ALICE, request(seed=5))  # an explicit seed wins
    assert prepared.seed == 5 and sampler_seed(prepared.workflow) == 5
    assert history.prepare(ALICE, request()).seed == 6
    assert history.get(ALICE, prepared.generation_id).seed == 5


def test_reuse_the_seed_of_a_generation(history):
    source = history.prepare(ALICE, request(seed=123456789))
    reused = history.prepare(ALICE, request("another prompt"), reuse_seed_of=source.generation_id)
    assert reused.seed == 123456789
    assert (
        history.get(ALICE, reused.generation_id).parameters["reuse_seed_of"] == source.generation_id
    )
    with pytest.raises(NotFound):
        history.prepare(BOB, request(), reuse_seed_of=source.generation_id)
    assert history.history(BOB).total == 0


def test_reuse_of_a_generation_without_seed(history, db):
    from db.generations import record_generation

    bare = db.run_sync(record_generation, ALICE, prompt="x", workflow={}).id
    with pytest.raises(NoSeedRecorded, match=str(bare)):
        history.prepare(ALICE, request(), reuse_seed_of=bare)


def test_a_request_that_fails_records_nothing(history, db, settings, make_fake_lora):
    with pytest.raises(TemplateError, match="unknown template"):
        history.prepare(ALICE, request(seed=9, template="nope"), channel_id=1)
    library = LoraLibrary(db, settings, family_of=lambda model: "sd1")
    library.add(ALICE, make_fake_lora("sdxl"), "xl.safetensors", name="xl")
    with pytest.raises(FamilyMismatch, match="'xl'"):
        history.prepare(ALICE, request(loras=[LoraRef(name="xl")]))
    with pytest.raises(NotFound, match="'missing'"):
        history.prepare(ALICE, request(loras=[LoraRef(name="missing")]))
    assert history.history(ALICE).total == 0
    assert db.read_sync(db_users.get_settings, ALICE).last_seed is None


def test_parent_generation(history):
    parent = history.prepare(ALICE, request()).generation_id
    child = history.prepare(BOB, request(), parent_id=parent)  # replying to anyone's image
    assert history.get(BOB, child.generation_id).parent_id == parent
    with pytest.raises(NotFound):
        history.prepare(BOB, request(), parent_id=99999)


# ------------------------------------------------------------------------ results


def test_record_result_stores_outputs_by_hash(history, settings):
    prepared = history.prepare(ALICE, request(seed=1))
    result = fake_result(settings, (255, 0, 0), (0, 0, 255), (255, 0, 0))
    sources = [Path(p) for p in result.images]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sources]
    generation = history.record_result(prepared.generation_id, result)
    assert generation.status is JobStatus.DONE
    assert [o.sha256 for o in generation.outputs] == digests
    assert [o.index for o in generation.outputs] == [0, 1, 2]
    assert (generation.outputs[0].width, generation.outputs[0].height) == (16, 8)
    assert generation.outputs[0].path == f"images/{digests[0]}.png"
    paths = history.output_paths(generation)
    assert paths[0] == paths[2]  # the same image is stored once
    assert sorted(p.name for p in (settings.data_dir / "images").iterdir()) == sorted(
        {f"{d}.png" for d in digests}
    )
    for path, digest in zip(paths, digests, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not any(p.exists() for p in sources)  # moved out of the runner's output folder
    assert generation.started_at is not None and generation.finished_at is not None
    assert generation.duration_s == pytest.approx(0.25, abs=0.05)


def test_mark_running_sets_the_start(history, settings):
    prepared = history.prepare(ALICE, request())
    started = history.mark_running(prepared.generation_id).started_at
    generation = history.record_result(prepared.generation_id, fake_result(settings, (1, 2, 3)))
    assert generation.started_at == started and generation.finished_at >= started


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NodeExecutionError("3", "KSampler", "out of memory"), JobStatus.FAILED),
        (JobCancelled("job cancelled"), JobStatus.CANCELLED),
        (RuntimeError(), JobStatus.FAILED),
    ],
)
def test_record_failures(history, error, status):
    prepared = history.prepare(ALICE, request())
    generation = history.record_result(prepared.generation_id, error)
    assert generation.status is status
    assert generation.error == (str(error) or "RuntimeError")
    assert generation.outputs == [] and generation.finished_at is not None
    with pytest.raises(InvalidTransition):
        history.record_result(prepared.generation_id, error)


# ------------------------------------------------------------------------ queries


def test_history_pages_and_filters(history, settings):
    prompts = ["a red fox", "Ein FUCHS im Schnee", "a lighthouse", "fuchsia flowers", "a cat"]
    ids = [history.prepare(ALICE, request(p)).generation_id for p in prompts * 3]
    history.prepare(BOB, request("bob's fox"))
    first = history.history(ALICE, per_page=4)
    assert first.total == 15 and first.has_more
    assert [g.id for g in first.items] == ids[::-1][:4]
    last = history.history(ALICE, page=4, per_page=4)
    assert [g.id for g in last.items] == ids[::-1][12:] and not last.has_more
    fuchs = history.history(ALICE, query="fuchs")
    assert fuchs.total == 6
    assert {g.prompt for g in fuchs.items} == {"Ein FUCHS im Schnee", "fuchsia flowers"}
    assert history.history(ALICE, query="100%").total == 0
    assert history.history(ALICE, status="done").total == 0
    assert [g.prompt for g in history.history(BOB).items] == ["bob's fox"]


def test_other_users_history_is_invisible_and_untouchable(history, settings):
    prepared = history.prepare(ALICE, request(seed=3))
    history.record_result(prepared.generation_id, fake_result(settings, (9, 9, 9)))
    assert history.history(BOB).items == []
    for attempt in (
        lambda: history.get(BOB, prepared.generation_id),
        lambda: history.rerun(BOB, prepared.generation_id),
        lambda: history.delete(BOB, prepared.generation_id),
        lambda: history.prepare(BOB, request(), reuse_seed_of=prepared.generation_id),
    ):
        with pytest.raises(NotFound):
            attempt()
    generation = history.get(ALICE, prepared.generation_id)
    assert generation.status is JobStatus.DONE and len(generation.outputs) == 1
    assert all(p.is_file() for p in history.output_paths(generation))


def test_find_by_message_and_by_image(history, settings):
    prepared = history.prepare(ALICE, request())
    generation = history.record_result(prepared.generation_id, fake_result(settings, (4, 5, 6)))
    history.set_message(generation.id, message_id=987654321012345678, channel_id=42, guild_id=7)
    found = history.find_by_message(987654321012345678)
    assert (found.id, found.user_id, found.channel_id, found.guild_id) == (
        generation.id,
        ALICE,
        42,
        7,
    )
    assert history.find_by_message(1) is None
    image = history.output_paths(generation)[0].read_bytes()
    assert history.find_by_image(image).id == generation.id
    assert history.find_by_image(generation.outputs[0].sha256.upper()).id == generation.id
    assert history.find_by_image(b"other bytes") is None


def test_delete_keeps_files_other_generations_use(history, settings):
    a = history.prepare(ALICE, request()).generation_id
    b = history.prepare(BOB, request()).generation_id
    kept = history.record_result(a, fake_result(settings, (7, 7, 7)))
    history.record_result(b, fake_result(settings, (7, 7, 7), (8, 8, 8)))
    path = history.output_paths(kept)[0]
    assert history.delete(BOB, b) == [f"images/{_sha((8, 8, 8))}.png"]
    assert path.is_file()
    assert history.delete(ALICE, a) == [kept.outputs[0].path]
    assert not path.exists()


def _sha(color) -> str:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), color).save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_with_output_prefix_leaves_the_rest_alone():
    workflow = {
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}}
    }
    changed = with_output_prefix(workflow, 12)
    assert changed["9"]["inputs"] == {"filename_prefix": "easel-g12", "images": ["8", 0]}
    assert workflow["9"]["inputs"]["filename_prefix"] == "x"


# ---------------------------------------------------------------------- asyncio


def test_async_api_runs_off_the_event_loop(history, db, settings, monkeypatch):
    loop_threads: set[int] = set()
    calls: list[str] = []

    def guard(name, fn):
        def wrapper(*args, **kwargs):
            assert threading.get_ident() not in loop_threads, f"{name} ran on the event loop"
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(db, "run_sync", guard("run_sync", db.run_sync))
    monkeypatch.setattr(db, "read_sync", guard("read_sync", db.read_sync))

    async def main():
        loop_threads.add(threading.get_ident())
        prepared = await asyncio.to_thread(history.prepare, ALICE, request(seed=11))
        await asyncio.to_thread(history.mark_running, prepared.generation_id)
        result = await asyncio.to_thread(fake_result, settings, (1, 1, 1))
        generation = await asyncio.to_thread(history.record_result, prepared.generation_id, result)
        await asyncio.to_thread(history.set_message, generation.id, message_id=55, channel_id=66)
        page = await asyncio.to_thread(history.history, ALICE, query="FOX")
        by_message = await asyncio.to_thread(history.find_by_message, 55)
        image = await asyncio.to_thread(history.output_paths(generation)[0].read_bytes)
        by_image = await asyncio.to_thread(history.find_by_image, image)
        got = await asyncio.to_thread(history.get, ALICE, generation.id)
        rerun = await asyncio.to_thread(history.rerun, ALICE, generation.id)
        failed = await asyncio.to_thread(
            history.record_result, rerun.generation_id, RuntimeError("boom")
        )
        deleted = await asyncio.to_thread(history.delete, ALICE, generation.id)
        return generation, page, by_message, by_image, got, rerun, failed, deleted

    generation, page, by_message, by_image, got, rerun, failed, deleted = asyncio.run(main())
    assert page.total == 1 and by_message.id == by_image.id == got.id == generation.id
    assert rerun.seed == 11 and failed.status is JobStatus.FAILED and failed.error == "boom"
    assert deleted == [generation.outputs[0].path]
    assert {"run_sync", "read_sync"} <= set(calls)


# ------------------------------------------------------- the real tiny model


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def test_rerun_gives_the_same_image(db, make_env):
    env = make_env()
    history = History.for_environment(db, env)
    prepared = history.prepare(ALICE, request("a lighthouse at dawn"))
    original = history.record_result(prepared.generation_id, env.run(prepared.workflow))
    pixels = _pixels(history.output_paths(original)[0])

    rerun = history.rerun(ALICE, original.id)
    assert rerun.seed == original.seed and rerun.request is None
    assert rerun.workflow == with_output_prefix(original.workflow, rerun.generation_id)
    # With nothing cached, the same machine gives the same image.
    env.node_cache.clear()
    result = env.run(rerun.workflow)
    assert "3" in result.executed
    again = history.record_result(rerun.generation_id, result)
    assert np.array_equal(_pixels(history.output_paths(again)[0]), pixels)
    assert (again.parent_id, again.seed, again.parameters["rerun_of"]) == (
        original.id,
        original.seed,
        original.id,
    )

    # In the first engine everything up to the image is cached; each generation still
    # gets its own file, and both are recorded.
    third = history.rerun(ALICE, original.id)
    result = env.run(third.workflow)
    assert "3" in result.cached
    cached = history.record_result(third.generation_id, result)
    assert np.array_equal(_pixels(history.output_paths(cached)[0]), pixels)
    assert all(p.is_file() for g in (original, again, cached) for p in history.output_paths(g))
    assert not list(env.settings.output_dir.glob("*.png"))  # every output moved into images/
