"""The monitor's health reporting (daemons/monitor/app.py), in-process against stand-ins on loopback.

- ``EngineStandIn``: an evproto aio server playing the CP's engine. It answers each
  HealthCheck as its ``mode`` says (OK, KO with a fault, or not at all) and counts
  the checks it has seen, so a test can wait until the monitor has observed a change.
- ``CentralStandIn``: an evproto aio server playing Central; it records every message
  the monitor sends on its link, in order.

A test never sleeps to let the monitor "notice": it waits for checks counted at the
engine or for messages recorded at Central. To show that something was reported ONCE
(and not again on later checks), the test lets the engine answer several more checks,
then ends the episode with a change it waits to see reported: the link delivers in
order, so everything sent before that last report has arrived by then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from evproto import (
    FaultCode,
    FaultReport,
    HealthCheck,
    HealthState,
    HealthStatus,
    LinkConfig,
    LinkDownError,
    Message,
    RecoveryReport,
    RequestReceived,
    aio,
)
from evproto.daemons.monitor import Monitor

#: Hang guard for any single wait; never a timing assertion.
GUARD_S = 10.0
#: Seconds between the monitor's health checks (it defaults to 1 s). It waits 0.8 of it for an
#: answer: short enough for quick tests, long enough that a busy machine does not miss answers.
INTERVAL_S = 0.2
#: Checks answered the same way after a change, to show nothing more is reported.
SETTLE_CHECKS = 2
CP = "CP001"
LOCAL = "tcp://127.0.0.1:0"
CONFIG = LinkConfig(
    ack_timeout_s=0.5,
    max_retries=3,
    handshake_timeout_s=5.0,
    interbyte_timeout_s=0.3,
    request_timeout_s=5.0,
    min_keepalive_s=0.05,
)

OK = HealthStatus(state=HealthState.OK)


def ko(fault: FaultCode = FaultCode.METER_TIMEOUT) -> HealthStatus:
    return HealthStatus(state=HealthState.KO, fault=fault)


#: The engine stand-in does not answer at all.
SILENT = None


class EngineStandIn:
    """The engine end of the monitor's link: answers HealthCheck with ``mode`` (None: silence)."""

    def __init__(self) -> None:
        self.mode: HealthStatus | None = OK
        #: Health checks seen in all, and those met with the current ``mode``.
        self.checks = 0
        self.checks_in_mode = 0
        self._generation = 0
        self.links: list[aio.Link] = []
        self._changed = asyncio.Condition()

    async def handler(self, link: aio.Link) -> None:
        self.links.append(link)
        async with self._changed:
            self._changed.notify_all()
        with contextlib.suppress(LinkDownError):
            async for event in link.messages:
                if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
                    answer, generation = self.mode, self._generation
                    if answer is not None:
                        await link.respond(event, answer)
                    async with self._changed:
                        self.checks += 1
                        # A check answered just before a change of mode does not count for the new one.
                        if generation == self._generation:
                            self.checks_in_mode += 1
                        self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(wait(), GUARD_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"the engine stand-in waited in vain for {what}") from None

    async def answer(self, mode: HealthStatus | None, checks: int = SETTLE_CHECKS) -> None:
        """From now on answer ``mode``; return once ``checks`` health checks were met with it."""
        self.mode = mode
        self._generation += 1
        self.checks_in_mode = 0
        await self._wait(lambda: self.checks_in_mode >= checks, f"{checks} health checks answered {mode}")

    async def connections(self, count: int) -> None:
        await self._wait(lambda: len(self.links) >= count, f"connection {count} from the monitor")


