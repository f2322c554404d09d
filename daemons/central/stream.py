"""The console's live stream: one :class:`Broadcaster` in Central, Server-Sent Events to every browser.

Every ``tick_s`` while someone listens, the broadcaster compares Central's view with the
previous tick's, CP by CP and request by request (a CP is serialized again only when it
changed), builds one ``diff`` event from what changed and queues the same bytes for every
subscriber. A new subscriber gets a ``snapshot`` first, assembled from the same per-CP JSON.
A subscriber more than ``max_chunks`` events behind is dropped (its browser reconnects and
gets a snapshot): Central never waits for a browser. The wire format is in docs/central.md.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, Callable

import orjson

from evproto.domain.central.view import CpView, MessageView, SessionView
from evproto.domain.session import SessionStatus

from ..webjson import HttpError
from .panel import STATE_LOOKS

if TYPE_CHECKING:
    from .http_api import CentralBackend

__all__ = ["Broadcaster", "Subscriber", "TooManySubscribers", "KEEPALIVE", "state_looks_json"]

log = logging.getLogger("evproto.central")


def state_looks_json() -> list[dict[str, str]]:
    """The panel's look of each CP state (daemons/central/panel.py STATE_LOOKS) for the page:
    state name, words on the tile, the short word, text and background colours."""
    out = []
    for state, look in STATE_LOOKS.items():
        fg, bg = look.style.color, look.style.bgcolor
        out.append(
            {
                "state": state.name,
                "label": look.detail,
                "short": look.mini,
                "color": fg.get_truecolor().hex if fg is not None else "#000000",
                "background": bg.get_truecolor().hex if bg is not None else "#ffffff",
            }
        )
    return out


class TooManySubscribers(HttpError):
    """Every stream slot is taken (503): the page retries later."""

    http_status = 503


#: Sent when nothing happened for a while: proxies keep the connection, the server sees a closed one.
KEEPALIVE = b": keepalive\n\n"


class Subscriber:
    """One open stream: the chunks waiting to be written to it, bounded."""

    def __init__(self, max_chunks: int, owner: str = "") -> None:
        self.max_chunks = max_chunks
        #: Whom it counts against (daemons/webauth.py ``stream_owner``).
        self.owner = owner
        self._chunks: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        #: Set when it fell ``max_chunks`` behind: it is closed and the browser reconnects.
        self.dropped = False
        self.transport: asyncio.BaseTransport | None = None

    def offer(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False (and the subscriber dropped) when it is too far behind."""
        if self.dropped:
            return False
        if len(self._chunks) >= self.max_chunks:
            self.drop()
            return False
        self._chunks.append(chunk)
        self._wake.set()
        return True

    def drop(self) -> None:
        self.dropped = True
        self._chunks.clear()
        self._wake.set()
        if self.transport is not None:
            # A write stuck on a browser that does not read fails now instead of waiting forever.
            self.transport.close()

    async def take(self, timeout_s: float) -> list[bytes]:
        """The chunks queued, waiting at most ``timeout_s`` for one ([] on timeout)."""
        if not self._chunks and not self.dropped:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout_s)
            except asyncio.TimeoutError:
                return []
        self._wake.clear()
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks


class _Keyed:
    """The previous tick's items by key and their serialized JSON: only changed items are
    serialized again."""

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}
        self.json: dict[Any, bytes] = {}

    def update(self, items: Any, key: Callable[[Any], Any]) -> tuple[list[bytes], list[Any]]:
        """(JSON of the items new or changed, keys gone) since the last call."""
        changed = []
        seen = 0
        for item in items:
            k = key(item)
            seen += 1
            previous = self.items.get(k)
            if previous is not item and previous != item:  # the core hands out unchanged views as they were
                self.items[k] = item
                data = orjson.dumps(item.to_json())
                self.json[k] = data
                changed.append(data)
        gone: list[Any] = []
        if len(self.items) > seen:
            present = {key(item) for item in items}
            gone = [k for k in self.items if k not in present]
            for k in gone:
                del self.items[k], self.json[k]
        return changed, gone


