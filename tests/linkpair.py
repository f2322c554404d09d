"""Two sans-I/O LinkConnections wired back to back, with virtual time and a tamperable wire."""

from __future__ import annotations

from typing import Callable

from evproto import Hello, LinkConfig, LinkConnection, Role, Side

Wire = Callable[[str, bytes], bytes]  # (direction "c>s" or "s>c", bytes) -> bytes actually delivered


def passthrough(direction: str, data: bytes) -> bytes:
    return data


class Pair:
    """A client and a server connection; ``t`` is the virtual clock in seconds."""

    def __init__(
        self,
        *,
        keepalive_ms: int = 1000,
        client_config: LinkConfig | None = None,
        server_config: LinkConfig | None = None,
        wire: Wire = passthrough,
        accept: bool = True,
    ) -> None:
        self.t = 0.0
        self.wire = wire
        self.hello = Hello(role=Role.MONITOR, node_id="CP1", keepalive_ms=keepalive_ms)
        self.c = LinkConnection(Side.CLIENT, hello=self.hello, config=client_config)
        self.s = LinkConnection(Side.SERVER, node_id="central", config=server_config)
        self.cev: list[object] = []
        self.sev: list[object] = []
        self.c.start(self.t)
        self.s.start(self.t)
        self.pump()
        if accept:
            self.s.accept(self.t)
            self.pump()

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(10_000):
            a = self.c.data_to_send()
            b = self.s.data_to_send()
            if not a and not b:
                break
            # A wire that drops everything returns b""; that is a loss, not EOF.
            if a and (delivered := self.wire("c>s", a)):
                self.s.receive_data(delivered, self.t)
            if b and (delivered := self.wire("s>c", b)):
                self.c.receive_data(delivered, self.t)
        else:  # pragma: no cover
            raise AssertionError("the two sides never went quiet")
        self.cev += self.c.events()
        self.sev += self.s.events()

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds pass, firing every timer that falls due, in order."""
        target = self.t + dt
        for _ in range(100_000):
            due = [d for d in (self.c.get_timer(), self.s.get_timer()) if d is not None and d <= target]
            if not due:
                break
            self.t = max(self.t, min(due))
            self.c.handle_timer(self.t)
            self.s.handle_timer(self.t)
            self.pump()
        self.t = target

    def take(self, side: str, kind: type) -> list:
        """Remove and return the events of type ``kind`` collected for side "c" or "s"."""
        evs = self.cev if side == "c" else self.sev
        out = [e for e in evs if isinstance(e, kind)]
        evs[:] = [e for e in evs if not isinstance(e, kind)]
        return out
