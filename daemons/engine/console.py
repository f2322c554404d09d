"""The engine's keys (plug, unplug, KO, recover, manual supply, status, quit) and its status line.

A part of :class:`~.app.Engine` (its state is set up there).
"""

from __future__ import annotations

import logging
import uuid

from evproto.idents import id_problem

from ..common import now_ms, stdin_lines

__all__ = ["EngineConsole"]

log = logging.getLogger("evproto.engine")


class EngineConsole:
    """The keys a person at the CP types."""

    async def _keys(self) -> None:
        async for line in stdin_lines():
            word, _, arg = line.partition(" ")
            word = word.lower()
            cp = self.cp
            now = now_ms()
            if word in ("q", "quit"):
                assert self._stop is not None
                self._stop.set()
                return
            if word in ("h", "?", "help"):
                log.info("keys: p plug · u unplug · k KO · r recover · m DRIVER manual supply · s status · q quit")
                continue
            if cp is None:
                log.warning("no charge point yet: waiting for the monitor to connect")
                continue
            if word in ("p", "plug"):
                self._apply(cp.plug(now))
            elif word in ("u", "unplug"):
                self._apply(cp.unplug(now))
            elif word in ("k", "ko"):
                self._apply(cp.set_ko(now))
            elif word in ("r", "recover"):
                self._apply(cp.recover(now))
            elif word in ("m", "manual"):
                driver = arg.strip()
                problem = id_problem(driver) if driver else None
                if not driver:
                    log.warning("usage: m DRIVER_ID")
                elif problem is not None:
                    log.warning("manual supply refused: driver id %s", problem)
                else:
                    self._apply(cp.manual_request(driver, uuid.uuid4().hex, now))
            elif word in ("s", "status"):
                log.info("%s", self.status_line())
            else:
                log.warning("unknown key %r (h for help)", line)

    def status_line(self) -> str:
        cp = self.cp
        if cp is None:
            return "waiting for the monitor"
        flags = [name for name, on in (("monitor", cp.monitor_up), ("central", cp.central_up)) if on]
        flags += [name for name, on in (("KO", cp.ko), ("STOPPED", cp.stopped)) if on]
        text = f"{cp.cp_id}: {cp.phase.value} [{' '.join(flags) or 'alone'}]"
        if cp.supply is not None:
            s = cp.supply
            text += f" session {s.session_id} driver {s.driver_id}: {s.energy_kwh:.3f} kWh {s.amount_eur:.2f} EUR"
        text += f"; {len(self.outbox)} event(s) waiting for Kafka" if self.outbox else ""
        quarantined = self.records.count if self.records is not None else 0
        return text + (f"; {quarantined} command(s) quarantined (dead-letters.jsonl)" if quarantined else "")
