"""The engine's own state machine: authorise, plug, supply, end (pure, table-driven).

One :class:`ChargePoint` per engine. Inputs are method calls with the time passed
in (epoch milliseconds); each returns a list of effects for the engine daemon to
carry out: :class:`Emit` an event to Kafka, :class:`Say` something to the
operator, :class:`Persist` the state. Flags (monitor up, KO, stopped, Central
reachable) are guards; the phase (idle, authorised, supplying) is what the
transition table is keyed by.

Energy is metered, not assumed: the supply's energy is the sum of positive
increments of the meter's register since the plug-in. A register that goes
backwards (a meter reset) adds nothing, so a reset can never produce negative
or double-counted energy; nor does one that jumps further than MAX_POWER_KW
could deliver since the previous reading (a glitch, a swapped meter), so the
figures always stay within what the event schemas accept.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..messages import EndReason
from .chargepoint_table import CP_ACTIONS, CP_TABLE, INPUT_ARGS, CpAction, CpInput, Phase, render_markdown
from .events import (
    ENERGY_SLACK_KWH,
    MAX_POWER_KW,
    AuthorizationAnswer,
    AuthorizeCommand,
    Event,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
)

__all__ = [
    "Phase",
    "CpInput",
    "CpAction",
    "CP_TABLE",
    "CP_ACTIONS",
    "INPUT_ARGS",
    "render_markdown",
    "Emit",
    "Say",
    "Persist",
    "Effect",
    "AutoMode",
    "Supply",
    "ChargePoint",
]


# Why a supply ends, for inputs that end one (SupplyFinished.reason).
_END_REASONS = {
    CpInput.MONITOR_DOWN: EndReason.MONITOR_LOST,
    CpInput.STOP: EndReason.STOPPED,
    CpInput.KO: EndReason.FAULT,
    CpInput.UNPLUG: EndReason.UNPLUGGED,
}


# -- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish ``event`` (to cp-events, or driver-requests for a manual request)."""

    event: Event


@dataclass(frozen=True, slots=True)
class Say:
    """Tell the operator (engine screen / log)."""

    text: str
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Persist:
    """The durable state changed: write :meth:`ChargePoint.snapshot` to disk now."""


Effect = Emit | Say | Persist


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoMode:
    """Unattended behaviour for demos: plug in after a delay, stop after a target."""

    plug_delay_s: float = 1.5
    #: Used when the request carries no target of its own.
    default_duration_s: float = 10.0


@dataclass(slots=True, kw_only=True)
class Supply:
    """The authorised or running supply."""

    session_id: int
    driver_id: str
    request_id: str
    price_eur_kwh: float
    authorized_ts_ms: int
    expires_ts_ms: int
    target_energy_kwh: float | None = None
    target_duration_s: float | None = None
    started_ts_ms: int | None = None
    energy_wh: float = 0.0
    power_w: float = 0.0
    last_progress_ts_ms: int = 0
    #: When the meter was last read during the supply (0: not yet): how far ``energy_wh`` is known.
    last_reading_ts_ms: int = 0

    @property
    def energy_kwh(self) -> float:
        return self.energy_wh / 1000.0

    @property
    def amount_eur(self) -> float:
        return self.energy_kwh * self.price_eur_kwh


