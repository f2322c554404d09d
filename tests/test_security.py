"""Release 2 against real processes and the real broker: the attacks of issue 11, each
refused, changing nothing, and written to the audit log.

The network is :class:`netharness.Network` in secure mode: TLS to Central, CPs proving
registry credentials, per-CP keys sealing cp-commands/cp-events, drivers' keys sealing
their requests and news, Central signing cp-state and its heartbeat, Bearer tokens on
the API. The attacker writes to Kafka with plain confluent-kafka (``net.forge``), opens
raw links, and calls the API without (or with the wrong) token.
"""

from __future__ import annotations

import json
import os
import time

from netharness import KafkaDriver, Network, Proc, full_supply, wait_for

from evproto import (
    AuthChallenge,
    AuthProof,
    AuthResult,
    Hello,
    LinkDownError,
    LinkRejectedError,
    ReasonCode,
    Role,
)
from evproto.bus.events import encode_event
from evproto.bus.topics import Topic
from evproto.daemons.auditlog import read_entries, verify
from evproto.domain.events import (
    AuthorizeCommand,
    DriverTelemetry,
    StopCommand,
    SupplyFinished,
    SupplyRequest,
)

NOW_MS = int(time.time() * 1000)


def two_cps(net: Network) -> tuple[Proc, dict[str, Proc]]:
    central = net.start_central("D001", "D002")
    engines = {}
    for cp_id, price in (("CP001", 0.30), ("CP002", 0.40)):
        engine, _ = net.start_cp(cp_id, price=price)
        engines[cp_id] = engine
    for cp_id in engines:
        net.wait_state(cp_id, "ACTIVATED")
    return central, engines


def audited(net: Network, **match: str) -> dict:
    path = net.db + ".audit.jsonl"

    def find() -> dict | None:
        if not os.path.exists(path):
            return None
        return next(
            (e for e in read_entries(path) if all(str(e.get(k, "")).find(v) >= 0 for k, v in match.items())), None
        )

    return wait_for(find, f"an audit entry matching {match}")


def test_forged_records_are_refused_change_nothing_and_are_audited(secure_net: Network) -> None:
    net = secure_net
    _, engines = two_cps(net)
    driver = KafkaDriver(net, "D001")
    # 1. A plaintext supply_request as D001 (its app not running): not sealed, refused.
    forged_request = SupplyRequest(request_id="forged-1", driver_id="D001", cp_id="CP002", ts_ms=NOW_MS)
    net.forge(Topic.DRIVER_REQUESTS, "D001", encode_event(forged_request))
    # 2. A plaintext stop for CP002 and a free authorisation at CP001 for a driver Central never
    # heard of, on cp-commands: neither engine may act on them.
    net.forge(Topic.CP_COMMANDS, "CP002", encode_event(StopCommand(cp_id="CP002", ts_ms=NOW_MS)))
    net.forge(
        Topic.CP_COMMANDS,
        "CP001",
        encode_event(
            AuthorizeCommand(
                cp_id="CP001",
                session_id=77,
                driver_id="DX",
                request_id="forged-2",
                price_eur_kwh=0.0,
                expires_ts_ms=NOW_MS + 600_000,
                ts_ms=NOW_MS,
            )
        ),
    )
    # 3. A plaintext supply_finished on cp-events for a session that does not exist.
    net.forge(
        Topic.CP_EVENTS,
        "CP001",
        encode_event(
            SupplyFinished(
                cp_id="CP001",
                session_id=1,
                driver_id="D001",
                energy_kwh=1.0,
                amount_eur=0.3,
                price_eur_kwh=0.3,
                started_ts_ms=NOW_MS - 60_000,
                ended_ts_ms=NOW_MS,
                reason="completed",
                ts_ms=NOW_MS,
            )
        ),
    )
    wait_for(lambda: net.status().get("records_refused_not_sealed", 0) >= 2, "Central to refuse two forgeries")
    assert not driver.updates("forged-1") and net.get("/api/v1/sessions") == []
    letters = os.path.join(net.tmp, "state-CP001", "dead-letters.jsonl")
    wait_for(lambda: os.path.exists(letters) and "not sealed" in open(letters).read(), "CP001 to refuse it")
    engines["CP001"].send("p")  # plugged in: a supply would start now if the forgery had been taken
    time.sleep(1.5)  # the engines had their chance to (wrongly) obey
    assert net.cp_state("CP002") == "ACTIVATED" and net.cp_state("CP001") == "ACTIVATED"
    audited(net, action="record", outcome="refused", source="kafka:driver-requests")
    audited(net, action="record", outcome="refused", source="kafka:cp-events")
    assert engines["CP002"].alive()
    # The network still works.
    full_supply(net, driver, "CP002", engines["CP002"])


