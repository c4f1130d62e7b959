"""One hub per API process: reads new execution events once for all its subscribers and hands
each subscriber the ones it asked for, through a bounded queue.

What wakes the hub: on PostgreSQL a `LISTEN wos_events` on a connection of its own (reconnected
when lost) plus a slow safety poll; on SQLite and in memory a poll every `poll_s` while anyone
subscribes (one query per tick for everyone, none when nobody listens). Either way the hub then
reads `events_after(cursor)` and dispatches in id order. A subscriber whose queue is full is
marked overflowed and gets nothing more: its stream ends and the client resumes from the last
id it got (`api.event_stream`).
"""

import asyncio
import logging
import signal
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from database.events import NOTIFY_CHANNEL
from database.interfaces import Event, EventStore
from database.listen import listen_forever

logger = logging.getLogger(__name__)

QUEUE_MAX = 1000
"""Events one subscriber may have waiting; one more and it is disconnected."""
POLL_S = 0.05
SAFETY_POLL_S = 2.0
"""PostgreSQL: a read this often even without notifications (one lost with a connection)."""
RECONNECT_S = 1.0
PAGE = 500


class Subscription:
    """A subscriber's queue. `match` says which events it wants (an execution's are routed to
    its subscribers by id first)."""

    def __init__(self, match: Callable[[Event], bool], execution_id: str | None, maxsize: int):
        self.match, self.execution_id, self.maxsize = match, execution_id, maxsize
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.ended = False
        """The hub is shutting down: the stream ends (the client reconnects later)."""

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.match(event):
            return
        if len(self._queue) >= self.maxsize:
            self.overflowed = True  # what is queued is still delivered, then the stream ends
        else:
            self._queue.append(event)
        self._ready.set()

    async def take(self) -> list[Event]:
        """What is queued (waits for something); [] once overflowed or ended, and drained."""
        while not self._queue and not self.overflowed and not self.ended:
            self._ready.clear()
            await self._ready.wait()
        taken = list(self._queue)
        self._queue.clear()
        return taken

    async def overflow(self) -> None:
        """Returns once the subscription overflowed (for a writer blocked on a slow client)."""
        while not self.overflowed:
            self._ready.clear()
            await self._ready.wait()

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    def restart(self) -> None:
        """Forget what is queued and the overflow (the stream re-reads the store instead)."""
        self._queue.clear()
        self.overflowed = False


class EventHub:
    """Open with `start`, close with `close`; `subscribe` / `unsubscribe` per stream."""

    def __init__(
        self,
        store: EventStore,
        *,
        listen_dsn: str | None = None,
        poll_s: float = POLL_S,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self.store, self.listen_dsn = store, listen_dsn
        self.poll_s, self.queue_max = poll_s, queue_max
        self.cursor = 0
        """The last event id dispatched."""
        self._everyone: set[Subscription] = set()
        self._by_execution: dict[str, set[Subscription]] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ending = False

    @property
    def subscribers(self) -> int:
        return len(self._everyone) + sum(len(s) for s in self._by_execution.values())

    async def subscribe(
        self, match: Callable[[Event], bool], execution_id: str | None = None
    ) -> Subscription:
        """A new subscription: every event committed after this call returns is offered to it
        (and some committed before; readers skip ids they have)."""
        sub = Subscription(match, execution_id, self.queue_max)
        if self._ending:
            sub.end()
            return sub
        async with self._lock:
            if not self.subscribers:  # idle until now: skip what nobody listened to
                self.cursor = max(self.cursor, await self.store.last_event_id())
            if execution_id is None:
                self._everyone.add(sub)
            else:
                self._by_execution.setdefault(execution_id, set()).add(sub)
            if not self._tasks:
                self._start()
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.execution_id is None:
            self._everyone.discard(sub)
            return
        subs = self._by_execution.get(sub.execution_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_execution[sub.execution_id]

    def _start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read_loop(), name="wos-event-hub"))
        if self.listen_dsn is not None:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="wos-event-listen"))

    def end_streams(self) -> None:
        """End every stream (and any opened from now on): the server is shutting down and
        waits for open answers before it stops."""
        self._ending = True
        for sub in [*self._everyone, *(s for subs in self._by_execution.values() for s in subs)]:
            sub.end()

    def end_streams_on_exit(self) -> None:
        """Chain `end_streams` before uvicorn's own SIGINT/SIGTERM handler: uvicorn lets open
        answers finish before it shuts the app down, and a stream never finishes by itself.
        Nothing happens where uvicorn does not handle the signals (tests)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if not isinstance(getattr(previous, "__self__", None), uvicorn.Server):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.end_streams)
                previous(signum, frame)

            signal.signal(sig, handler)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    async def _read_loop(self) -> None:
        """Read and dispatch: after each wake-up (notification, subscription) or poll tick;
        parked while nobody subscribes."""
        interval = SAFETY_POLL_S if self.listen_dsn is not None else self.poll_s
        while True:
            if not self.subscribers:
                self._wake.clear()
                await self._wake.wait()
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._read()
            except Exception as exc:  # noqa: BLE001 - a store hiccup: retried at the next tick
                logger.warning("reading events failed: %s", exc, extra={"action": "event_hub_read"})
                await asyncio.sleep(RECONNECT_S)

    async def _read(self) -> None:
        while self.subscribers:
            page = await self.store.events_after(self.cursor, limit=PAGE)
            for event in page:
                self._dispatch(event)
            if page:
                self.cursor = max(self.cursor, page[-1].id)
            if len(page) < PAGE:
                return

    def _dispatch(self, event: Event) -> None:
        for sub in self._by_execution.get(event.execution_id, ()):
            sub.offer(event)
        for sub in self._everyone:
            sub.offer(event)

    async def _listen_loop(self) -> None:
        """PostgreSQL: LISTEN on a connection of its own; each notification (and each
        reconnection, which may have missed some) wakes the reader."""
        assert self.listen_dsn is not None
        await listen_forever(self.listen_dsn, NOTIFY_CHANNEL, self._wake.set, name="event listener")
