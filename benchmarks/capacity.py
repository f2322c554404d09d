"""Capacity: how many charge points one Central supervises, and how fresh its numbers are.

    python benchmarks/capacity.py [--cps 1000] [--drivers 1000] [--duration 20] [--json]
    python benchmarks/capacity.py --sweep 500,1000,2000,5000 --write docs/performance.md

Starts the embedded broker (or uses ``--kafka``) and a real Central process, then
simulates N charge points and their drivers from four asyncio processes: N real
evproto links from "monitors" to Central (keepalive 1 s, as the real monitor's);
the engines' Kafka traffic (authorisation answers, supply start, telemetry at
1 Hz while supplying); drivers requesting one supply each and reading their
events; and a bare confluent-kafka consumer. One real engine and monitor pair
supplies alongside, to measure their memory. It reports:

- CPs registered and supplies running;
- telemetry messages/s into Central (SupplyProgress) and out of it (DriverTelemetry);
- end-to-end telemetry latency, engine event produced -> driver receives it, p50/p99;
- Central's CPU and RSS, the real engine's and monitor's RSS;
- whether Central's consumer lag grew during the measurement window (its trend over one
  sample a second: growing means falling behind by more than 1 % of the arrivals);
- a bare confluent-kafka consumer on the same topic in the same run, for comparison.

With ``--json`` the last line of output is one JSON object (the keys the issue pins,
plus more). Figures are measured on whatever machine runs it; compare runs, not
absolute numbers from different machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _report import write_section  # benchmarks/_report.py

from evproto import Hello, LinkConfig, Role
from evproto.aio import open_link
from evproto.bus.broker import EmbeddedBroker
from evproto.bus.events import decode_event, encode_event
from evproto.bus.kafka import (
    OFFSET_END,
    BusConsumer,
    BusProducer,
    KafkaSettings,
    end_offsets,
    ensure_topics,
)
from evproto.bus.topics import Topic, partition_for
from evproto.daemons.runtime import raise_fd_limit
from evproto.daemons.stats import nearest_rank
from evproto.domain.events import (
    AuthorizationAnswer,
    AuthorizeCommand,
    DriverTelemetry,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
)

CLK = os.sysconf("SC_CLK_TCK")
MP = multiprocessing.get_context("spawn")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


#: Release 2: the token and CA Central's API wants (set by measure()).
_API: dict[str, Any] = {"headers": {}, "context": None}


def http_json(url: str) -> Any:
    request = urllib.request.Request(url, headers=_API["headers"])
    with urllib.request.urlopen(request, timeout=10, context=_API["context"]) as resp:
        return json.load(resp)


def central_argv(db: str, bootstrap: str, ready: str, security: list[str]) -> list[str]:
    """The command of the Central a benchmark measures: any free ports, no panel, patient
    timeouts, and every CP may register at once."""
    return [
        *(sys.executable, "-m", "evproto.daemons.central", "--db", db, "--kafka", bootstrap),
        *("--port", "0", "--http-port", "0", "--host", "127.0.0.1", "--no-panel", "--ready-file", ready),
        *("--answer-timeout-s", "120", "--plug-timeout-s", "600", "--registrations-per-min", "1000000"),
        *security,
        *("--log-format", "text", "--log-level", "warning"),
    ]


# -- the load, in a few processes ------------------------------------------------------------
#
# Monitors, drivers and the bare consumer each run in a process of their own
# (started with "spawn", before any thread exists here), as they would on a real
# network: one Python process holding all of them would measure its own GIL.


def _monitors_main(central: str, cp_ids: list[str], secrets: dict[str, str] | None, conn: Connection) -> None:
    """N monitor links to Central (keepalive 1 s), held until told to stop. With ``secrets``
    (release 2), each proves its CP's credentials over TLS as the real monitor does."""
    if raise_fd_limit() < len(cp_ids) + 100:
        raise SystemExit(f"open files limit too low for {len(cp_ids)} links: raise it with ulimit -n")

    async def run() -> None:
        from evproto import AuthChallenge, AuthProof, AuthResult, auth

        config = LinkConfig(handshake_timeout_s=30.0)
        links: list[Any] = []

        async def one(cp_id: str) -> None:
            session = auth.ClientSession(cp_id, secrets[cp_id]) if secrets else None
            hello = Hello(
                role=Role.MONITOR,
                node_id=cp_id,
                keepalive_ms=1000,
                location="bench",
                price_eur_kwh=0.30,
                credentials=session.start() if session else b"",
            )
            link = await open_link(central, hello=hello, config=config)
            if session is not None:
                async for event in link.messages:
                    if isinstance(event.message, AuthChallenge):
                        m = event.message
                        await link.respond(
                            event,
                            AuthProof(
                                proof=session.answer(
                                    auth.Challenge(
                                        salt=m.salt, log2_n=m.log2_n, r=m.r, p=m.p, server_nonce=m.server_nonce
                                    )
                                )
                            ),
                        )
                    elif isinstance(event.message, AuthResult):
                        session.finish(
                            event.message.signature,
                            key_id=event.message.key_id,
                            wrapped_key=event.message.wrapped_key,
                            verify_key=event.message.verify_key,
                        )
                        break
            links.append(link)

        for i in range(0, len(cp_ids), 100):
            await asyncio.gather(*(one(c) for c in cp_ids[i : i + 100]))
        conn.send(len(links))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        up = sum(1 for link in links if link.is_open)
        for link in links:
            await link.close()
        conn.send(up)

    asyncio.run(run())


