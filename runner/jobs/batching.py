"""Running several jobs' sampler calls as one.

A batch of compatible jobs (same :func:`~runner.jobs.spec.batch_key`) runs as one thread
per job, each executing its own workflow as usual: its own prompts, its own seed, its
own decode and file. When a job's sampler node is reached, it hands its call to the
job's :class:`SamplerBatch` (found in ``NodeContext.extra["sampler_batch"]``) instead of
sampling alone; once every job of the batch has arrived (or finished without needing
the sampler, e.g. from the node cache), one thread runs a combined call for all of them
and each gets its own slice back. The combining itself is the sampling loop's business
(``runner.diffusion.batched`` groups the calls, ``runner.diffusion.sampling.sample`` runs
them); this module only does the meeting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

P = TypeVar("P")
R = TypeVar("R")

BATCH_EXTRA_KEY = "sampler_batch"
"""Key of the :class:`SamplerBatch` in ``NodeContext.extra`` for a job in a batch."""


class SamplerBatch:
    """A meeting point for the sampler calls of the jobs of one batch.

    ``run(job_id, payload, combine)`` blocks until every job of the batch has either
    called ``run`` or :meth:`leave`; then one caller runs ``combine(payloads)`` (job ids
    and payloads in batch order) and everyone gets their own result back. If ``combine``
    raises, every caller raises the same error. A second call from the same job, or one
    after the batch ran, runs ``combine`` for that job alone.
    """

    def __init__(self, job_ids: Sequence[str]):
        self.job_ids = list(job_ids)
        self._cond = threading.Condition()
        self._payloads: dict[str, Any] = {}
        self._left: set[str] = set()
        self._results: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._running = False
        self.combined_sizes: list[int] = []
        """How many jobs each combined call held (for tests and statistics)."""

    def _complete(self) -> bool:
        return all(j in self._payloads or j in self._left for j in self.job_ids)

    def run(self, job_id: str, payload: P, combine: Callable[[list[tuple[str, P]]], list[R]]) -> R:
        """This job's share of the combined call (see the class docstring)."""
        with self._cond:
            late = (
                self._running
                or self._results is not None
                or job_id in self._payloads
                or job_id not in self.job_ids
            )
            if not late:
                self._payloads[job_id] = payload
                self._cond.notify_all()
        if late:
            return combine([(job_id, payload)])[0]
        with self._cond:
            while True:
                if self._results is not None or self._error is not None:
                    break
                if not self._running and self._complete():
                    self._running = True
                    items = [(j, self._payloads[j]) for j in self.job_ids if j in self._payloads]
                    self._cond.release()
                    try:
                        results = combine(items)
                        error = None
                    except BaseException as exc:  # every member raises it
                        results, error = None, exc
                    finally:
                        self._cond.acquire()
                    self.combined_sizes.append(len(items))
                    if error is not None:
                        self._error = error
                    else:
                        self._results = {j: r for (j, _), r in zip(items, results, strict=True)}
                    self._cond.notify_all()
                    break
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return self._results[job_id]

    def leave(self, job_id: str) -> None:
        """This job will not call :meth:`run` (it finished, failed or was cancelled)."""
        with self._cond:
            if job_id not in self._payloads:
                self._left.add(job_id)
                self._cond.notify_all()