class ChargePoint:
    """The engine's domain model. See the module docstring."""

    def __init__(
        self,
        *,
        cp_id: str,
        auto: AutoMode | None = None,
        progress_interval_ms: int = 1000,
        offline_supply: bool = False,
        offline_price_eur_kwh: float = 0.0,
        progress_with_reading: bool = False,
    ) -> None:
        self.cp_id = cp_id
        self.auto = auto
        #: Serve manual supplies while Central is unreachable (reported with ``offline`` later).
        self.offline_supply = offline_supply
        #: Price used offline: the last price Central authorised at this CP.
        self.offline_price_eur_kwh = offline_price_eur_kwh
        self.progress_interval_ms = progress_interval_ms
        #: Report progress with the reading that makes it due (the meter input), not at the
        #: next tick: no reading waits for a tick, and a tick never reports an older reading
        #: just before a new one arrives.
        self.progress_with_reading = progress_with_reading
        self.phase = Phase.IDLE
        self.monitor_up = False
        #: Whether Central's heartbeats are heard; None until the engine knows either way.
        self.central_up: bool | None = None
        #: Active faults by source ("key": the KO key, "meter": a failing meter) and what they say.
        self.faults: dict[str, str] = {}
        self._fresh_reading = False
        self.stopped = False
        self.supply: Supply | None = None
        #: Last meter register value (Wh) and power (W), None before the first reading.
        self.meter_energy_wh: float | None = None
        #: When the last reading was taken (not persisted: after a restart no supply is running).
        self.meter_ts_ms: int | None = None
        self.meter_power_w = 0.0
        self.meter_resets = 0
        #: Readings that jumped beyond what MAX_POWER_KW delivers (not counted).
        self.meter_jumps = 0
        self._fx: list[Effect] = []

    # -- inputs ----------------------------------------------------------------------------

    def monitor_connected(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.MONITOR_UP, now_ms)

    def monitor_lost(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.MONITOR_DOWN, now_ms)

    def central_reachable(self, reachable: bool, now_ms: int) -> list[Effect]:
        return self._run(CpInput.CENTRAL_UP if reachable else CpInput.CENTRAL_DOWN, now_ms)

    def authorize(self, cmd: AuthorizeCommand, now_ms: int) -> list[Effect]:
        return self._run(CpInput.AUTHORIZE, now_ms, cmd=cmd)

    def cancel(self, session_id: int, now_ms: int) -> list[Effect]:
        return self._run(CpInput.CANCEL, now_ms, session_id=session_id)

    def stop(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.STOP, now_ms)

    def resume(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.RESUME, now_ms)

    def set_ko(self, now_ms: int, *, source: str = "key", detail: str = "") -> list[Effect]:
        """A fault from ``source``: the KO key, or the meter failing. Health checks answer KO."""
        return self._run(CpInput.KO, now_ms, source=source, detail=detail)

    def recover(self, now_ms: int, *, source: str = "key") -> list[Effect]:
        """The fault from ``source`` cleared (the CP is OK again once no fault is left)."""
        return self._run(CpInput.RECOVER, now_ms, source=source)

    @property
    def ko(self) -> bool:
        """Some fault is active."""
        return bool(self.faults)

    def plug(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.PLUG, now_ms)

    def unplug(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.UNPLUG, now_ms)

    def meter(self, energy_wh: float, power_w: float, now_ms: int) -> list[Effect]:
        return self._run(CpInput.METER, now_ms, energy_wh=energy_wh, power_w=power_w)

    def tick(self, now_ms: int) -> list[Effect]:
        return self._run(CpInput.TICK, now_ms)

    def manual_request(self, driver_id: str, request_id: str, now_ms: int) -> list[Effect]:
        return self._run(CpInput.MANUAL_REQUEST, now_ms, driver_id=driver_id, request_id=request_id)

    # -- queries ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Could accept a new supply right now."""
        return self.phase is Phase.IDLE and self.monitor_up and not self.ko and not self.stopped

    def refusal(self) -> str:
        """Why a new supply would be refused now ("" when it would not)."""
        if not self.monitor_up:
            return "no_monitor"
        if self.ko:
            return "fault"
        if self.stopped:
            return "stopped"
        if self.phase is not Phase.IDLE:
            return "busy"
        return ""

    def snapshot(self) -> dict[str, Any]:
        """The durable state (JSON-able)."""
        return {
            "cp_id": self.cp_id,
            "stopped": self.stopped,
            "phase": self.phase.value,
            "supply": asdict(self.supply) if self.supply is not None else None,
            "meter_energy_wh": self.meter_energy_wh,
            "offline_price_eur_kwh": self.offline_price_eur_kwh,
        }

    def restore(self, snap: dict[str, Any], now_ms: int, *, register: tuple[float, int] | None = None) -> list[Effect]:
        """Reload a snapshot written before a crash; a supply it held ends as ``power_loss``.

        The energy reported is what the meter showed at the last persisted reading,
        and the supply ends at that reading's time (not at ``now_ms``, the restart).
        ``register``, the meter's register (Wh) and when it was read (epoch ms), is the
        truth when it is known: what it gained since the snapshot's reading is counted
        as a reading then (a reset or an impossible jump is not), and the supply ends at
        that reading. ``now_ms`` is when it is reported.
        """
        self.stopped = bool(snap.get("stopped", False))
        phase = Phase(snap.get("phase", "idle"))
        data = snap.get("supply")
        self.meter_energy_wh = snap.get("meter_energy_wh")
        self.offline_price_eur_kwh = float(snap.get("offline_price_eur_kwh", self.offline_price_eur_kwh))
        if data is None or phase is Phase.IDLE:
            return []
        self.supply = Supply(**data)
        self.phase = phase
        self._fx = []
        if phase is Phase.SUPPLYING:
            s = self.supply
            assert s.started_ts_ms is not None
            # Snapshots written before readings were timed know the last progress report.
            known_ts_ms = s.last_reading_ts_ms or s.last_progress_ts_ms
            if register is not None and self.meter_energy_wh is not None and register[1] > known_ts_ms:
                self.meter_ts_ms = max(s.started_ts_ms, known_ts_ms)
                self._read(register[1], register[0], 0.0)
                known_ts_ms = s.last_reading_ts_ms
            self._finish(EndReason.POWER_LOSS, now_ms, ended_ts_ms=max(s.started_ts_ms, known_ts_ms))
        else:
            self._withdraw(EndReason.POWER_LOSS.token, now_ms)
        return self._take()

    # -- dispatch --------------------------------------------------------------------------

    def _run(self, inp: CpInput, now_ms: int, **args: Any) -> list[Effect]:
        """Carry out the table's action for ``inp``; ``args`` are the input's (INPUT_ARGS)."""
        self._fx = []
        _DISPATCH[(self.phase, inp)](self, inp, now_ms, **args)
        return self._take()

    def _take(self) -> list[Effect]:
        fx, self._fx = self._fx, []
        return fx

    def _say(self, text: str, level: str = "info") -> None:
        self._fx.append(Say(text, level))

    def _emit(self, event: Event) -> None:
        self._fx.append(Emit(event))

    def _persist(self) -> None:
        if not self._fx or not isinstance(self._fx[-1], Persist):
            self._fx.append(Persist())

    def _finish(self, reason: EndReason, now_ms: int, *, ended_ts_ms: int | None = None) -> None:
        s = self.supply
        assert s is not None and s.started_ts_ms is not None
        self._emit(
            SupplyFinished(
                cp_id=self.cp_id,
                session_id=s.session_id,
                driver_id=s.driver_id,
                energy_kwh=s.energy_kwh,
                amount_eur=s.amount_eur,
                price_eur_kwh=s.price_eur_kwh,
                started_ts_ms=s.started_ts_ms,
                ended_ts_ms=now_ms if ended_ts_ms is None else ended_ts_ms,
                reason=reason.token,
                ts_ms=now_ms,
                offline=s.session_id == 0,
                request_id=s.request_id,
            )
        )
        self._say(
            f"supply {s.session_id or 'offline'} for {s.driver_id} ended ({reason.token}): "
            f"{s.energy_kwh:.3f} kWh, {s.amount_eur:.2f} EUR"
        )
        self.supply = None
        self.phase = Phase.IDLE
        self._persist()

    def _withdraw(self, reason: str, now_ms: int) -> None:
        s = self.supply
        assert s is not None
        if s.session_id:  # an offline authorisation was never Central's: nothing to tell it
            self._emit(
                AuthorizationAnswer(
                    cp_id=self.cp_id, session_id=s.session_id, accepted=False, reason=reason, ts_ms=now_ms
                )
            )
        self._say(f"authorisation {s.session_id} for {s.driver_id} withdrawn ({reason})")
        self.supply = None
        self.phase = Phase.IDLE
        self._persist()

    # -- actions (named in CP_TABLE) -------------------------------------------------------

    def _a_ignore(self, inp: CpInput, now_ms: int, **_unused: object) -> None:
        pass

    def _a_monitor_up(self, inp: CpInput, now_ms: int) -> None:
        if not self.monitor_up:
            self.monitor_up = True
            self._say("monitor connected")

    def _a_monitor_down(self, inp: CpInput, now_ms: int) -> None:
        if self.monitor_up:
            self.monitor_up = False
            self._say("monitor lost: refusing every supply until it is back", "warning")

    def _a_central_up(self, inp: CpInput, now_ms: int) -> None:
        if not self.central_up:
            self.central_up = True
            self._say("Central reachable")

    def _a_central_down(self, inp: CpInput, now_ms: int) -> None:
        if self.central_up is not False:  # up, or never heard since the start: say it once
            self.central_up = False
            self._say("cannot reach Central: no new supplies until it is back", "warning")

    def _a_authorize(self, inp: CpInput, now_ms: int, *, cmd: AuthorizeCommand) -> None:
        reason = self.refusal() or ("expired" if now_ms >= cmd.expires_ts_ms else "")
        if reason:
            self._emit(
                AuthorizationAnswer(
                    cp_id=self.cp_id, session_id=cmd.session_id, accepted=False, reason=reason, ts_ms=now_ms
                )
            )
            self._say(f"refused authorisation {cmd.session_id} for {cmd.driver_id}: {reason}", "warning")
            return
        self.supply = Supply(
            session_id=cmd.session_id,
            driver_id=cmd.driver_id,
            request_id=cmd.request_id,
            price_eur_kwh=cmd.price_eur_kwh,
            authorized_ts_ms=now_ms,
            expires_ts_ms=cmd.expires_ts_ms,
            target_energy_kwh=cmd.target_energy_kwh,
            target_duration_s=cmd.target_duration_s,
        )
        self.phase = Phase.AUTHORIZED
        self.offline_price_eur_kwh = cmd.price_eur_kwh
        self._emit(AuthorizationAnswer(cp_id=self.cp_id, session_id=cmd.session_id, accepted=True, ts_ms=now_ms))
        self._say(f"authorised supply {cmd.session_id} for driver {cmd.driver_id}: waiting for the vehicle to plug in")
        self._persist()

    def _a_refuse_busy(self, inp: CpInput, now_ms: int, *, cmd: AuthorizeCommand) -> None:
        assert self.supply is not None
        if cmd.session_id == self.supply.session_id:  # a repeated command: answer the same again
            self._emit(AuthorizationAnswer(cp_id=self.cp_id, session_id=cmd.session_id, accepted=True, ts_ms=now_ms))
            return
        self._emit(
            AuthorizationAnswer(
                cp_id=self.cp_id, session_id=cmd.session_id, accepted=False, reason="busy", ts_ms=now_ms
            )
        )

    def _a_cancel(self, inp: CpInput, now_ms: int, *, session_id: int) -> None:
        assert self.supply is not None
        if session_id == self.supply.session_id:
            self._say(f"authorisation {self.supply.session_id} cancelled by Central")
            self.supply = None
            self.phase = Phase.IDLE
            self._persist()

    def _a_withdraw(self, inp: CpInput, now_ms: int, **fault: str) -> None:
        """``fault``: the KO input's source and detail (the other inputs that end a supply carry none)."""
        reason = _END_REASONS[inp]
        self._apply_flag(inp, fault)
        self._withdraw(reason.token, now_ms)

    def _a_finish(self, inp: CpInput, now_ms: int, **fault: str) -> None:
        reason = _END_REASONS[inp]
        self._apply_flag(inp, fault)
        self._finish(reason, now_ms)

    def _apply_flag(self, inp: CpInput, fault: dict[str, str]) -> None:
        if inp is CpInput.STOP:
            self._a_stop(inp, 0)
        elif inp is CpInput.KO:
            self._a_ko(inp, 0, **fault)
        elif inp is CpInput.MONITOR_DOWN:
            self._a_monitor_down(inp, 0)

    def _a_stop(self, inp: CpInput, now_ms: int) -> None:
        if not self.stopped:
            self.stopped = True
            self._say("STOP from Central: out of order", "warning")
            self._persist()

    def _a_resume(self, inp: CpInput, now_ms: int) -> None:
        if self.stopped:
            self.stopped = False
            self._say("RESUME from Central: back in service")
            self._persist()

    def _a_ko(self, inp: CpInput, now_ms: int, *, source: str, detail: str) -> None:
        was_ko = self.ko
        if source in self.faults:
            return
        self.faults[source] = detail
        if not was_ko:
            what = "KO key" if source == "key" else f"{source}: {detail}" if detail else source
            self._say(f"engine KO ({what}): health checks now answer KO", "error")

    def _a_recover(self, inp: CpInput, now_ms: int, *, source: str) -> None:
        if self.faults.pop(source, None) is None:
            return
        if not self.ko:
            self._say("engine recovered: health checks answer OK")
        else:
            self._say(f"{source} fault cleared; still KO: {', '.join(self.faults)}", "warning")

    def _a_plug_refused(self, inp: CpInput, now_ms: int) -> None:
        self._say("plug-in refused: no authorised supply", "warning")

    def _a_plug(self, inp: CpInput, now_ms: int) -> None:
        s = self.supply
        assert s is not None
        s.started_ts_ms = now_ms
        s.last_progress_ts_ms = now_ms
        self.phase = Phase.SUPPLYING
        # An offline supply (session 0) has no session at Central yet: only its end is reported.
        if s.session_id:
            self._emit(
                SupplyStarted(
                    cp_id=self.cp_id, session_id=s.session_id, driver_id=s.driver_id, started_ts_ms=now_ms, ts_ms=now_ms
                )
            )
        self._say(f"vehicle plugged in: supply {s.session_id or 'offline'} for {s.driver_id} started")
        self._persist()

    def _a_meter(self, inp: CpInput, now_ms: int, *, energy_wh: float, power_w: float) -> None:
        if self._read(now_ms, energy_wh, power_w) and self.progress_with_reading and not self._target_reached(now_ms):
            self._progress(now_ms)  # (a target reached is the tick's to end)

    def _read(self, now_ms: int, energy_wh: float, power_w: float) -> bool:
        """Take a reading; whether it added to the supply's energy."""
        previous, previous_ts_ms = self.meter_energy_wh, self.meter_ts_ms
        self.meter_energy_wh = energy_wh
        self.meter_ts_ms = now_ms
        self.meter_power_w = power_w
        s = self.supply if self.phase is Phase.SUPPLYING else None
        if s is not None:
            s.last_reading_ts_ms = now_ms
        if previous is not None and energy_wh < previous:
            self.meter_resets += 1
            self._say(
                f"meter register went back ({previous:.1f} -> {energy_wh:.1f} Wh): meter reset, counting on", "warning"
            )
            return False
        if s is None or previous is None:
            self._fresh_reading = True
            return False
        assert s.started_ts_ms is not None
        # Only the supply's own time counts (the reading before the plug-in may be older). In
        # Wh: MAX_POWER_KW x ms / 3600. The step's bound catches a jump after a quiet hour; the
        # total's is the rule of the event schemas, with half their slack for rounding.
        since_ms = max(s.started_ts_ms, previous_ts_ms if previous_ts_ms is not None else s.started_ts_ms)
        gained_wh = energy_wh - previous
        slack_wh = ENERGY_SLACK_KWH * 1000.0
        if (
            gained_wh > MAX_POWER_KW * max(0, now_ms - since_ms) / 3600.0 + slack_wh
            or s.energy_wh + gained_wh > MAX_POWER_KW * max(0, now_ms - s.started_ts_ms) / 3600.0 + slack_wh / 2
        ):
            self.meter_jumps += 1
            self._say(
                f"meter register jumped {gained_wh:.1f} Wh in {max(0, now_ms - since_ms) / 1000:g} s, more than "
                f"{MAX_POWER_KW:g} kW deliver: not counted, counting on from there",
                "warning",
            )
            return False
        self._fresh_reading = True
        s.energy_wh += gained_wh
        s.power_w = power_w
        return True

    def _a_tick_authorized(self, inp: CpInput, now_ms: int) -> None:
        s = self.supply
        assert s is not None
        if now_ms >= s.expires_ts_ms:
            self._withdraw("not_plugged", now_ms)
        elif self.auto is not None and now_ms - s.authorized_ts_ms >= self.auto.plug_delay_s * 1000:
            self._a_plug(inp, now_ms)

    def _target_reached(self, now_ms: int) -> bool:
        s = self.supply
        assert s is not None and s.started_ts_ms is not None
        elapsed_s = (now_ms - s.started_ts_ms) / 1000.0
        target_s = s.target_duration_s
        if target_s is None and s.target_energy_kwh is None and self.auto is not None:
            target_s = self.auto.default_duration_s
        return (s.target_energy_kwh is not None and s.energy_kwh >= s.target_energy_kwh) or (
            target_s is not None and elapsed_s >= target_s
        )

    def _a_tick_supplying(self, inp: CpInput, now_ms: int) -> None:
        if self._target_reached(now_ms):
            self._finish(EndReason.COMPLETED, now_ms)
            return
        if not self.progress_with_reading:
            self._progress(now_ms)

    def _progress(self, now_ms: int) -> None:
        s = self.supply
        assert s is not None and s.started_ts_ms is not None
        elapsed_s = (now_ms - s.started_ts_ms) / 1000.0
        # Telemetry only from a fresh reading: a meter that stopped answering must not
        # have its last values republished with new timestamps (the fault shows instead).
        if now_ms - s.last_progress_ts_ms >= self.progress_interval_ms and self._fresh_reading:
            self._fresh_reading = False
            s.last_progress_ts_ms = now_ms
            if s.session_id:  # offline: persisted only, reported with the supply's end
                self._emit(
                    SupplyProgress(
                        cp_id=self.cp_id,
                        session_id=s.session_id,
                        driver_id=s.driver_id,
                        energy_kwh=s.energy_kwh,
                        amount_eur=s.amount_eur,
                        power_kw=s.power_w / 1000.0,
                        elapsed_s=elapsed_s,
                        ts_ms=now_ms,
                    )
                )
            self._persist()

    def _a_manual_request(self, inp: CpInput, now_ms: int, *, driver_id: str, request_id: str) -> None:
        reason = self.refusal()
        if not reason and not self.central_up:
            if self.offline_supply:
                self._offline_authorize(driver_id, request_id, now_ms)
                return
            reason = "cannot reach Central"
        if reason:
            self._say(f"manual supply for {driver_id} refused: {reason}", "warning")
            return
        self._emit(
            SupplyRequest(request_id=request_id, driver_id=driver_id, cp_id=self.cp_id, ts_ms=now_ms, origin="cp")
        )
        self._say(f"manual supply for {driver_id} requested from Central")

    def _offline_authorize(self, driver_id: str, request_id: str, now_ms: int) -> None:
        # OCPP 1.6's offline rule: serve the supply now, report it (with offline=True and
        # session 0) once Central can hear it; Central bills it exactly once by request id.
        self.supply = Supply(
            session_id=0,
            driver_id=driver_id,
            request_id=request_id,
            price_eur_kwh=self.offline_price_eur_kwh,
            authorized_ts_ms=now_ms,
            expires_ts_ms=now_ms + 60_000,
        )
        self.phase = Phase.AUTHORIZED
        self._say(
            f"Central unreachable: offline supply for {driver_id} authorised locally "
            f"({self.offline_price_eur_kwh:.2f} EUR/kWh); it will be reported when Central is back"
        )
        self._persist()

    def _a_manual_busy(self, inp: CpInput, now_ms: int, *, driver_id: str, request_id: str) -> None:
        self._say("manual supply refused: a supply is already authorised or running", "warning")