def _drivers_main(settings: KafkaSettings, partitions: int, measuring: Any, db: str | None, conn: Connection) -> None:
    """Every driver's events (one consumer on all driver-events partitions): telemetry latency.
    With ``db`` (release 2) they are opened with the drivers' keys, as each driver's app does."""

    async def run() -> None:
        decode = _decoder(db)
        latencies: list[float] = []
        to_central: list[float] = []  # engine produced -> Central relays (the record's timestamp)
        from_central: list[float] = []  # Central relays -> driver has it
        assignments = [(Topic.DRIVER_EVENTS, p, OFFSET_END) for p in range(partitions)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (conn.recv(), loop.call_soon_threadsafe(stop.set)))
        async with BusConsumer(settings, assignments, queue_size=20000) as consumer:
            conn.send("ready")
            stopping = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                batch = asyncio.ensure_future(consumer.next_batch(2000))
                await asyncio.wait({batch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not batch.done():
                    batch.cancel()
                    break
                if not measuring.is_set():
                    continue
                now = time.time() * 1000
                for record in batch.result():
                    ev = decode(record)
                    if isinstance(ev, DriverTelemetry):
                        latencies.append(now - ev.produced_ts_ms)
                        to_central.append(record.timestamp_ms - ev.produced_ts_ms)
                        from_central.append(now - record.timestamp_ms)
        conn.send((latencies, to_central, from_central))

    asyncio.run(run())


def _decoder(db: str | None) -> Any:
    """Record -> event: plain JSON, or (with Central's database) through the release-2 gate."""
    if db is None:
        return lambda record: decode_event(record.value)
    from evproto.daemons.central.keyring import KeyRing
    from evproto.daemons.gate import RecordGate

    gate = RecordGate(KeyRing(db))
    return lambda record: gate.decode(record, int(time.time() * 1000))


def _bare_main(bootstrap: str, topic: str, partitions: int, measuring: Any, conn: Connection) -> None:
    """A bare confluent-kafka consume loop on the live telemetry topic: the comparison point."""
    import confluent_kafka

    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "capacity-bare",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    c.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_END) for p in range(partitions)])
    conn.send("ready")
    count = 0
    ages: list[float] = []  # engine produced -> this loop has it: what the bus alone costs
    while not conn.poll():
        # poll() returns as soon as a record is there; consume(n, timeout) would hold
        # records back until n arrived or the timeout passed, and inflate the ages.
        m = c.poll(0.1)
        if m is not None and m.error() is None and measuring.is_set():
            count += 1
            ages.append(time.time() * 1000 - m.timestamp()[1])
    c.close()
    conn.send((count, ages))


def _drain_main(bootstrap: str, topic: str, start: dict[int, int], end: dict[int, int], conn: Connection) -> None:
    """A bare confluent-kafka loop reading exactly [start, end) of every partition, timed."""
    import confluent_kafka

    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "capacity-drain",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    c.list_topics(topic, timeout=10)  # connected before the clock starts
    left = {p: end[p] - start[p] for p in start if end[p] > start[p]}
    count = 0
    t0 = time.perf_counter()
    c.assign([confluent_kafka.TopicPartition(topic, p, start[p]) for p in left])
    while any(v > 0 for v in left.values()):
        for m in c.consume(1000, 0.01):  # never waits long for a batch to fill
            if m.error() is None and m.offset() < end[m.partition()]:
                count += 1
                left[m.partition()] -= 1
    elapsed = time.perf_counter() - t0
    c.close()
    conn.send((count, elapsed))