class CentralStandIn:
    """Central's end of the monitor's link: records every message, in order of arrival."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.links: list[aio.Link] = []
        self._changed = asyncio.Condition()

    async def handler(self, link: aio.Link) -> None:
        self.links.append(link)
        with contextlib.suppress(LinkDownError):
            async for event in link.messages:
                async with self._changed:
                    self.received.append(event.message)
                    self._changed.notify_all()

    def reports(self) -> list[Message]:
        """What the monitor said about the engine's health, in order."""
        return [m for m in self.received if isinstance(m, (HealthStatus, FaultReport, RecoveryReport))]

    async def wait_reports(self, count: int) -> list[Message]:
        """The first ``count`` health reports, once that many have arrived."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.reports()) >= count)

        try:
            await asyncio.wait_for(wait(), GUARD_S)
        except asyncio.TimeoutError:
            raise AssertionError(f"Central expected {count} reports, has {self.reports()}") from None
        return self.reports()


@dataclass
class Rig:
    engine: EngineStandIn
    central: CentralStandIn
    monitor: Monitor


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """``await make_rig(first_answer=OK)``: a Monitor (release 1: no credentials) between the two
    stand-ins, run in this event loop; everything is stopped at teardown."""
    stops: list[tuple[asyncio.Event, asyncio.Future[int], list[aio.Server]]] = []

    async def make(first_answer: HealthStatus | None = OK) -> Rig:
        engine, central = EngineStandIn(), CentralStandIn()
        engine.mode = first_answer
        engine_server = await aio.serve(LOCAL, engine.handler, node_id=CP, config=CONFIG)
        central_server = await aio.serve(LOCAL, central.handler, node_id="central", config=CONFIG)
        monitor = Monitor(
            cp_id=CP,
            central=central_server.url,
            engine=engine_server.url,
            location="here",
            price=0.3,
            interval_s=INTERVAL_S,
            keepalive_ms=1000,
            config=CONFIG,
        )
        stop = asyncio.Event()
        stops.append((stop, asyncio.ensure_future(monitor.run(stop)), [engine_server, central_server]))
        return Rig(engine, central, monitor)

    try:
        yield make
    finally:
        for stop, task, servers in stops:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, GUARD_S)
            for server in servers:
                await server.close()


@pytest.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()


async def test_a_healthy_engine_is_reported_once_as_ok(rig: Rig) -> None:
    assert await rig.central.wait_reports(1) == [OK]
    await rig.engine.answer(OK)
    await rig.engine.answer(ko(), checks=1)
    assert await rig.central.wait_reports(2) == [
        OK,
        FaultReport(fault=FaultCode.METER_TIMEOUT, detail="engine answers KO (METER_TIMEOUT)"),
    ]


async def test_ok_to_ko_is_reported_once_and_ko_to_ok_once(rig: Rig) -> None:
    await rig.central.wait_reports(1)
    await rig.engine.answer(ko(FaultCode.METER_LOST))  # the first KO answer and several more
    await rig.engine.answer(OK)
    reports = await rig.central.wait_reports(3)
    await rig.engine.answer(OK)
    await rig.engine.answer(ko(FaultCode.METER_LOST), checks=1)
    # The fourth report closes the episode: anything repeated in between would have come before it.
    reports = await rig.central.wait_reports(4)
    assert reports == [
        OK,
        FaultReport(fault=FaultCode.METER_LOST, detail="engine answers KO (METER_LOST)"),
        RecoveryReport(fault=FaultCode.METER_LOST),
        FaultReport(fault=FaultCode.METER_LOST, detail="engine answers KO (METER_LOST)"),
    ]


async def test_a_different_fault_while_ko_is_a_new_report(rig: Rig) -> None:
    await rig.central.wait_reports(1)
    await rig.engine.answer(ko(FaultCode.METER_TIMEOUT))
    await rig.engine.answer(ko(FaultCode.METER_RESET))
    await rig.engine.answer(OK, checks=1)
    assert (await rig.central.wait_reports(4))[1:] == [
        FaultReport(fault=FaultCode.METER_TIMEOUT, detail="engine answers KO (METER_TIMEOUT)"),
        FaultReport(fault=FaultCode.METER_RESET, detail="engine answers KO (METER_RESET)"),
        RecoveryReport(fault=FaultCode.METER_RESET),
    ]


async def test_a_silent_engine_is_an_engine_silent_fault_and_its_answer_a_recovery(rig: Rig) -> None:
    await rig.central.wait_reports(1)
    await rig.engine.answer(SILENT)
    await rig.engine.answer(OK)
    reports = await rig.central.wait_reports(3)
    assert reports == [
        OK,
        FaultReport(fault=FaultCode.ENGINE_SILENT, detail="engine did not answer the health check"),
        RecoveryReport(fault=FaultCode.ENGINE_SILENT),
    ]
    assert len(rig.engine.links) == 1  # silence is reported while the link itself stays up


async def test_a_lost_engine_link_is_engine_silent_and_the_reconnected_engine_a_recovery(rig: Rig) -> None:
    await rig.central.wait_reports(1)
    await rig.engine.connections(1)
    await rig.engine.links[0].abort()
    await rig.engine.connections(2)  # the monitor reconnects by itself
    await rig.engine.answer(OK)
    reports = await rig.central.wait_reports(3)
    assert reports[0] == OK
    assert isinstance(reports[1], FaultReport) and reports[1].fault is FaultCode.ENGINE_SILENT
    assert reports[1].detail.startswith("engine link lost")
    assert reports[2] == RecoveryReport(fault=FaultCode.ENGINE_SILENT)
    assert len(rig.central.reports()) == 3


async def test_an_engine_ko_from_the_start_is_reported_as_a_fault(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(first_answer=ko(FaultCode.SIMULATED))
    await rig.engine.answer(ko(FaultCode.SIMULATED))
    await rig.engine.answer(OK, checks=1)
    assert await rig.central.wait_reports(2) == [
        FaultReport(fault=FaultCode.SIMULATED, detail="engine answers KO (SIMULATED)"),
        RecoveryReport(fault=FaultCode.SIMULATED),
    ]


async def test_a_flapping_engine_gives_one_report_per_change_never_one_per_check(rig: Rig) -> None:
    """The monitor does not debounce: a change is news. But the same answer again is not,
    so an engine flapping between OK and KO gives exactly one report per change."""
    await rig.central.wait_reports(1)
    changes = 0
    for _ in range(3):
        await rig.engine.answer(ko(FaultCode.METER_TIMEOUT), checks=2)
        await rig.engine.answer(OK, checks=1)
        changes += 2
    await rig.engine.answer(ko(FaultCode.METER_TIMEOUT), checks=1)
    changes += 1
    reports = await rig.central.wait_reports(1 + changes)
    fault = FaultReport(fault=FaultCode.METER_TIMEOUT, detail="engine answers KO (METER_TIMEOUT)")
    recovery = RecoveryReport(fault=FaultCode.METER_TIMEOUT)
    assert reports == [OK] + [fault, recovery] * 3 + [fault]
    assert rig.engine.checks > len(reports)  # more checks than reports: only the changes were sent


async def test_after_reconnecting_to_central_the_monitor_states_the_engine_health(rig: Rig) -> None:
    await rig.central.wait_reports(1)
    await rig.engine.answer(ko(FaultCode.METER_LOST))
    await rig.central.wait_reports(2)
    await rig.central.links[0].abort()

    async def second_link() -> None:
        while len(rig.central.links) < 2:
            await rig.engine.answer(ko(FaultCode.METER_LOST), checks=1)

    await asyncio.wait_for(second_link(), GUARD_S)
    await rig.engine.answer(OK, checks=1)
    reports = await rig.central.wait_reports(4)
    assert reports[2:] == [ko(FaultCode.METER_LOST), RecoveryReport(fault=FaultCode.METER_LOST)]
