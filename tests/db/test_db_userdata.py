"""Data rights: export all of one user's data, then delete all of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Integer, select
from sqlalchemy.orm import Session

from db import audit, generations, jobs, loras, seeds, userdata, users
from db.engine import Database
from db.errors import NotFound
from db.models import Generation, Lora

ALICE, BOB = 4001, 4002


def _populate(session: Session, make_sha) -> dict[str, int]:
    users.update_settings(session, ALICE, seed_policy="increment", steps=12)
    seeds.seed_for_job(session, ALICE)

    def lora(owner: int, name: str, content: str, shared: bool = False) -> None:
        digest = make_sha(content)
        loras.add_lora(
            session, owner, name=name, sha256=digest, path=f"loras/{digest}.safetensors",
            size_bytes=10, family="sd1", key_format="kohya", shared=shared,
        )  # fmt: skip

    lora(ALICE, "mine", "alice-only")
    lora(ALICE, "common", "common-bytes", shared=True)
    lora(BOB, "bobs", "common-bytes")

    def gen(owner: int, prompt: str, images: list[str], parent: int | None = None) -> int:
        g = generations.record_generation(
            session, owner, prompt=prompt, workflow={"p": prompt}, seed=1, parent_id=parent
        )
        for i, content in enumerate(images):
            digest = make_sha(content)
            generations.add_output(
                session, g.id, index=i, path=f"images/{digest}.png", sha256=digest,
                width=8, height=8, size_bytes=3,
            )  # fmt: skip
        return g.id

    a1 = gen(ALICE, "alice one", ["a-img", "same-img"])
    a2 = gen(ALICE, "alice two", [], parent=a1)
    b1 = gen(BOB, "bob variation", ["same-img", "b-img"], parent=a1)
    jobs.create_job(session, ALICE, request={"prompt": "alice one"}, generation_id=a1)
    bob_job = jobs.create_job(session, BOB, request={"prompt": "bob"}, generation_id=a1)
    audit.log_action(session, ALICE, "plugin.install", target="x")
    audit.log_action(session, BOB, "plugin.install", target="y")
    return {"a1": a1, "a2": a2, "b1": b1, "bob_job": bob_job.id}


def test_export_contains_everything_and_is_json(session: Session, make_sha) -> None:
    ids = _populate(session, make_sha)
    doc = userdata.export_user_data(session, ALICE)
    text = json.dumps(doc)  # JSON-serialisable as is
    assert "bob variation" not in text and "bobs" not in text
    assert doc["format"] == userdata.EXPORT_FORMAT and doc["user"]["id"] == ALICE
    assert doc["settings"]["seed_policy"] == "increment" and doc["settings"]["steps"] == 12
    assert doc["settings"]["last_seed"] is not None
    assert sorted(x["name"] for x in doc["loras"]) == ["common", "mine"]
    assert [g["id"] for g in doc["generations"]] == [ids["a1"], ids["a2"]]
    assert doc["generations"][0]["workflow"] == {"p": "alice one"}
    assert [o["index"] for o in doc["generations"][0]["outputs"]] == [0, 1]
    assert len(doc["jobs"]) == 1 and [a["action"] for a in doc["audit"]] == ["plugin.install"]
    assert {f["path"] for f in doc["files"]} == {
        f"loras/{make_sha('alice-only')}.safetensors",
        f"loras/{make_sha('common-bytes')}.safetensors",
        f"images/{make_sha('a-img')}.png",
        f"images/{make_sha('same-img')}.png",
    }


def test_export_of_unknown_user(session: Session) -> None:
    try:
        userdata.export_user_data(session, 99)
    except NotFound as err:
        assert err.value == 99
    else:  # pragma: no cover
        raise AssertionError("expected NotFound")


def test_export_then_delete_leaves_no_row_of_that_user(database: Database, make_sha) -> None:
    ids = database.run_sync(_populate, make_sha)
    database.read_sync(userdata.export_user_data, ALICE)
    before_bob = database.read_sync(userdata.user_row_counts, BOB)
    assert ("users", "id") in _rows_mentioning(database, ALICE)

    orphans = database.run_sync(userdata.delete_user_data, ALICE)

    # Files only Alice's rows pointed at; shared content stays for Bob.
    assert sorted((o.kind, o.sha256) for o in orphans) == sorted(
        [("lora", make_sha("alice-only")), ("image", make_sha("a-img"))]
    )
    assert set(database.read_sync(userdata.user_row_counts, ALICE).values()) == {0}
    assert database.read_sync(userdata.user_row_counts, BOB) == before_bob
    with database.session() as s:
        assert s.scalars(select(Generation).where(Generation.user_id == ALICE)).all() == []
        bob_gen = s.get(Generation, ids["b1"])
        assert bob_gen is not None and bob_gen.parent_id is None
        assert [x.name for x in s.scalars(select(Lora))] == ["bobs"]
        assert jobs.get_job(s, ids["bob_job"]).generation_id is None
        assert users.get_user(s, ALICE) is None
        assert [e.actor_id for e in audit.list_audit(s)] == [BOB]
    # Nothing left that mentions Alice's id in any column of any table.
    assert _rows_mentioning(database, ALICE) == []
    # Forgetting twice is harmless.
    assert database.run_sync(userdata.delete_user_data, ALICE) == []


def _rows_mentioning(database: Database, value: int) -> list[tuple[str, str]]:
    from db.base import Base

    hits = []
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(getattr(column.type, "impl", column.type), Integer):
                    continue
                if conn.execute(select(column).where(column == value).limit(1)).first():
                    hits.append((table.name, column.name))
    return hits


def test_db_imports_neither_runner_nor_bot_nor_torch() -> None:
    code = (
        "import sys, db.engine, db.models, db.migrate, db.users, db.seeds, db.loras, "
        "db.generations, db.jobs, db.plugins, db.audit, db.userdata; "
        "bad = [m for m in ('runner', 'bot', 'torch', 'discord') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