class Child:
    """A load process and our end of its pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.conn, child_end = MP.Pipe()
        self.proc = MP.Process(target=target, args=(*args, child_end), daemon=True)
        self.proc.start()

    async def recv(self, timeout_s: float) -> Any:
        if not await asyncio.to_thread(self.conn.poll, timeout_s):
            raise RuntimeError(f"load process {self.proc.name} did not answer within {timeout_s:g} s")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


class Engines:
    """The simulated engines (this process): answer authorisations, report telemetry at 1 Hz."""

    def __init__(
        self, settings: KafkaSettings, cp_ids: list[str], partitions: dict[Topic, int], db: str | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.decode = _decoder(None)
        self.sealer: Any = None
        if db is not None:  # release 2: seal with each CP's key (and each driver's, for requests)
            from evproto.daemons.central.keyring import KeyRing
            from evproto.daemons.gate import RecordGate, RecordSealer

            ring = KeyRing(db)
            gate = RecordGate(ring)
            self.decode = lambda record: gate.decode(record, int(time.time() * 1000))
            cache: dict[str, tuple[str, bytes]] = {}

            def key_for(topic: Topic, record_key: str) -> tuple[str, bytes]:
                got = cache.get(record_key)
                if got is None:
                    grant = ring.current_cp_key(record_key) if topic is Topic.CP_EVENTS else ring.driver_key(record_key)
                    assert grant is not None, record_key
                    got = cache[record_key] = (grant.key_id, grant.key)
                return got

            self.ring = ring
            self.sealer = RecordSealer(sealing_key=key_for)
        self.cp_ids = cp_ids
        self.cp_set = set(cp_ids)
        self.partitions = partitions
        self.supplying: dict[str, tuple[int, str]] = {}  # cp -> (session, driver)
        self.measuring = False
        self.produced = 0
        self.producer = BusProducer(settings, linger_ms=5)
        self.energy: dict[str, float] = {}

    async def run_engines(self) -> None:
        assignments = [(Topic.CP_COMMANDS, p, OFFSET_END) for p in range(self.partitions[Topic.CP_COMMANDS])]
        async with BusConsumer(self.settings, assignments) as consumer:
            while True:
                for record in await consumer.next_batch(1000):
                    if record.key not in self.cp_set:
                        continue
                    ev = self.decode(record)
                    if isinstance(ev, AuthorizeCommand) and ev.cp_id in self.cp_set:
                        now = int(time.time() * 1000)
                        self.send(
                            Topic.CP_EVENTS,
                            ev.cp_id,
                            AuthorizationAnswer(cp_id=ev.cp_id, session_id=ev.session_id, accepted=True, ts_ms=now),
                        )
                        self.send(
                            Topic.CP_EVENTS,
                            ev.cp_id,
                            SupplyStarted(
                                cp_id=ev.cp_id,
                                session_id=ev.session_id,
                                driver_id=ev.driver_id,
                                started_ts_ms=now,
                                ts_ms=now,
                            ),
                        )
                        self.supplying[ev.cp_id] = (ev.session_id, ev.driver_id)

    def send(self, topic: Topic, key: str, event: Any) -> None:
        value = encode_event(event)
        if self.sealer is not None:
            value = self.sealer.wrap(topic, key, value, event_type=event.TYPE)
        self.producer.post(topic, key, value, partition=partition_for(key, self.partitions[topic]))

    def burst(self, seconds: int) -> int:
        """``seconds`` readings from every supplying CP, posted at once; returns how many."""
        now = int(time.time() * 1000)
        n = 0
        for _ in range(seconds):
            for cp_id, (session, driver) in list(self.supplying.items()):
                e = self.energy.get(cp_id, 0.0) + 0.002
                self.energy[cp_id] = e
                self.send(
                    Topic.CP_EVENTS,
                    cp_id,
                    SupplyProgress(
                        cp_id=cp_id,
                        session_id=session,
                        driver_id=driver,
                        energy_kwh=e,
                        amount_eur=e * 0.3,
                        power_kw=7.4,
                        elapsed_s=1.0,
                        ts_ms=now,
                    ),
                )
                n += 1
        return n

    async def telemetry(self) -> None:
        """Every CP that supplies reports once a second, spread over the second in 10 slices."""
        slot = 0
        energy = self.energy
        next_at = time.monotonic()
        while True:
            next_at += 0.1
            now = int(time.time() * 1000)
            for cp_id, (session, driver) in list(self.supplying.items()):
                if hash(cp_id) % 10 != slot:
                    continue
                e = energy.get(cp_id, 0.0) + 0.002
                energy[cp_id] = e
                self.send(
                    Topic.CP_EVENTS,
                    cp_id,
                    SupplyProgress(
                        cp_id=cp_id,
                        session_id=session,
                        driver_id=driver,
                        energy_kwh=e,
                        amount_eur=e * 0.3,
                        power_kw=7.4,
                        elapsed_s=1.0,
                        ts_ms=now,
                    ),
                )
                if self.measuring:
                    self.produced += 1
            slot = (slot + 1) % 10
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def request_supplies(self, n_drivers: int) -> None:
        for i in range(n_drivers):
            self.send(
                Topic.DRIVER_REQUESTS,
                f"D{i:05d}",
                SupplyRequest(
                    request_id=f"bench-{i}-{random.getrandbits(32)}",
                    driver_id=f"D{i:05d}",
                    cp_id=self.cp_ids[i],
                    ts_ms=int(time.time() * 1000),
                ),
            )
            if i % 200 == 199:
                await asyncio.sleep(0.05)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points (0 with fewer than two distinct t)."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def stored_offsets(db: str) -> dict[int, int]:
    """Central's next cp-events offset per partition, as committed with its decisions."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT partition, next_offset FROM offsets WHERE topic = 'cp-events'").fetchall())
    finally:
        conn.close()