# -- dispatch, resolved once at import ---------------------------------------------------------

_Action = Callable[..., None]


#: Each action's method, written out so a type checker sees every one.
_ACTIONS: dict[CpAction, _Action] = {
    CpAction.IGNORE: ChargePoint._a_ignore,
    CpAction.MONITOR_UP: ChargePoint._a_monitor_up,
    CpAction.MONITOR_DOWN: ChargePoint._a_monitor_down,
    CpAction.CENTRAL_UP: ChargePoint._a_central_up,
    CpAction.CENTRAL_DOWN: ChargePoint._a_central_down,
    CpAction.RESUME: ChargePoint._a_resume,
    CpAction.RECOVER: ChargePoint._a_recover,
    CpAction.METER: ChargePoint._a_meter,
    CpAction.WITHDRAW: ChargePoint._a_withdraw,
    CpAction.FINISH: ChargePoint._a_finish,
    CpAction.AUTHORIZE: ChargePoint._a_authorize,
    CpAction.REFUSE_BUSY: ChargePoint._a_refuse_busy,
    CpAction.CANCEL: ChargePoint._a_cancel,
    CpAction.STOP: ChargePoint._a_stop,
    CpAction.KO: ChargePoint._a_ko,
    CpAction.PLUG_REFUSED: ChargePoint._a_plug_refused,
    CpAction.PLUG: ChargePoint._a_plug,
    CpAction.TICK_AUTHORIZED: ChargePoint._a_tick_authorized,
    CpAction.TICK_SUPPLYING: ChargePoint._a_tick_supplying,
    CpAction.MANUAL_REQUEST: ChargePoint._a_manual_request,
    CpAction.MANUAL_BUSY: ChargePoint._a_manual_busy,
}