def _array(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


class Broadcaster:
    """Central's one source of console updates.

    Every ``tick_s`` while someone listens it compares the view with the previous tick's
    (CP by CP, request by request: a CP is serialized again only when it changed), and
    writes one ``diff`` event, serialized once, to every subscriber. A subscriber gets a
    ``snapshot`` first, assembled from the same per-CP JSON. A subscriber more than
    ``max_chunks`` events behind is dropped, never waited for.
    """

    def __init__(
        self,
        backend: CentralBackend,
        *,
        tick_s: float = 0.5,
        max_subscribers: int = 100,
        max_per_owner: int = 10,
        max_chunks: int = 64,
        keepalive_s: float = 15.0,
        tickets: int = 20,
        messages: int = 100,
    ) -> None:
        self.backend = backend
        self.tick_s = tick_s
        self.max_subscribers = max_subscribers
        self.max_per_owner = max_per_owner
        self.max_chunks = max_chunks
        self.keepalive_s = keepalive_s
        self.tickets = tickets
        self.subscribers: set[Subscriber] = set()
        #: Events built (each serialized once, whatever the number of subscribers).
        self.serializations = 0
        #: Subscribers dropped for falling behind.
        self.dropped = 0
        self._cps = _Keyed()
        self._requests = _Keyed()
        self._messages: collections.deque[bytes] = collections.deque(maxlen=messages)
        self._last_message: MessageView | None = None
        #: The latest tickets' JSON; None: to be read (at the start, after nobody listened).
        self._tickets: bytes | None = None
        self._status = b"{}"
        self._looks = orjson.dumps(state_looks_json())

    # -- ticks -----------------------------------------------------------------------------

    def _changes(self) -> dict[str, bytes] | None:
        """What changed since the last call, as JSON fragments (None: nothing)."""
        view = self.backend.live_view()
        out: dict[str, bytes] = {}
        cps, removed = self._cps.update(view.cps, _cp_key)
        if cps:
            out["cps"] = _array(cps)
        if removed:
            out["removed"] = orjson.dumps(removed)
        requests, ended = self._requests.update(view.requests, _session_key)
        if requests:
            out["requests"] = _array(requests)
        if ended:
            out["requests_ended"] = orjson.dumps(ended)
        messages = self._new_messages(view.messages)
        if messages:
            out["messages"] = _array(messages)
        # Tickets come from the database: read again only when a supply ended.
        if ended or self._tickets is None:
            tickets = self._recent_tickets()
            if tickets != self._tickets:
                self._tickets = out["tickets"] = tickets
        status = orjson.dumps({"central_id": view.central_id, "kafka_ok": view.kafka_ok})
        if status != self._status:
            self._status = out["status"] = status
        return out or None

    def _new_messages(self, messages: tuple[MessageView, ...]) -> list[bytes]:
        start = 0
        if self._last_message is not None:
            # Messages are kept objects: the last one sent is found by identity from the end.
            for i in range(len(messages) - 1, -1, -1):
                if messages[i] is self._last_message:
                    start = i + 1
                    break
        new = [orjson.dumps(m.to_json()) for m in messages[start:]]
        if messages:
            self._last_message = messages[-1]
        self._messages.extend(new)
        return new

    def _recent_tickets(self) -> bytes:
        ended = [s for s in self.backend.sessions(limit=10 * self.tickets) if not SessionStatus(s.status).live]
        return _array([orjson.dumps(s.to_json()) for s in ended[: self.tickets]])

    @staticmethod
    def _event(kind: bytes, parts: dict[str, bytes]) -> bytes:
        body = b",".join(b'"' + k.encode() + b'":' + v for k, v in parts.items())
        return b'data: {"type":"' + kind + b'",' + body + b"}\n\n"

    def tick(self) -> None:
        """Send what changed since the last tick to every subscriber (nothing without subscribers)."""
        if not self.subscribers:
            return
        changes = self._changes()
        if changes is None:
            return
        chunk = self._event(b"diff", changes)
        self.serializations += 1
        for sub in list(self.subscribers):
            if not sub.offer(chunk):
                self.dropped += 1
                self.subscribers.discard(sub)

    def snapshot(self) -> bytes:
        """Everything a new subscriber needs, as of the last tick."""
        parts = {
            "looks": self._looks,
            "cps": _array(list(self._cps.json.values())),
            "requests": _array(list(self._requests.json.values())),
            "messages": _array(list(self._messages)),
            "tickets": self._tickets or b"[]",
            "status": self._status,
        }
        # "retry": a dropped or cut browser comes back after a second, not the default three.
        return b"retry: 1000\n" + self._event(b"snapshot", parts)

    def subscribe(self, owner: str = "") -> Subscriber:
        """A new subscriber, its snapshot queued. Raises :class:`TooManySubscribers` when
        ``max_subscribers`` are open, or ``max_per_owner`` of ``owner``'s (an empty owner: no
        bound of its own; the HTTP handler always names one)."""
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers(f"the console stream is full ({self.max_subscribers} open); try again later")
        if owner and sum(1 for s in self.subscribers if s.owner == owner) >= self.max_per_owner:
            raise TooManySubscribers(f"{self.max_per_owner} console streams of yours are open already")
        if not self.subscribers:
            # Nobody listened: bring the previous tick up to date quietly, tickets included
            # (supplies may have begun and ended meanwhile).
            self._tickets = None
            self._changes()
        sub = Subscriber(self.max_chunks, owner)
        sub.offer(self.snapshot())
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close_all(self) -> None:
        """Drop every subscriber (shutdown): their streams end."""
        for sub in list(self.subscribers):
            sub.drop()
        self.subscribers.clear()

    async def run(self) -> None:
        """Tick until cancelled. A failing tick is logged and the next one tries again."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:
                log.exception("the console's update tick failed")


def _cp_key(cp: CpView) -> str:
    return cp.id


def _session_key(s: SessionView) -> int:
    return s.id