def central_lag(db: str, bootstrap_settings: KafkaSettings, partitions: int) -> int:
    """Records in cp-events Central has not processed (end offsets minus its stored offsets)."""
    ends = asyncio.run(end_offsets(bootstrap_settings, Topic.CP_EVENTS, range(partitions)))
    stored = stored_offsets(db)
    return sum(max(0, ends[p] - stored.get(p, ends[p])) for p in range(partitions))


async def catch_up(
    args: argparse.Namespace, engines: Engines, db: str, settings: KafkaSettings, bootstrap: str, partitions: int
) -> dict[str, Any]:
    """Saturate Central's telemetry path, then drain the same records with a bare consume loop.

    The engines post ``--burst`` seconds' worth of readings at once (for the real
    sessions, energy still rising); Central is timed from the first post until its
    committed offsets pass the burst's end (it decodes, decides, relays and commits
    every record, the live readings arriving meanwhile included). Posting takes a
    small fraction of that time. A bare confluent-kafka loop in
    its own process then reads exactly the burst's records. Ratio = Central's
    records/s over the bare loop's.
    """
    topic = settings.topic(Topic.CP_EVENTS)
    start = await end_offsets(settings, Topic.CP_EVENTS, range(partitions))
    done0 = sum(stored_offsets(db).get(p, 0) for p in range(partitions))
    t0 = time.monotonic()  # posting takes a fraction of what Central needs: time it all
    posted = engines.burst(int(args.burst))
    owed = engines.producer.produced  # live readings keep coming: wait for these, not for a quiet moment
    while engines.producer.delivered + engines.producer.failed < owed:
        await asyncio.sleep(0.01)
    target = await end_offsets(settings, Topic.CP_EVENTS, range(partitions))
    goal = sum(target.values())
    deadline = t0 + 600
    while time.monotonic() < deadline:
        stored = stored_offsets(db)
        if all(stored.get(p, 0) >= target[p] for p in range(partitions)):
            break
        await asyncio.sleep(0.02)
    central_s = time.monotonic() - t0
    done = sum(stored_offsets(db).get(p, 0) for p in range(partitions))
    central_rate = (min(done, goal) - done0) / central_s if central_s > 0 else float("nan")
    drain = Child(_drain_main, bootstrap, topic, start, target)
    count, bare_s = await drain.recv(600)
    drain.stop()
    bare_rate = count / bare_s if bare_s > 0 else float("nan")
    return {
        "records": posted,
        "central_per_s": round(central_rate),
        "bare_per_s": round(bare_rate),
        "central_vs_bare": round(central_rate / bare_rate, 3) if bare_rate else None,
    }


