"""What a running node sees besides its inputs: the environment, progress reporting and
cancellation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner import events as ev
from runner.errors import JobCancelled

if TYPE_CHECKING:
    from runner.environment import Environment

log = logging.getLogger(__name__)


class CancelToken:
    """Set from any thread to cancel a job; the job stops at the next node or sampling step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class NodeContext:
    """Passed as the first argument to every node function."""

    env: Environment
    job_id: str
    node_id: str
    class_type: str
    emit: Callable[[ev.Event], None]
    cancel: CancelToken
    previews: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Job-level data set by the caller (``workflow``, ``output_prefix``...)."""

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self.cancel.cancelled:
            raise JobCancelled(f"job {self.job_id} cancelled at node {self.node_id}")

    def warn(self, message: str) -> None:
        """Report a warning in the job's events (:class:`~runner.events.NodeWarning`) and
        the log; the node goes on."""
        log.warning("job %s, node %s (%s): %s", self.job_id, self.node_id, self.class_type, message)
        self.emit(
            ev.NodeWarning(
                self.job_id, node_id=self.node_id, class_type=self.class_type, message=message
            )
        )

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        """Report sampling step ``step`` of ``total`` (and honour cancellation)."""
        self.emit(
            ev.Progress(self.job_id, node_id=self.node_id, step=step, total=total, preview=preview)
        )
        self.check_cancelled()
