"""A progress display for jobs run from the command line (rich), fed by runner events."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class ProgressDisplay:
    """Shows the node running and a bar for sampling steps; use as a context manager."""

    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.enabled,
            transient=True,
        )
        self.task = None

    def __enter__(self) -> ProgressDisplay:
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event) -> None:
        kind = event.type
        if kind == "node_started":
            self.progress.update(
                self.task,
                description=f"{event.class_type} (node {event.node_id})",
                total=None,
                completed=0,
            )
        elif kind == "progress":
            self.progress.update(
                self.task,
                description=f"sampling (node {event.node_id})",
                total=event.total,
                completed=event.step,
            )


class JsonlEvents:
    """Writes every event as one JSON object per line."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream

    def __call__(self, event) -> None:
        data = event.to_dict()
        self.stream.write(json.dumps(data, default=str) + "\n")
        self.stream.flush()
