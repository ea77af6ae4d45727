"""Small value types returned by the query functions (no ORM state attached)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StoredFile:
    """A file under the data folder that rows point at, named by its content hash.

    Returned by deletions for files that nothing references any more, so the caller
    (which owns the data folder) can remove them.
    """

    kind: Literal["image", "lora", "input"]
    """``input`` is an uploaded init image (img2img), named in ``Generation.parameters``."""
    sha256: str
    path: str


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a longer, ordered list."""

    items: Sequence[T]
    total: int
    offset: int
    limit: int

    @property
    def has_more(self) -> bool:
        """Whether rows exist past this page."""
        return self.offset + len(self.items) < self.total
