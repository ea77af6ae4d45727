"""Events a job emits while it runs. Each is a small dataclass with a ``type`` and a
``to_dict()`` giving one JSON object (what ``easel run --events jsonl`` prints)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Event:
    """Base class: every event knows its job and when it happened."""

    job_id: str
    ts: float = field(default_factory=time.time, kw_only=True)
    type: str = field(default="event", init=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the event."""
        return asdict(self)


@dataclass
class Queued(Event):
    position: int = 0
    type: str = field(default="queued", init=False)


@dataclass
class Started(Event):
    nodes: list[str] = field(default_factory=list)
    type: str = field(default="started", init=False)


@dataclass
class NodeCached(Event):
    node_id: str = ""
    class_type: str = ""
    type: str = field(default="node_cached", init=False)


@dataclass
class NodeStarted(Event):
    node_id: str = ""
    class_type: str = ""
    type: str = field(default="node_started", init=False)


@dataclass
class NodeFinished(Event):
    node_id: str = ""
    class_type: str = ""
    seconds: float = 0.0
    type: str = field(default="node_finished", init=False)


@dataclass
class Progress(Event):
    """Sampling step ``step`` of ``total`` in node ``node_id``; ``preview`` is a small PIL image."""

    node_id: str = ""
    step: int = 0
    total: int = 0
    preview: Any = None
    type: str = field(default="progress", init=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "preview"}
        if self.preview is not None:
            buf = io.BytesIO()
            self.preview.save(buf, format="JPEG", quality=70)
            out["preview_jpeg_b64"] = base64.b64encode(buf.getvalue()).decode()
        return out


@dataclass
class NodeWarning(Event):
    """Something a user should know that did not stop the job (ComfyUI logs these): an
    ``embedding:name`` that does not exist, an input that was partly ignored..."""

    node_id: str = ""
    class_type: str = ""
    message: str = ""
    type: str = field(default="warning", init=False)


@dataclass
class Finished(Event):
    outputs: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0
    type: str = field(default="finished", init=False)


@dataclass
class Failed(Event):
    message: str = ""
    node_id: str | None = None
    class_type: str | None = None
    type: str = field(default="failed", init=False)


@dataclass
class Cancelled(Event):
    node_id: str | None = None
    type: str = field(default="cancelled", init=False)


EventHandler = Callable[[Event], None]


def no_events(event: Event) -> None:
    """An event handler that ignores everything."""