def test_the_api_needs_a_token_with_the_right_role_and_refuses_cross_site_posts(secure_net: Network) -> None:
    net = secure_net
    two_cps(net)
    assert net._request("POST", "/api/v1/cps/stop", token="")[0] == 401
    assert net._request("GET", "/api/v1/cps", token="")[0] == 401
    viewer = net.make_token("viewer", "eve")
    assert net._request("GET", "/api/v1/cps", token=viewer)[0] == 200
    status, body = net._request("POST", "/api/v1/cps/stop", token=viewer)
    assert status == 403 and "needs operator" in body["error"]
    assert net._request("GET", "/api/v1/audit", token=viewer)[0] == 403
    operator = net.make_token("operator", "olga")
    status, _ = net._request(
        "POST",
        "/api/v1/cps/stop",
        token=operator,
        data=b"x",
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status == 403
    assert all(c["state"] == "ACTIVATED" for c in net.get("/api/v1/cps"))
    assert net._request("POST", "/api/v1/cps/CP001/stop", token=operator)[0] == 200
    net.wait_state("CP001", "STOPPED")
    entry = audited(net, action="stop", object="cp:CP001", outcome="ok")
    assert entry["actor"].startswith("operator:olga") and entry["source"] == "127.0.0.1"
    audited(net, action="api:POST", outcome="refused")


def test_a_link_without_the_cp_credentials_is_refused_and_cannot_take_over_a_cp(secure_net: Network) -> None:
    import asyncio

    from evproto import aio

    net = secure_net
    _, engines = two_cps(net)
    url = f"tls://{net.central_addr}?ca={net.ca.cert_path}"

    async def attempts() -> list[str]:
        out = []
        # An unregistered id.
        try:
            await aio.open_link(
                url,
                hello=Hello(
                    role=Role.MONITOR,
                    node_id="CP666",
                    location="Hacked",
                    price_eur_kwh=0.01,
                    credentials=os.urandom(24),
                ),
            )
            out.append("accepted")
        except LinkRejectedError as exc:
            out.append(exc.code.name)
        # A registered id, while its monitor is connected: a second link is refused.
        try:
            await aio.open_link(url, hello=Hello(role=Role.MONITOR, node_id="CP001", credentials=os.urandom(24)))
            out.append("accepted")
        except LinkRejectedError as exc:
            out.append(exc.code.name)
        return out

    assert asyncio.run(attempts()) == ["UNKNOWN_ID", "DUPLICATE_ID"]
    # Its monitor briefly down: a link that cannot prove the secret gets nothing and changes nothing.
    net.kill(next(p for p in net.procs if p.name == "monitor-CP001"))
    net.wait_state("CP001", "DISCONNECTED")

    async def takeover() -> str:
        link = await aio.open_link(
            url,
            hello=Hello(
                role=Role.MONITOR, node_id="CP001", location="Hacked", price_eur_kwh=99.0, credentials=os.urandom(24)
            ),
        )
        try:
            async for event in link.messages:
                if isinstance(event.message, AuthChallenge):
                    await link.respond(event, AuthProof(proof=os.urandom(32)))
                elif isinstance(event.message, AuthResult):
                    return event.message.code.name
        except LinkDownError:
            return "closed"
        return "closed"

    assert asyncio.run(takeover()) == ReasonCode.BAD_CREDENTIALS.name
    cp = next(c for c in net.get("/api/v1/cps") if c["id"] == "CP001")
    assert cp["location"] == "Alicante" and cp["price_eur_kwh"] == 0.30
    audited(net, action="auth", object="cp:CP001", outcome="refused")
    # The real monitor comes back and is not locked out.
    net.start_monitor("CP001", engines["CP001"].ready["listen"])
    net.wait_state("CP001", "ACTIVATED")


def test_revoking_a_cp_ends_its_supply_refuses_its_old_key_and_it_comes_back_with_a_new_one(
    secure_net: Network,
) -> None:
    net = secure_net
    _, engines = two_cps(net)
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    sid = driver.wait_status(rid, "authorized").session_id
    engines["CP001"].send("p")
    wait_for(
        lambda: any(
            isinstance(e, DriverTelemetry) and e.session_id == sid and e.energy_kwh > 0 for e in driver.events()
        ),
        "energy to flow",
    )
    operator = net.make_token("operator", "olga")
    assert net._request("POST", "/api/v1/cps/CP001/revoke", token=operator) == (200, {"ok": True, "revoked": "CP001"})
    ticket = wait_for(lambda: next((t for t in driver.tickets() if t.session_id == sid), None), "the ticket")
    assert ticket.end_reason == "key_revoked"
    audited(net, action="key-revoke", object="cp:CP001")
    # The monitor authenticates again with its credentials and gets a new key: the CP serves again.
    net.wait_state("CP001", "ACTIVATED")
    assert next(c for c in net.get("/api/v1/cps") if c["id"] == "CP001")["alerts"] == []
    full_supply(net, driver, "CP002", engines["CP002"])


def test_a_secure_network_serves_a_supply_and_no_secret_reaches_a_log_the_api_or_the_audit_log(
    secure_net: Network,
) -> None:
    net = secure_net
    _, engines = two_cps(net)
    ticket = full_supply(net, KafkaDriver(net, "D001"), "CP001", engines["CP001"])
    assert ticket.energy_kwh > 0 and ticket.cp_id == "CP001"
    audited(net, action="auth", object="cp:CP001", outcome="ok")
    audited(net, action="key-issue", object="cp:CP001")
    assert verify(net.db + ".audit.jsonl").ok
    secrets_ = [json.load(open(os.path.join(net.tmp, "creds", f"{cp}.json")))["secret"] for cp in ("CP001", "CP002")]
    secrets_ += [
        json.load(open(os.path.join(net.tmp, "creds", "D001.json")))["key"],
        net.token,
        net.token.split("_", 2)[2],
    ]
    from evproto.daemons.central.keyring import KeyRing

    ring = KeyRing(net.db)
    secrets_ += [ring.current_cp_key(cp).key.hex() for cp in ("CP001", "CP002")]
    api = json.dumps(
        [
            net.get(p)
            for p in (
                "/api/v1/cps",
                "/api/v1/status",
                "/api/v1/sessions",
                "/api/v1/messages",
                "/api/v1/audit",
                "/api/v1/dead-letters",
            )
        ]
    )
    for proc in net.procs:
        text = open(proc.log, encoding="utf-8", errors="replace").read()
        for secret in secrets_:
            assert secret not in text, f"a secret in {proc.name}'s log"
    audit = open(net.db + ".audit.jsonl", encoding="utf-8").read()
    for secret in secrets_:
        assert secret not in api and secret not in audit


def test_replayed_tampered_and_foreign_sealed_records_are_refused(secure_net: Network) -> None:
    """A captured sealed record replayed, one with a flipped bit, CP001's report sealed with
    CP002's key, and one sealed with a revoked key: each refused, nothing changes, audited."""
    from evproto.bus import seal
    from evproto.daemons.central.keyring import KeyRing
    from evproto.domain.events import SupplyProgress

    net = secure_net
    _, engines = two_cps(net)
    driver = KafkaDriver(net, "D001")
    full_supply(net, driver, "CP001", engines["CP001"])
    sessions_before = net.get("/api/v1/sessions")
    # 1. Replay: every record CP001's engine sent, and D001's request, written again as captured.
    captured = net.raw_records(Topic.CP_EVENTS, key="CP001")
    assert captured and all(seal.peek(v) is not None and not seal.peek(v).signed for v in captured)
    assert all(b"energy_kwh" not in v and b"D001" not in v for v in captured), "cp-events travel sealed"
    for value in captured:
        net.forge(Topic.CP_EVENTS, "CP001", value)
    for value in net.raw_records(Topic.DRIVER_REQUESTS, key="D001"):
        net.forge(Topic.DRIVER_REQUESTS, "D001", value)
    wait_for(lambda: net.status().get("records_refused_replayed", 0) >= len(captured) + 1, "replays refused")
    # 2. Tampered: replayed with its counter pushed past the window (the header is
    # authenticated), and with one bit of the ciphertext flipped as well.
    env = seal.peek(captured[-1])
    pos = len(env.header) - 8
    bumped = bytearray(captured[-1])
    bumped[pos : pos + 8] = (env.counter + 10**12).to_bytes(8, "big")
    net.forge(Topic.CP_EVENTS, "CP001", bytes(bumped))
    bumped[-20] ^= 0x01
    bumped[pos : pos + 8] = (env.counter + 2 * 10**12).to_bytes(8, "big")
    net.forge(Topic.CP_EVENTS, "CP001", bytes(bumped))
    wait_for(lambda: net.status().get("records_refused_tampered", 0) >= 2, "the tampered records refused")
    # 3. CP001's report sealed with CP002's (valid) key.
    ring = KeyRing(net.db)
    cp2 = ring.current_cp_key("CP002")
    now = int(time.time() * 1000)
    fake = SupplyProgress(
        cp_id="CP001",
        session_id=1,
        driver_id="D001",
        energy_kwh=5.0,
        amount_eur=1.5,
        power_kw=7.0,
        elapsed_s=10.0,
        ts_ms=now,
    )
    for record_key, value in (
        (
            "CP001",
            seal.seal(
                cp2.key,
                cp2.key_id,
                encode_event(fake),
                topic="cp-events",
                record_key="CP001",
                event_type="supply_progress",
                counter=now * 1000,
            ),
        ),
    ):
        net.forge(Topic.CP_EVENTS, record_key, value)
    wait_for(lambda: net.status().get("records_refused_wrong_sender", 0) >= 1, "the foreign key refused")
    # 4. A record sealed with a key revoked since.
    old = ring.current_cp_key("CP002")
    operator = net.make_token("operator", "olga")
    assert net._request("POST", "/api/v1/cps/CP002/revoke", token=operator)[0] == 200
    late = SupplyProgress(
        cp_id="CP002",
        session_id=1,
        driver_id="D001",
        energy_kwh=1.0,
        amount_eur=0.4,
        power_kw=7.0,
        elapsed_s=1.0,
        ts_ms=now,
    )
    net.forge(
        Topic.CP_EVENTS,
        "CP002",
        seal.seal(
            old.key,
            old.key_id,
            encode_event(late),
            topic="cp-events",
            record_key="CP002",
            event_type="supply_progress",
            counter=(now + 5000) * 1000,
        ),
    )
    wait_for(lambda: net.status().get("records_refused_revoked_key", 0) >= 1, "the revoked key refused")
    assert net.get("/api/v1/sessions") == sessions_before
    text = open(net.db + ".audit.jsonl", encoding="utf-8").read()
    for why in ("replayed", "does not authenticate", "cannot report for", "revoked key"):
        assert why in text, why
    assert verify(net.db + ".audit.jsonl").ok


def test_unregistering_at_the_registry_ends_a_connected_cp_and_it_cannot_come_back(secure_net: Network) -> None:
    from evproto.daemons.credentials import CredentialStore

    net = secure_net
    two_cps(net)
    store = CredentialStore(net.db)
    assert store.unregister("CP002")  # what DELETE /api/v1/cps/CP002 at the registry does
    store.close()
    net.wait_state("CP002", "DISCONNECTED")
    audited(net, action="key-revoke", object="cp:CP002")
    monitor = next(p for p in net.procs if p.name == "monitor-CP002")
    wait_for(lambda: not monitor.alive(), "its monitor to give up (refused for good)")
    assert monitor.popen.returncode == 64 and net.log_has(monitor, "not registered")
    assert net.cp_state("CP001") == "ACTIVATED"


def test_a_driver_given_a_key_while_central_runs_is_served(secure_net: Network) -> None:
    net = secure_net
    _, engines = two_cps(net)
    net.run_cli("central", "--db", net.db, "drivers", "add", "D009", "--credentials", os.path.join(net.tmp, "creds"))
    # Central takes in what another process wrote to its database (drivers and their keys, in one step).
    wait_for(lambda: "D009" in net.get("/api/v1/drivers"), "Central to take in D009")
    ticket = full_supply(net, KafkaDriver(net, "D009"), "CP002", engines["CP002"])
    assert ticket.driver_id == "D009"
