"""The engine's side of its monitor's link: who may be its monitor, health answers, the record keys it hands over.

A part of :class:`~.app.Engine` (its state is set up there).
"""

from __future__ import annotations

import logging
from typing import Any

from evproto import (
    CpKey,
    FaultCode,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkDownError,
    MessageReceived,
    ReasonCode,
    Reject,
    RequestReceived,
    Role,
)
from evproto.aio import Link
from evproto.bus.topics import Topic
from evproto.domain.chargepoint import Phase

from ..common import now_ms
from ..files import StateFileError, load_state
from ..gate import NoKey, Owner, OwnerKind

__all__ = ["MonitorLink"]

log = logging.getLogger("evproto.engine")

#: Record keys an engine keeps: the current one and those before it (commands in flight).
KEPT_KEYS = 3


class MonitorLink:
    """The monitor link and the CP keys it brings."""

    def _restore_keys(self, cp_id: str, state: dict[str, Any]) -> None:
        try:
            for k in state.get("keys") or []:
                self._add_key(cp_id, str(k["key_id"]), bytes.fromhex(k["key"]))
            if state.get("central_key"):
                self.keys.trust_central(bytes.fromhex(state["central_key"]))
            self.gate.window.load(state.get("replay") or {})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StateFileError(f"{self.state_path}: its keys cannot be read ({exc})") from None

    def _add_key(self, cp_id: str, key_id: str, key: bytes) -> None:
        if key_id not in self.keys.keys:
            self._key_order.append(key_id)
        self.keys.keys[key_id] = (Owner(OwnerKind.CP, cp_id), key)
        for old in self._key_order[:-KEPT_KEYS]:
            self.keys.keys.pop(old, None)
        del self._key_order[:-KEPT_KEYS]
        self._key_arrived.set()

    def _on_key(self, msg: CpKey) -> None:
        """The monitor hands over the record key Central granted (or withdraws it)."""
        cp = self.cp
        if cp is None:
            return
        if not msg.key_id:
            log.warning("the monitor withdrew the record key (revoked by Central): stopping until a new one")
            self.keys.keys.clear()
            self._key_order.clear()
            self._key_arrived.clear()
            self._save()
            self._apply(cp.stop(now_ms()))
            return
        if len(msg.key) != 32 or len(msg.verify_key) != 32:
            log.error("the monitor handed over a key of the wrong size: ignored")
            return
        self._add_key(cp.cp_id, msg.key_id, msg.key)
        self.keys.trust_central(msg.verify_key)
        self._save()
        log.info("record key %s received", msg.key_id)

    def _sealing_key(self, topic: Topic, record_key: str) -> tuple[str, bytes]:
        if not self._key_order:
            raise NoKey("no record key yet (the monitor has not authenticated)")
        key_id = self._key_order[-1]
        return key_id, self.keys.keys[key_id][1]

    def _on_hello(self, hello: Hello, link: Link) -> Reject | None:
        if hello.role is not Role.MONITOR:
            return Reject(code=ReasonCode.ROLE_NOT_ALLOWED, detail="only a monitor may connect to an engine")
        if not hello.node_id:
            return Reject(code=ReasonCode.INVALID, detail="the monitor must name the charge point")
        certified = link.peer_common_name
        if certified is not None and certified != hello.node_id:
            # Mutual TLS: the CA vouches for the monitor of one CP only.
            log.warning("refused a monitor for %s whose certificate is for %s", hello.node_id, certified)
            return Reject(
                code=ReasonCode.BAD_CREDENTIALS, detail=f"the certificate is for {certified}, not {hello.node_id}"
            )
        if self.monitor is not None and self.monitor.is_open:
            return Reject(
                code=ReasonCode.DUPLICATE_ID,
                detail=f"this engine already has a monitor for {self.cp.cp_id if self.cp else '?'}",
            )
        if self.cp is not None and self.cp.cp_id != hello.node_id and self.cp.phase is not Phase.IDLE:
            return Reject(
                code=ReasonCode.UNKNOWN_ID, detail=f"this engine is serving {self.cp.cp_id} (supply in progress)"
            )
        return None

    async def _session(self, link: Link) -> None:
        assert link.peer_hello is not None
        self.monitor = link
        self._adopt(link.peer_hello.node_id, load_state(self.state_path))
        assert self.cp is not None
        cp = self.cp
        self._apply(cp.monitor_connected(now_ms()))
        try:
            async for event in link.messages:
                if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
                    await link.respond(event, self._health())
                elif isinstance(event, MessageReceived) and isinstance(event.message, CpKey):
                    self._on_key(event.message)
        except LinkDownError as exc:
            log.warning("monitor link lost: %s", exc)
        finally:
            if self.monitor is link:
                self.monitor = None
                self._apply(cp.monitor_lost(now_ms()))

    def _health(self) -> HealthStatus:
        faults = self.cp.faults if self.cp is not None else {}
        if "meter" in faults:
            return HealthStatus(state=HealthState.KO, fault=self.supervisor.health.fault or FaultCode.METER_TIMEOUT)
        if faults:
            return HealthStatus(state=HealthState.KO, fault=FaultCode.SIMULATED)
        return HealthStatus(state=HealthState.OK)