def _secure_setup(db: str, workdir: str, prefix: str, cp_ids: list[str], drivers: list[str]) -> tuple[list[str], Any]:
    """Release 2 for a run: a CA and Central's certificate, every CP registered (cheap scrypt:
    the registry's cost is not what is measured), every driver given a key, a viewer token."""
    from pathlib import Path as _Path

    from evproto.aio import tls_client_context
    from evproto.daemons.central.keyring import KeyRing
    from evproto.daemons.credentials import CredentialStore
    from evproto.daemons.credentials_file import write_cp_credentials
    from evproto.daemons.pki import CertificateAuthority
    from evproto.daemons.tokens import TokenRole, TokenStore

    pki = os.path.join(workdir, f"{prefix}pki")
    ca = CertificateAuthority.ensure(pki)
    cert = ca.issue("central", pki, hosts=("127.0.0.1",))
    creds = CredentialStore(db, params=(10, 8, 1))
    cps = {cp: creds.register(cp, "bench", by="capacity") for cp in cp_ids}
    creds.close()
    ring = KeyRing(db)
    for d in drivers:
        ring.issue_driver_key(d)
    ring.close()
    tokens = TokenStore(db)
    token, _ = tokens.create(TokenRole.VIEWER, "capacity")
    tokens.close()
    _API["headers"] = {"Authorization": f"Bearer {token}"}
    _API["context"] = tls_client_context(ca=str(ca.cert_path))
    real = str(write_cp_credentials(_Path(pki) / "CPREAL.json", "CPREAL", cps.pop("CPREAL")))
    return (
        ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)],
        {"ca": str(ca.cert_path), "cps": cps, "real": real},
    )


