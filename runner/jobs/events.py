"""Getting job events to whoever listens: listeners on the worker's thread, asyncio
subscribers on their own loop, and a throttle so a subscriber (a Discord message being
edited, say) gets at most one update per N seconds and always the final state.

Events are the runner's (:mod:`runner.events`) plus :class:`JobEnded`, published once a
job's outcome has been handed to the job store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from runner import events as ev

log = logging.getLogger(__name__)


@dataclass
class JobEnded(ev.Event):
    """The job is over and its outcome stored: ``status`` is done, failed or cancelled."""

    status: str = ""
    error: str | None = None
    worker: str = ""
    images: int = 0
    type: str = field(default="job_ended", init=False)


@dataclass
class JobRequeued(ev.Event):
    """The job went back to the queue (its worker was lost, or the process restarted)."""

    reason: str = ""
    position: int = 0
    type: str = field(default="job_requeued", init=False)


TERMINAL_TYPES = frozenset({"finished", "failed", "cancelled", "job_ended"})
"""Event types that end a job's stream of events (a throttle always delivers them)."""


def is_terminal(event: ev.Event) -> bool:
    """Whether ``event`` ends (or reports the end of) a job."""
    return event.type in TERMINAL_TYPES


class Subscription:
    """An asyncio subscriber's events; iterate with ``async for``. Made by
    :meth:`EventBus.subscribe` on the subscriber's loop; close it when done."""

    def __init__(
        self, bus: EventBus, loop: asyncio.AbstractEventLoop, job_id: str | None, until_end: bool
    ):
        self._bus = bus
        self._loop = loop
        self.job_id = job_id
        self._until_end = until_end
        self._queue: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self.closed = False

    def _offer(self, event: ev.Event) -> None:  # any thread
        if self.closed or (self.job_id is not None and event.job_id != self.job_id):
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed
            self.closed = True

    async def get(self) -> ev.Event | None:
        """The next event, or None once the subscription is closed."""
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events; a pending ``get`` returns None."""
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
            except RuntimeError:
                pass

    def __aiter__(self) -> AsyncIterator[ev.Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ev.Event]:
        while True:
            event = await self.get()
            if event is None:
                return
            yield event
            # A job's stream ends with JobEnded, published after the outcome is stored.
            if self._until_end and self.job_id is not None and event.type == "job_ended":
                self.close()
                return

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fans events out from worker threads. ``publish`` never blocks on a subscriber."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[ev.Event], None]] = []
        self._subscriptions: list[Subscription] = []

    def add_listener(self, listener: Callable[[ev.Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on the publishing thread (keep it quick); returns a
        function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def subscribe(
        self,
        job_id: str | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        until_end: bool = True,
    ) -> Subscription:
        """An asyncio subscription to every event, or to one job's (which ends after its
        :class:`JobEnded` when ``until_end``). Call from the loop that will read it."""
        sub = Subscription(self, loop or asyncio.get_running_loop(), job_id, until_end)
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def publish(self, event: ev.Event) -> None:
        """Hand ``event`` to every listener and subscriber (from any thread)."""
        with self._lock:
            listeners = list(self._listeners)
            subs = list(self._subscriptions)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break the job
                log.exception("event listener %r failed on %s", listener, event.type)
        for sub in subs:
            sub._offer(event)


class Throttle:
    """Decides which events a slow consumer gets: at most one per ``interval`` seconds,
    but always a job's terminal events (and, by :meth:`flush`, the latest one held back).

    ``offer(event)`` returns True when the event should be delivered now.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        if interval < 0:
            raise ValueError(f"throttle interval must not be negative, got {interval}")
        self.interval = interval
        self._clock = clock
        self._last_sent: float | None = None
        self.pending: ev.Event | None = None
        """The latest event held back, if any."""

    def offer(self, event: ev.Event) -> bool:
        """True to deliver ``event`` now; False to hold it back (it becomes ``pending``)."""
        now = self._clock()
        if is_terminal(event) or self._last_sent is None or now - self._last_sent >= self.interval:
            self._last_sent = now
            self.pending = None
            return True
        self.pending = event
        return False

    def due_in(self) -> float | None:
        """Seconds until a held-back event may go out; None when nothing is held."""
        if self.pending is None or self._last_sent is None:
            return None
        return max(0.0, self.interval - (self._clock() - self._last_sent))

    def flush(self) -> ev.Event | None:
        """The held-back event, marking it delivered (None when nothing is held)."""
        event, self.pending = self.pending, None
        if event is not None:
            self._last_sent = self._clock()
        return event


async def throttled(source: AsyncIterator[ev.Event], interval: float) -> AsyncIterator[ev.Event]:
    """Events from ``source``, at most one per ``interval`` seconds; an event held back is
    delivered when its time comes if nothing newer arrived, and terminal events always go
    through at once. ``async for event in throttled(bus.subscribe(job_id), 2.0): ...``"""
    throttle = Throttle(interval)
    iterator = source.__aiter__()
    next_item: asyncio.Task | None = None
    try:
        while True:
            if next_item is None:
                next_item = asyncio.ensure_future(iterator.__anext__())
            wait = throttle.due_in()
            done, _ = await asyncio.wait({next_item}, timeout=wait)
            if not done:  # the held-back event's time has come
                held = throttle.flush()
                if held is not None:
                    yield held
                continue
            task, next_item = next_item, None
            try:
                event = task.result()
            except StopAsyncIteration:
                held = throttle.flush()
                if held is not None:
                    yield held
                return
            if throttle.offer(event):
                yield event
    finally:
        if next_item is not None:
            next_item.cancel()
