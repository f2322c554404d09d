"""Central's restart must not turn into denials: requests held while it was down wait for the
CPs it knew to reconnect (real processes, real signals, the real broker)."""

from __future__ import annotations

import pytest
from netharness import KafkaDriver, Network

pytestmark = pytest.mark.slow


def test_requests_sent_while_central_was_down_are_served_after_its_restart(net: Network) -> None:
    central = net.start_central("D001", "D002")
    engines = {}
    for cp_id in ("CP001", "CP002"):
        engines[cp_id], _ = net.start_cp(cp_id)
    for cp_id in engines:
        net.wait_state(cp_id, "ACTIVATED")
    net.kill(central)
    # Monitors now retry with backoff; drivers ask meanwhile (their requests wait in Kafka).
    rids = {d: KafkaDriver(net, d).request(cp) for d, cp in (("D001", "CP001"), ("D002", "CP002"))}
    net.start_central(same_ports=True)
    for driver_id, rid in rids.items():
        driver = KafkaDriver(net, driver_id)
        update = driver.wait_status(rid, "authorized")
        assert not any(u.status == "denied" for u in driver.updates(rid)), driver.updates(rid)
        assert update.cp_id in engines