def _resolve() -> dict[tuple[Phase, CpInput], _Action]:
    """CP_TABLE's actions bound to their methods, checked once: every pair listed, every action
    with its own method, every action method named by an action, each taking what its inputs carry."""
    if set(CP_TABLE) != {(p, i) for p in Phase for i in CpInput}:
        raise AssertionError("CP_TABLE must list every (phase, input) pair")
    methods = {name for name in vars(ChargePoint) if name.startswith("_a_")}
    missing = sorted(a.value for a in CpAction if a not in _ACTIONS or a not in CP_ACTIONS)
    unused = sorted(methods - {f.__name__ for f in _ACTIONS.values()})
    crossed = sorted(a.value for a, f in _ACTIONS.items() if f.__name__ != "_a_" + a.value)
    if missing or unused or crossed:
        raise AssertionError(
            f"charge point actions: without a method or words {missing}, methods no action names {unused}, "
            f"pointing at another's method {crossed}"
        )
    dispatch: dict[tuple[Phase, CpInput], _Action] = {}
    for (phase, inp), action in CP_TABLE.items():
        method = _ACTIONS.get(action)
        if method is None:
            raise AssertionError(f"CP_TABLE[{phase.name}, {inp.name}] names {action!r}, which is no action")
        args = INPUT_ARGS.get(inp, ())
        try:
            inspect.signature(method).bind(None, inp, 0, **dict.fromkeys(args))
        except TypeError as exc:
            raise AssertionError(
                f"action {getattr(action, 'value', action)!r} cannot take what {inp.name} carries {args}: {exc}"
            ) from None
        dispatch[(phase, inp)] = method
    return dispatch


_DISPATCH = _resolve()