async def measure(args: argparse.Namespace, bootstrap: str, workdir: str, broker_pid: int | None) -> dict[str, Any]:
    prefix = f"cap{random.getrandbits(24):06x}."
    settings = KafkaSettings(bootstrap=bootstrap, client_id="capacity", prefix=prefix)
    partitions = await ensure_topics(settings)
    db = os.path.join(workdir, f"{prefix}central.db")
    n_drivers = min(args.drivers, args.cps)
    drivers = [f"D{i:05d}" for i in range(n_drivers)] + ["DREAL"]
    subprocess.run(
        [sys.executable, "-m", "evproto.daemons.central", "--db", db, "drivers", "add", *drivers],
        check=True,
        capture_output=True,
    )
    security, secrets = ["--insecure"], None
    if args.secure:
        security, secrets = _secure_setup(
            db, workdir, prefix, [f"CP{i:05d}" for i in range(args.cps)] + ["CPREAL"], drivers
        )
    ready = os.path.join(workdir, f"{prefix}ready.json")
    env = {**os.environ, "EVPROTO_TOPIC_PREFIX": prefix}
    log = open(os.path.join(workdir, f"{prefix}central.log"), "wb")
    central = subprocess.Popen(
        central_argv(db, bootstrap, ready, security),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs = [central]
    children: list[Child] = []
    engines: Engines | None = None
    tasks: list[asyncio.Future[Any]] = []
    measuring = MP.Event()
    try:
        while not os.path.exists(ready):
            if central.poll() is not None:
                raise RuntimeError(f"Central exited; see {log.name}")
            await asyncio.sleep(0.05)
        info = json.loads(Path(ready).read_text())
        http = f"{'https' if args.secure else 'http'}://{info['http']}/api/v1"
        cp_ids = [f"CP{i:05d}" for i in range(args.cps)]
        engines = Engines(settings, cp_ids, partitions, db if args.secure else None)
        await engines.producer.start()
        t0 = time.monotonic()
        say(args, f"connecting {args.cps} monitors...")
        central_url = f"tls://{info['listen']}?ca={secrets['ca']}" if secrets else info["listen"]
        monitors = Child(_monitors_main, central_url, cp_ids, secrets["cps"] if secrets else None)
        drivers_proc = Child(
            _drivers_main, settings, partitions[Topic.DRIVER_EVENTS], measuring, db if args.secure else None
        )
        bare = Child(_bare_main, bootstrap, settings.topic(Topic.CP_EVENTS), partitions[Topic.CP_EVENTS], measuring)
        children += [monitors, drivers_proc, bare]
        connected = await monitors.recv(300)
        say(args, f"{connected} monitors connected in {time.monotonic() - t0:.1f} s")
        if args.secure:
            engines.ring.reload()  # the keys Central granted the monitors just now
        # One real charge point (engine + monitor processes) supplying alongside, for their memory.
        real_state = os.path.join(workdir, f"{prefix}engine-state")
        engine_ready = os.path.join(workdir, f"{prefix}engine.json")
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evproto.daemons.engine",
                "--kafka",
                bootstrap,
                "--listen",
                "127.0.0.1:0",
                "--auto",
                "--plug-delay-s",
                "0.5",
                "--supply-s",
                "3600",
                "--state-dir",
                real_state,
                "--ready-file",
                engine_ready,
                "--log-level",
                "warning",
                *(["--insecure"] if not args.secure else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        procs.append(engine)
        while not os.path.exists(engine_ready):
            if engine.poll() is not None:
                raise RuntimeError("the real engine exited")
            await asyncio.sleep(0.05)
        engine_listen = json.loads(Path(engine_ready).read_text())["listen"]
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evproto.daemons.monitor",
                "--engine",
                engine_listen,
                "--central",
                info["listen"],
                "--id",
                "CPREAL",
                "--location",
                "bench",
                "--price",
                "0.3",
                "--log-level",
                "warning",
                *(["--credentials", secrets["real"], "--ca", secrets["ca"]] if secrets else ["--insecure"]),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        procs.append(monitor)
        tasks = [asyncio.ensure_future(engines.run_engines()), asyncio.ensure_future(engines.telemetry())]
        await drivers_proc.recv(60)
        await bare.recv(60)
        await asyncio.sleep(1.0)  # let the consumers settle at the end of their partitions
        await engines.request_supplies(n_drivers)
        engines.send(
            Topic.DRIVER_REQUESTS,
            "DREAL",
            SupplyRequest(
                request_id=f"real-{random.getrandbits(32)}",
                driver_id="DREAL",
                cp_id="CPREAL",
                ts_ms=int(time.time() * 1000),
            ),
        )
        ramp_deadline = time.monotonic() + args.ramp
        while len(engines.supplying) < n_drivers and time.monotonic() < ramp_deadline:
            await asyncio.sleep(0.25)
        say(args, f"{len(engines.supplying)} supplying after {time.monotonic() - t0:.1f} s")
        # Steady state first: the ramp leaves a backlog; measure once Central has caught up.
        settle_deadline = time.monotonic() + 60
        while time.monotonic() < settle_deadline:
            await asyncio.sleep(1.0)
            backlog = await asyncio.to_thread(central_lag, db, settings, partitions[Topic.CP_EVENTS])
            if backlog <= max(100, 0.1 * args.cps):
                break
        say(args, f"steady (backlog {backlog}) after {time.monotonic() - t0:.1f} s; measuring for {args.duration:g} s")

        # -- the measurement window
        load_pids = [os.getpid()] + [c.proc.pid for c in children]
        profiler = None
        if args.profile:
            profiler = subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(central.pid),
                    "--duration",
                    str(int(args.duration)),
                    "--format",
                    "raw",
                    "--output",
                    args.profile,
                    "--nonblocking",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        status0 = http_json(f"{http}/status")["counters"]
        lag0 = await asyncio.to_thread(central_lag, db, settings, partitions[Topic.CP_EVENTS])
        broker0 = proc_cpu_s(broker_pid) if broker_pid else 0.0
        busy0 = machine_busy()
        load0 = [proc_cpu_s(p) for p in load_pids]
        cpu0, w0 = proc_cpu_s(central.pid), time.monotonic()
        measuring.set()
        engines.measuring = True
        rss_samples = []
        lag_samples = [(0.0, lag0)]
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            rss_samples.append(proc_rss_mb(central.pid))
            lag = await asyncio.to_thread(central_lag, db, settings, partitions[Topic.CP_EVENTS])
            lag_samples.append((time.monotonic() - w0, lag))
        measuring.clear()
        engines.measuring = False
        window = time.monotonic() - w0
        cpu1 = proc_cpu_s(central.pid)
        load1 = [proc_cpu_s(p) for p in load_pids]
        broker1 = proc_cpu_s(broker_pid) if broker_pid else 0.0
        busy1 = machine_busy()
        status1 = http_json(f"{http}/status")["counters"]
        lag1 = await asyncio.to_thread(central_lag, db, settings, partitions[Topic.CP_EVENTS])
        lag_samples.append((window, lag1))
        lag_slope = slope(lag_samples)
        if profiler is not None:
            profiler.wait()
        await asyncio.sleep(1.0)  # relays of the window's last records still on their way
        for child in (drivers_proc, bare):
            child.conn.send("stop")
        latencies, to_central, from_central = await drivers_proc.recv(60)
        bare_count, bare_ages = await bare.recv(60)
        cps = http_json(f"{http}/cps")
        caught = {}
        if args.burst > 0:  # links still up, so the sessions are live
            say(args, f"catch-up: {args.burst:g} s of telemetry at once...")
            caught = await catch_up(args, engines, db, settings, bootstrap, partitions[Topic.CP_EVENTS])
        monitors.conn.send("stop")
        still_up = await monitors.recv(120)
        registered = len(cps)
        supplying_now = sum(1 for c in cps if c["state"] == "SUPPLYING")
        in_rate = (status1.get("telemetry_in", 0) - status0.get("telemetry_in", 0)) / window
        out_rate = (status1.get("telemetry_out", 0) - status0.get("telemetry_out", 0)) / window
        bare_rate = bare_count / window
        return {
            "cps": registered,
            "supplying": supplying_now,
            "telemetry_in_per_s": round(in_rate, 1),
            "telemetry_out_per_s": round(out_rate, 1),
            "latency_ms": {
                "p50": round(nearest_rank(latencies, 50), 1),
                "p99": round(nearest_rank(latencies, 99), 1),
                "max": round(max(latencies, default=float("nan")), 1),
            },
            "latency_split_ms": {
                "to_central_p50": round(nearest_rank(to_central, 50), 1),
                "to_central_p99": round(nearest_rank(to_central, 99), 1),
                "from_central_p50": round(nearest_rank(from_central, 50), 1),
                "from_central_p99": round(nearest_rank(from_central, 99), 1),
            },
            "central_cpu_percent": round((cpu1 - cpu0) / window * 100, 1),
            "central_rss_mb": round(max(rss_samples, default=proc_rss_mb(central.pid)), 1),
            # Growing: the backlog's trend (least squares over one sample a second) says Central
            # falls behind by more than 1 % of what arrives; a snapshot alone catches a batch in flight.
            "lag_growing": bool(lag_slope > max(10.0, 0.01 * in_rate)),
            "lag": {
                "start": lag0,
                "end": lag1,
                "max": max(v for _, v in lag_samples),
                "trend_per_s": round(lag_slope, 1),
            },
            "bare_consumer_per_s": round(bare_rate, 1),
            "bare_latency_ms": {
                "p50": round(nearest_rank(bare_ages, 50), 1),
                "p99": round(nearest_rank(bare_ages, 99), 1),
            },
            "central_vs_bare": round(in_rate / bare_rate, 3) if bare_rate else None,
            "catch_up": caught,
            "monitor_links_up": still_up,
            "loadgen_cpu_percent": round((sum(load1) - sum(load0)) / window * 100, 1),
            # engines (this process), monitors, drivers, bare consumer
            "loadgen_split_percent": [round((b - a) / window * 100, 1) for a, b in zip(load0, load1)],
            "broker_cpu_percent": round((broker1 - broker0) / window * 100, 1) if broker_pid else None,
            "machine_busy_percent": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100, 1),
            "engine_rss_mb": round(proc_rss_mb(engine.pid), 1),
            "monitor_rss_mb": round(proc_rss_mb(monitor.pid), 1),
            # Central's own view: age of the latest readings when it took them in (status API).
            "central_telemetry_age_ms": {
                "p50": status1.get("telemetry_age_p50_ms"),
                "p99": status1.get("telemetry_age_p99_ms"),
            },
            "central_loop_stalls": {
                k: status1.get(f"loop_stalls_{k}", 0) - status0.get(f"loop_stalls_{k}", 0) for k in ("50ms", "200ms")
            },
            "central_gc": {
                "full_collections": status1.get("gc_full_collections", 0) - status0.get("gc_full_collections", 0),
                "full_pause_max_ms": status1.get("gc_full_pause_max_ms"),
                "young_pause_max_ms": status1.get("gc_young_pause_max_ms"),
            },
            "window_s": round(window, 1),
            "telemetry_sent_per_s": round(engines.produced / window, 1),
            "telemetry_received_per_s": round(len(latencies) / window, 1),
        }
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if engines is not None and engines.producer is not None:
            await engines.producer.close(timeout_s=2.0)
        for child in children:
            child.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def catch(r: dict[str, Any]) -> str:
    c = r.get("catch_up") or {}
    if not c:
        return "-"
    if c["records"] < 10_000:  # a drain of a few ms is mostly the sampling period
        return f"{c['records']:,} records: too few to time"
    return f"{c['central_per_s']:,} / {c['bare_per_s']:,} ({c['central_vs_bare']})"


def say(args: argparse.Namespace, text: str) -> None:
    print(f"[{args.cps} CPs] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cps", type=int, default=1000)
    ap.add_argument("--drivers", type=int, default=None, help="default: one per CP (every CP supplies)")
    ap.add_argument("--duration", type=float, default=20.0, help="measurement window, seconds")
    ap.add_argument("--ramp", type=float, default=120.0, help="max seconds to get every supply running")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (one table row each)")
    ap.add_argument(
        "--burst",
        type=float,
        default=20.0,
        help="after the window: this many seconds of telemetry "
        "posted at once, drained by Central and by a bare loop (saturated throughput); 0: skip",
    )
    ap.add_argument("--kafka", default=None, help="use this broker instead of starting the embedded one")
    ap.add_argument(
        "--secure",
        action="store_true",
        help="release 2: TLS, authenticated monitors, sealed and "
        "signed records (the default network); without it release 1's plaintext",
    )
    ap.add_argument("--sweep", default=None, help="comma-separated CP counts, one run each (the knee)")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--write", metavar="FILE", help="put the results table between <!-- bench:capacity --> markers")
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="sample Central with py-spy during the window (raw collapsed stacks; pip install 'evproto[profile]')",
    )
    args = ap.parse_args(argv)
    if args.profile:
        args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not os.access(args.py_spy, os.X_OK):
            ap.error("--profile needs py-spy: pip install 'evproto[profile]'")
    try:
        sizes = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.cps]
    except ValueError:
        ap.error(f"--sweep takes comma-separated CP counts, got {args.sweep!r}")
    if min(sizes) < 1 or args.repeat < 1 or args.duration <= 0 or args.burst < 0:
        ap.error("CP counts and --repeat must be >= 1, --duration > 0, --burst >= 0")
    sizes = [n for n in sizes for _ in range(args.repeat)]
    workdir = tempfile.mkdtemp(prefix="evcapacity-")
    results = []
    failed = ""
    for i, n in enumerate(sizes):
        run_args = argparse.Namespace(**{**vars(args), "cps": n, "drivers": args.drivers or n})
        # A fresh embedded broker per run: one that kept the earlier runs' topics and
        # bursts in memory costs more CPU, and the later sizes of a sweep would pay for it.
        broker = None
        if args.kafka:
            bootstrap = args.kafka
        else:
            broker = EmbeddedBroker(log_path=os.path.join(workdir, f"broker-{i}.log"))
            broker.start()
            bootstrap = broker.bootstrap
        try:
            r = asyncio.run(measure(run_args, bootstrap, workdir, broker.pid if broker is not None else None))
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            if not args.sweep or not results:
                raise
            failed = f"{n} CPs: the run failed ({exc}); the sweep stops here."
            say(run_args, failed)
            break
        finally:
            if broker is not None:
                broker.stop()
        results.append(r)
        print(f"[{n} CPs] {json.dumps(r)}", file=sys.stderr, flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} (2 cores, shared, broker on the same machine), "
        f"Python {platform.python_version()}: `python benchmarks/capacity.py "
        + (f"--sweep {args.sweep}" if args.sweep else f"--cps {args.cps}")
        + f" --duration {args.duration:g}"
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
        + (f" --burst {args.burst:g}" if args.burst != 20 else "")
        + (" --secure" if args.secure else "")
        + "` (a fresh embedded broker for each run).",
        "",
        "| CPs supplying | telemetry in / out per s | latency p50 / p99 | p99 to / from Central | Central CPU | "
        "Central RSS | lag grows | Central / bare consumer, live | catch-up: Central / bare records/s | full GCs | "
        "machine busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        split = r["latency_split_ms"]
        lines.append(
            f"| {r['supplying']} of {r['cps']} | {r['telemetry_in_per_s']:.0f} / {r['telemetry_out_per_s']:.0f} | "
            f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f} ms | "
            f"{split['to_central_p99']:.0f} / {split['from_central_p99']:.0f} ms | {r['central_cpu_percent']:.0f} % | "
            f"{r['central_rss_mb']:.0f} MB | "
            f"{'yes' if r['lag_growing'] else 'no'} ({r['lag']['trend_per_s']:+.0f}/s) | "
            f"{r['central_vs_bare']} | {catch(r)} | "
            f"{r['central_gc']['full_collections']} | {r['machine_busy_percent']:.0f} % |"
        )
    last = results[-1]
    lines += [
        "",
        f"One real engine and monitor pair ran alongside the simulated CPs: engine RSS "
        f"{last['engine_rss_mb']:.0f} MB, monitor RSS {last['monitor_rss_mb']:.0f} MB. Bare consumer's own "
        f"latency (engine produced -> a bare loop has it) at {last['cps']} CPs: p50 "
        f"{last['bare_latency_ms']['p50']:.0f} / p99 {last['bare_latency_ms']['p99']:.0f} ms.",
    ]
    if failed:
        lines += ["", failed]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(
            Path(args.write),
            "capacity-secure" if args.secure else "capacity",
            table,
            intro="## Capacity in release 2 (secure mode)\n\n" if args.secure else "",
        )
    if args.json:
        print(json.dumps(results[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
