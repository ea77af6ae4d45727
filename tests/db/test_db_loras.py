"""The LoRA library's records: names, visibility, resolution and file references."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from db import loras
from db.errors import FamilyMismatch, Forbidden, InvalidName, InvalidValue, NameTaken, NotFound
from db.models import LoraFamily

ALICE, BOB, CAROL = 1001, 1002, 1003


@pytest.fixture
def add(session: Session, make_sha):
    def add(owner: int, name: str, *, content: str | None = None, **kw: Any):
        digest = make_sha(content or f"{owner}/{name}")
        kw.setdefault("family", "sd1")
        return loras.add_lora(
            session,
            owner,
            name=name,
            sha256=digest,
            path=f"loras/{digest[:2]}/{digest}.safetensors",
            size_bytes=100,
            key_format="diffusers",
            **kw,
        )

    return add


def test_add_and_list(session: Session, add) -> None:
    lora = add(ALICE, "ink", trigger_words=["inky", " sketch ", "inky", ""], default_weight=0.8)
    assert lora.trigger_words == ["inky", "sketch"]
    assert lora.default_weight == 0.8 and lora.shared is False
    assert lora.family is LoraFamily.SD1
    add(ALICE, "bold", family="sdxl")
    assert [x.name for x in loras.list_loras(session, ALICE)] == ["bold", "ink"]
    assert [x.name for x in loras.list_loras(session, ALICE, family="sdxl")] == ["bold"]


def test_names_are_unique_per_owner_not_globally(session: Session, add) -> None:
    add(ALICE, "ink")
    with pytest.raises(NameTaken) as err:
        add(ALICE, "ink", content="other")
    assert err.value.name == "ink"
    add(BOB, "ink")  # another owner may use the same name
    assert len(loras.list_loras(session, ALICE, include_shared=False)) == 1


@pytest.mark.parametrize(
    "name", ["", "../evil", "a/b", "a\\b", "x" * 65, ".hidden", "-x", "with space", "a:b", "<x>"]
)
def test_bad_names_are_refused(session: Session, add, name: str) -> None:
    with pytest.raises(InvalidName) as err:
        add(ALICE, name)
    assert err.value.name == name
    assert loras.list_loras(session, ALICE) == []


def test_path_separators_named_in_the_message(add) -> None:
    with pytest.raises(InvalidName, match="path separators"):
        add(ALICE, "../../etc/passwd")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"family": "sd3"}, "family"),
        ({"default_weight": "1"}, "default_weight"),
        ({"default_weight": 100}, "default_weight"),
        ({"trigger_words": [1]}, "trigger_words"),
        ({"trigger_words": ["x"] * 40}, "trigger_words"),
    ],
)
def test_bad_values_are_refused(add, kw: dict, field: str) -> None:
    with pytest.raises(InvalidValue) as err:
        add(ALICE, "ok", **kw)
    assert err.value.field == field


def test_bad_hash_is_refused(session: Session) -> None:
    with pytest.raises(InvalidValue) as err:
        loras.add_lora(
            session, ALICE, name="x", sha256="nothex", path="p", size_bytes=1,
            family="sd1", key_format="k",
        )  # fmt: skip
    assert err.value.field == "sha256"


def test_private_loras_are_invisible_and_untouchable(session: Session, add) -> None:
    add(ALICE, "secret")
    assert loras.list_loras(session, BOB) == []
    for call in (
        lambda: loras.get_lora(session, BOB, "secret"),
        lambda: loras.resolve_lora(session, BOB, "secret"),
        lambda: loras.rename_lora(session, BOB, "secret", "mine"),
        lambda: loras.remove_lora(session, BOB, "secret"),
        lambda: loras.set_lora_shared(session, BOB, "secret", True),
        lambda: loras.update_lora(session, BOB, "secret", default_weight=0.1),
    ):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.value == "secret"
    lora = loras.get_lora(session, ALICE, "secret")
    assert (lora.name, lora.shared, lora.default_weight) == ("secret", False, 1.0)


def test_shared_loras_are_visible_but_only_the_owner_changes_them(session: Session, add) -> None:
    add(ALICE, "style")
    loras.set_lora_shared(session, ALICE, "style", True)
    assert [(x.owner_id, x.name) for x in loras.list_loras(session, BOB)] == [(ALICE, "style")]
    assert loras.list_loras(session, BOB, include_shared=False) == []
    assert loras.resolve_lora(session, BOB, "style").owner_id == ALICE
    for call in (
        lambda: loras.rename_lora(session, BOB, "style", "x"),
        lambda: loras.remove_lora(session, BOB, "style"),
        lambda: loras.set_lora_shared(session, BOB, "style", False),
    ):
        with pytest.raises(Forbidden):
            call()
    loras.set_lora_shared(session, ALICE, "style", False)
    with pytest.raises(NotFound):
        loras.resolve_lora(session, BOB, "style")


def test_resolution_prefers_own_then_oldest_shared(session: Session, add) -> None:
    add(ALICE, "style", shared=True)
    add(CAROL, "style", shared=True)
    assert loras.resolve_lora(session, BOB, "style").owner_id == ALICE
    add(BOB, "style")
    assert loras.resolve_lora(session, BOB, "style").owner_id == BOB
    own_first = loras.list_loras(session, BOB)
    assert [x.owner_id for x in own_first] == [BOB, ALICE, CAROL]
    found = loras.resolve_loras(session, CAROL, ["style"])
    assert [x.owner_id for x in found] == [CAROL]
    with pytest.raises(NotFound) as err:
        loras.resolve_loras(session, BOB, ["style", "missing"])
    assert err.value.value == "missing"


def test_family_mismatch_is_refused_by_name(session: Session, add) -> None:
    add(ALICE, "xl", family="sdxl")
    assert loras.resolve_lora(session, ALICE, "xl", family=LoraFamily.SDXL).name == "xl"
    with pytest.raises(FamilyMismatch) as err:
        loras.resolve_lora(session, ALICE, "xl", family="sd1")
    assert (err.value.name, err.value.lora_family, err.value.model_family) == ("xl", "sdxl", "sd1")
    assert "'xl'" in str(err.value)


def test_rename(session: Session, add) -> None:
    add(ALICE, "a")
    add(ALICE, "b")
    with pytest.raises(NameTaken):
        loras.rename_lora(session, ALICE, "a", "b")
    with pytest.raises(InvalidName):
        loras.rename_lora(session, ALICE, "a", "x/y")
    assert loras.rename_lora(session, ALICE, "a", "c").name == "c"
    assert loras.rename_lora(session, ALICE, "c", "c").name == "c"
    assert sorted(x.name for x in loras.list_loras(session, ALICE)) == ["b", "c"]


def test_update(session: Session, add) -> None:
    add(ALICE, "a", trigger_words=["x"])
    lora = loras.update_lora(session, ALICE, "a", default_weight=0.5)
    assert (lora.trigger_words, lora.default_weight) == (["x"], 0.5)
    lora = loras.update_lora(session, ALICE, "a", trigger_words=["y", "z"])
    assert (lora.trigger_words, lora.default_weight) == (["y", "z"], 0.5)


def test_remove_returns_the_file_only_when_nothing_references_it(session: Session, add) -> None:
    a = add(ALICE, "same", content="bytes")
    b = add(BOB, "copy", content="bytes")
    assert a.sha256 == b.sha256
    assert loras.count_lora_file_references(session, a.sha256) == 2
    assert loras.find_lora_by_hash(session, BOB, a.sha256).name == "copy"  # type: ignore[union-attr]
    assert loras.remove_lora(session, ALICE, "same") is None
    assert loras.count_lora_file_references(session, a.sha256) == 1
    orphan = loras.remove_lora(session, BOB, "copy")
    assert orphan is not None
    assert (orphan.kind, orphan.sha256, orphan.path) == ("lora", b.sha256, b.path)
    assert loras.count_lora_file_references(session, a.sha256) == 0
    with pytest.raises(NotFound):
        loras.remove_lora(session, BOB, "copy")
