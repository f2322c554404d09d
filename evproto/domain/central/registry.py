"""Central's rules for its registry and the CPs' monitors: who is registered, who is
connected, what their engines report, and the operator's STOP and RESUME.

A part of :class:`~evproto.domain.central.core.CentralCore` (its state is set up there).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from evproto.bus.topics import Topic
from evproto.domain.events import MAX_PRICE_EUR_KWH, ResumeCommand, StopCommand
from evproto.domain.session import SessionInput, SessionStatus
from evproto.idents import id_problem, text_problem
from evproto.messages import (
    CpState,
    FaultCode,
    ReasonCode,
    Reject,
)

from .effects import Effect, Forget, Publish, SaveCp
from .errors import RegistryBusyError, UnknownCpError, UnknownDriverError
from .records import CpRecord, HealthReport

if TYPE_CHECKING:
    from .core import CentralCore

__all__ = ["RegistryRules"]


class RegistryRules:
    """CPs and drivers, monitors and health, operator commands."""

    def register_driver(self, driver_id: str) -> bool:
        """Add a driver; False if it was known already."""
        if driver_id in self.drivers:
            return False
        self.drivers.add(driver_id)
        return True

    def carry_over(self, old: CentralCore) -> None:
        """Take from ``old`` what only memory knows, after this core was rebuilt from the
        database: which monitors are connected and their engines' health, live figures,
        the restart grace and held requests, the registration allowance, counters."""
        for cp in self.cps.values():
            prev = old.cps.get(cp.id)
            if prev is None:
                continue
            cp.connected, cp.engine_ok, cp.fault = prev.connected, prev.engine_ok, prev.fault
            cp.weather_unknown = prev.weather_unknown
            if cp.supplying and prev.supplying:
                cp.power_kw, cp.energy_kwh, cp.amount_eur = prev.power_kw, prev.energy_kwh, prev.amount_eur
        self.ignored = old.ignored
        self._registrations = old._registrations
        self._known_at_start = old._known_at_start
        self._removed = old._removed
        self._grace_until_ms = old._grace_until_ms
        self._held = {c: sid for c, sid in old._held.items() if sid in self.sessions}
        self._asked_ms = {sid: t for sid, t in old._asked_ms.items() if sid in self.sessions}
        self._fault_told = {sid for sid in old._fault_told if sid in self.sessions}

    def start(self, now_ms: int) -> list[Effect]:
        """Central is up: open the restart grace. Requests still waiting for a CP's answer
        are held too, and asked again once their CP's monitor is back (an engine answers
        the same authorisation again the same way)."""
        self._fx = []
        self._grace_until_ms = now_ms + int(self.rules.restart_grace_s * 1000)
        for s in self.sessions.values():
            if s.status is SessionStatus.REQUESTED and s.cp_id in self.cps:
                self._held[s.cp_id] = s.id
                s.deadline_ts_ms = max(s.deadline_ts_ms, self._grace_until_ms + int(self.rules.answer_timeout_s * 1000))
        return self._take()

    def remove_driver(self, driver_id: str) -> list[Effect]:
        """Unregister a driver (its past sessions stay). UnknownDriverError when unknown;
        RegistryBusyError while it has a supply in progress."""
        self._fx = []
        if driver_id not in self.drivers:
            raise UnknownDriverError(driver_id)
        live = next((s for s in self.sessions.values() if s.driver_id == driver_id), None)
        if live is not None:
            raise RegistryBusyError(
                f"driver {driver_id} has a supply {live.status.value} at {live.cp_id}; wait for it to end"
            )
        self.drivers.discard(driver_id)
        self._note(f"driver {driver_id} removed")
        self._fx.append(Forget(driver_id=driver_id))
        return self._take()

    def remove_cp(self, cp_id: str) -> list[Effect]:
        """Unregister a CP (its past sessions stay). UnknownCpError when unknown;
        RegistryBusyError while a supply is in progress there (stop it first)."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None:
            raise UnknownCpError(cp_id)
        if cp.session_id is not None:
            raise RegistryBusyError(f"{cp_id} has a supply in progress; stop it first")
        del self.cps[cp_id]
        # Its monitor, if still running, must not simply register it again.
        self._removed[cp_id] = None
        while len(self._removed) > 10_000:
            self._removed.popitem(last=False)
        self._note(f"charge point {cp_id} removed")
        self._fx.append(Forget(cp_id=cp_id))
        return self._take()

    def add_cp(self, cp_id: str, location: str, price: float, stopped: bool = False) -> None:
        """A CP registered from outside (the command line, while Central runs)."""
        if cp_id not in self.cps:
            self.cps[cp_id] = CpRecord(id=cp_id, location=location, price_eur_kwh=price, stopped=stopped)
            self._removed.pop(cp_id, None)

    # -- monitors (socket) -----------------------------------------------------------------

    def hello(
        self, cp_id: str, location: str, price: float | None, now_ms: int, source: str = ""
    ) -> tuple[Reject | None, list[Effect]]:
        """Decide on a monitor's Hello: registration of a new CP, or authentication.

        The id, location and price follow the rules every event follows (evproto.idents,
        MAX_PRICE_EUR_KWH). New registrations are rate-limited per ``source`` (the
        monitor's address) and in total; a refused one is answered BUSY (try later).
        """
        self._fx = []
        problem = (id_problem(cp_id) and f"charge point id {id_problem(cp_id)}") or (
            text_problem(location) and f"location {text_problem(location)}"
        )
        if problem is None and price is not None and not (math.isfinite(price) and 0 <= price <= MAX_PRICE_EUR_KWH):
            problem = f"price {price} EUR/kWh is not plausible (0 to {MAX_PRICE_EUR_KWH:g})"
        if problem is not None:
            return Reject(code=ReasonCode.INVALID, detail=problem), []
        cp = self.cps.get(cp_id)
        if cp is None:
            if not self.rules.auto_register_cps:
                return Reject(code=ReasonCode.UNKNOWN_ID, detail=f"unknown charge point {cp_id}; register it first"), []
            if not location or price is None:
                return (
                    Reject(
                        code=ReasonCode.UNKNOWN_ID,
                        detail=f"unknown charge point {cp_id}: give its location and price to register it",
                    ),
                    [],
                )
            if cp_id in self._removed:
                return Reject(
                    code=ReasonCode.UNKNOWN_ID,
                    detail=f"{cp_id} was removed by an operator; register it again with `ev-central cps add`",
                ), []
            if len(self.cps) >= self.rules.max_cps:
                return Reject(
                    code=ReasonCode.NOT_AVAILABLE,
                    detail=f"this Central holds its maximum of {self.rules.max_cps} charge points",
                ), []
            wait_s = self._registrations.allow(source, now_ms / 1000)
            if wait_s:
                self.ignored["registration_refused"] += 1
                return Reject(
                    code=ReasonCode.BUSY, detail=f"too many new charge points; try again in {math.ceil(wait_s)} s"
                ), []
            cp = CpRecord(id=cp_id, location=location, price_eur_kwh=price)
            self.cps[cp_id] = cp
            self._note(f"registered new charge point {cp_id} at {location}, {price:.2f} EUR/kWh")
            self._fx.append(SaveCp(copy.copy(cp)))
            return None, self._take()
        if cp.connected:
            return Reject(code=ReasonCode.DUPLICATE_ID, detail=f"{cp_id} is already connected"), []
        changed = False
        if location and location != cp.location:
            cp.location, changed = location, True
        if price is not None and price != cp.price_eur_kwh:
            cp.price_eur_kwh, changed = price, True
        if changed:
            self._note(f"{cp_id} updated: {cp.location}, {cp.price_eur_kwh:.2f} EUR/kWh")
            self._fx.append(SaveCp(copy.copy(cp)))
        return None, self._take()

    def monitor_connected(self, cp_id: str, now_ms: int) -> list[Effect]:
        """The monitor's link is open: the CP is visible again. Re-send the operator's state."""
        self._fx = []
        cp = self.cps[cp_id]
        before = cp.state
        cp.connected = True
        cp.revoked = False  # connected again means authenticated again (when Central authenticates)
        cp.engine_ok = True  # until the monitor's first report says otherwise
        cp.fault = FaultCode.NONE
        self._note(f"{cp_id} connected")
        command = StopCommand(cp_id=cp_id, ts_ms=now_ms) if cp.stopped else ResumeCommand(cp_id=cp_id, ts_ms=now_ms)
        self._fx.append(Publish(Topic.CP_COMMANDS, cp_id, command))
        self._state_changed(cp, before, now_ms)
        held = self.sessions.get(self._held.pop(cp_id, -1))
        if held is not None and held.status is SessionStatus.REQUESTED:
            if cp.state is CpState.ACTIVATED:
                self._ask(held, cp, now_ms)
            else:
                self._transition(
                    held,
                    SessionInput.CP_REFUSED,
                    now_ms,
                    reason="cp_not_available",
                    text=f"{cp_id} is back but {cp.state.name}, not ACTIVATED",
                )
        return self._take()

    def revoked(self, cp_id: str, now_ms: int) -> list[Effect]:
        """``cp_id``'s keys were revoked: what it reports from now on is refused, so its
        supply in progress ends here with what it had reported ("key_revoked")."""
        self._fx = []
        cp = self.cps[cp_id]
        cp.revoked = True
        s = self.sessions.get(cp.session_id) if cp.session_id is not None else None
        if s is not None:
            self._transition(
                s,
                SessionInput.FINISHED_EARLY,
                now_ms,
                reason="key_revoked",
                text=f"{cp_id}'s key was revoked: {s.energy_kwh:.3f} kWh, {s.amount_eur:.2f} EUR",
            )
        self._note(f"{cp_id}: keys revoked; it must authenticate again", "warning")
        return self._take()

    def monitor_lost(self, cp_id: str, clean: bool, detail: str, now_ms: int) -> list[Effect]:
        """The monitor's link ended; ``clean`` when it said goodbye."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None or not cp.connected:
            return []
        before = cp.state
        cp.connected = False
        how = "signed off" if clean else f"lost ({detail or 'no goodbye'})"
        self._note(f"{cp_id} monitor {how}", "info" if clean else "warning")
        self._state_changed(cp, before, now_ms)
        return self._take()

    def engine_health(self, cp_id: str, report: HealthReport, now_ms: int) -> list[Effect]:
        """The monitor's report on its engine: OK, or KO/silent with a fault."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None:
            return []
        before = cp.state
        ok = report.ok
        fault = report.fault.name + (f": {report.detail}" if report.detail else "")
        if ok != cp.engine_ok:
            cp.engine_ok = ok
            cp.fault = FaultCode.NONE if ok else report.fault
            if ok:
                self._note(f"{cp_id} engine recovered", key=f"health:{cp_id}")
            else:
                self._note(f"{cp_id} engine fault: {fault}", "error", key=f"health:{cp_id}")
                s = self.sessions.get(cp.session_id) if cp.session_id is not None else None
                if s is not None and s.id not in self._fault_told:
                    # Once per session: a flapping engine must not flood the driver's partition.
                    self._fault_told.add(s.id)
                    self._update(s, s.status.value, "cp_fault", f"{cp_id} reports a fault ({fault})", now_ms)
        self._state_changed(cp, before, now_ms)
        return self._take()

    # -- operator --------------------------------------------------------------------------

    def stop(self, cp_id: str | None, now_ms: int) -> tuple[list[str], list[Effect]]:
        """STOP one CP (or all when None): out of service, any supply ends."""
        return self._admin(cp_id, True, now_ms)

    def resume(self, cp_id: str | None, now_ms: int) -> tuple[list[str], list[Effect]]:
        """RESUME one CP (or all when None)."""
        return self._admin(cp_id, False, now_ms)

    def _admin(self, cp_id: str | None, stop: bool, now_ms: int) -> tuple[list[str], list[Effect]]:
        self._fx = []
        if cp_id is not None and cp_id not in self.cps:
            raise UnknownCpError(cp_id)
        targets = [self.cps[cp_id]] if cp_id is not None else list(self.cps.values())
        for cp in targets:
            before = cp.state
            cp.stopped = stop
            self._fx.append(SaveCp(copy.copy(cp)))
            if stop or not cp.out_of_order:  # a RESUME under a weather stop only clears the operator's
                event = StopCommand(cp_id=cp.id, ts_ms=now_ms) if stop else ResumeCommand(cp_id=cp.id, ts_ms=now_ms)
                self._fx.append(Publish(Topic.CP_COMMANDS, cp.id, event))
            self._state_changed(cp, before, now_ms)
        verb = "STOP" if stop else "RESUME"
        self._note(f"{verb} sent to {cp_id or 'all charge points'}")
        return [c.id for c in targets], self._take()

    # -- weather ---------------------------------------------------------------------------

    def weather(self, location: str, celsius: float | None, now_ms: int) -> tuple[list[str], list[Effect]]:
        """The weather service's news for ``location``: the CPs there, and the effects.

        Below 0 °C every CP there stops ("weather"); at 0 °C or above the weather stop
        clears, and a CP resumes unless an operator stopped it too. ``None`` (the provider
        did not answer) changes nothing but the "weather unknown" alert: an outage of the
        weather service never stops a CP.
        """
        self._fx = []
        where = location.casefold()
        targets = [cp for cp in self.cps.values() if cp.location.casefold() == where]
        for cp in targets:
            before = cp.state
            changed = cp.weather_unknown != (celsius is None)
            cp.weather_unknown = celsius is None
            if celsius is not None and (celsius < 0) != cp.weather_stopped:
                cp.weather_stopped = celsius < 0
                changed = True
                if not cp.stopped:  # the operator's stop already holds the engine stopped
                    event = (
                        StopCommand(cp_id=cp.id, ts_ms=now_ms)
                        if cp.weather_stopped
                        else ResumeCommand(cp_id=cp.id, ts_ms=now_ms)
                    )
                    self._fx.append(Publish(Topic.CP_COMMANDS, cp.id, event))
                what = "stopped: below 0 °C" if cp.weather_stopped else "weather stop cleared"
                self._note(f"{cp.id} at {cp.location}: {what} ({celsius:.1f} °C)", key=f"weather:{cp.id}")
            if changed:
                self._fx.append(SaveCp(copy.copy(cp)))
                self._state_changed(cp, before, now_ms)
        return [c.id for c in targets], self._take()
