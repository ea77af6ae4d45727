"""History: recording generations and outputs, paging, search, lookups, ownership."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from db import generations
from db.engine import Database
from db.errors import InvalidTransition, InvalidValue, NotFound
from db.models import JobStatus

ALICE, BOB = 2001, 2002
WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}},
}


def _record(session: Session, user: int = ALICE, prompt: str = "a fox", **kw):
    kw.setdefault("workflow", WORKFLOW)
    return generations.record_generation(session, user, prompt=prompt, **kw)


def _output(session: Session, generation_id: int, index: int, digest: str):
    return generations.add_output(
        session,
        generation_id,
        index=index,
        path=f"images/{digest[:2]}/{digest}.png",
        sha256=digest,
        width=64,
        height=64,
        size_bytes=999,
    )


def test_record_with_outputs_and_full_workflow(session: Session, make_sha) -> None:
    g = _record(
        session,
        seed=123,
        parameters={"steps": 4, "cfg": 7.0},
        model="tiny",
        template="txt2img",
        negative_prompt="blurry",
        channel_id=10,
        guild_id=11,
    )
    assert g.status is JobStatus.QUEUED and g.queued_at is not None
    _output(session, g.id, 0, make_sha("0"))
    _output(session, g.id, 1, make_sha("1"))
    session.expire_all()
    again = generations.get_generation(session, g.id, user_id=ALICE)
    assert again.workflow == WORKFLOW
    assert again.parameters == {"steps": 4, "cfg": 7.0}
    assert (again.seed, again.model, again.template) == (123, "tiny", "txt2img")
    assert [o.index for o in again.outputs] == [0, 1]


def test_bad_records_are_refused(session: Session) -> None:
    with pytest.raises(InvalidValue):
        _record(session, workflow="not a dict")
    with pytest.raises(InvalidValue):
        _record(session, seed=-1)
    with pytest.raises(InvalidValue):
        _record(session, status="exploded")
    with pytest.raises(NotFound):
        _record(session, parent_id=12345)
    with pytest.raises(NotFound):
        _output(session, 12345, 0, "0" * 64)


def test_parent_links_may_cross_users(session: Session) -> None:
    parent = _record(session, ALICE)
    child = _record(session, BOB, template="img2img", parent_id=parent.id)
    assert child.parent_id == parent.id


def test_status_and_timings(session: Session) -> None:
    g = _record(session)
    t = datetime(2025, 3, 1, tzinfo=UTC)
    generations.set_generation_status(session, g.id, "running", at=t)
    g = generations.set_generation_status(
        session, g.id, JobStatus.DONE, at=t + timedelta(seconds=2.5)
    )
    assert (g.started_at, g.finished_at, g.duration_s) == (t, t + timedelta(seconds=2.5), 2.5)
    with pytest.raises(InvalidTransition) as err:
        generations.set_generation_status(session, g.id, "running")
    assert (err.value.current, err.value.requested) == ("done", "running")
    failed = _record(session)
    failed = generations.set_generation_status(session, failed.id, "failed", error="out of memory")
    assert failed.error == "out of memory" and failed.finished_at is not None


def test_message_ids_and_lookup_by_message(session: Session) -> None:
    g = _record(session)
    other = _record(session, BOB)
    generations.set_generation_message(
        session, g.id, message_id=2**62 + 1, channel_id=2**61, guild_id=2**60
    )
    found = generations.find_generation_by_message(session, 2**62 + 1)
    assert found is not None and found.id == g.id
    assert (found.channel_id, found.guild_id) == (2**61, 2**60)
    assert generations.find_generation_by_message(session, 1) is None
    assert other.message_id is None


def test_lookup_by_output_hash(session: Session, make_sha) -> None:
    first = _record(session, ALICE)
    _output(session, first.id, 0, make_sha("img"))
    rerun = _record(session, BOB, seed=first.seed, parent_id=first.id)
    _output(session, rerun.id, 0, make_sha("img"))  # same machine, same image
    found = generations.find_generation_by_output_hash(session, make_sha("img"))
    assert found is not None and found.id == first.id  # the original
    assert generations.count_output_references(session, make_sha("img")) == 2
    assert generations.find_generation_by_output_hash(session, make_sha("none")) is None


def test_history_is_paged_newest_first(session: Session) -> None:
    ids = [_record(session, prompt=f"prompt {n}").id for n in range(25)]
    _record(session, BOB, prompt="bob's")
    first = generations.history(session, ALICE, limit=10)
    assert first.total == 25 and first.has_more
    assert [g.id for g in first.items] == ids[::-1][:10]
    last = generations.history(session, ALICE, offset=20, limit=10)
    assert [g.id for g in last.items] == ids[::-1][20:] and not last.has_more
    with pytest.raises(InvalidValue):
        generations.history(session, ALICE, limit=0)
    with pytest.raises(InvalidValue):
        generations.history(session, ALICE, limit=1000)
    with pytest.raises(InvalidValue):
        generations.history(session, ALICE, offset=-1)


def test_history_filters_by_prompt_ignoring_case(session: Session) -> None:
    for prompt in ("A Red Fox", "red panda", "blue whale", "100% RED", "ÄPFEL und Birnen", "a_b"):
        _record(session, prompt=prompt)
    _record(session, BOB, prompt="red bob")

    def prompts(text: str) -> list[str]:
        page = generations.history(session, ALICE, prompt_contains=text, limit=100)
        return sorted(g.prompt for g in page.items)

    assert prompts("RED") == ["100% RED", "A Red Fox", "red panda"]
    assert prompts("äpfel") == ["ÄPFEL und Birnen"]
    assert prompts("0% r") == ["100% RED"]
    assert prompts("%") == ["100% RED"]
    assert prompts("_") == ["a_b"]
    assert prompts("green") == []
    assert generations.history(session, ALICE, prompt_contains="red", limit=1).total == 3


def test_history_filters_by_status(session: Session) -> None:
    done = _record(session)
    generations.set_generation_status(session, done.id, "done")
    _record(session)
    page = generations.history(session, ALICE, status="done")
    assert [g.id for g in page.items] == [done.id]


def test_other_users_history_is_invisible_and_untouchable(session: Session, make_sha) -> None:
    g = _record(session, ALICE)
    _output(session, g.id, 0, make_sha("a"))
    assert generations.history(session, BOB).total == 0
    with pytest.raises(NotFound):
        generations.get_generation(session, g.id, user_id=BOB)
    with pytest.raises(NotFound):
        generations.delete_generation(session, g.id, user_id=BOB)
    assert generations.get_generation(session, g.id, user_id=BOB, admin=True).id == g.id
    assert generations.get_generation(session, g.id, user_id=ALICE).outputs[0].sha256 == make_sha(
        "a"
    )


def test_delete_generation_returns_unreferenced_images(session: Session, make_sha) -> None:
    g = _record(session)
    _output(session, g.id, 0, make_sha("unique"))
    _output(session, g.id, 1, make_sha("shared"))
    child = _record(session, BOB, parent_id=g.id)
    _output(session, child.id, 0, make_sha("shared"))
    orphans = generations.delete_generation(session, g.id, user_id=ALICE)
    assert [(o.kind, o.sha256) for o in orphans] == [("image", make_sha("unique"))]
    session.expire_all()
    child = generations.get_generation(session, child.id, user_id=BOB)
    assert child.parent_id is None
    with pytest.raises(NotFound):
        generations.get_generation(session, g.id, user_id=ALICE)


def test_returned_rows_are_usable_after_the_session_closes(database: Database, make_sha) -> None:
    def make(session: Session) -> int:
        g = _record(session)
        _output(session, g.id, 0, make_sha("x"))
        return g.id

    gid = database.run_sync(make)
    page = database.read_sync(generations.history, ALICE)
    assert [o.sha256 for o in page.items[0].outputs] == [make_sha("x")]
    by_hash = database.read_sync(generations.find_generation_by_output_hash, make_sha("x"))
    assert by_hash is not None and by_hash.id == gid and len(by_hash.outputs) == 1
