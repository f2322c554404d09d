"""A real charging network for end-to-end tests: processes, the embedded broker, 127.0.0.1.

Each test gets its own Kafka topic prefix on a broker shared by the module, so
tests are isolated without paying for a broker start each. Every process is a
real ``python -m evproto.daemons.<x>``; engines get a stdin pipe so tests can
press their keys (plug, unplug, KO, recover). A test plays a driver itself
through Kafka (:class:`KafkaDriver`) or runs ``ev-driver`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from evproto.bus.events import encode_event
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    BusConsumer,
    BusProducer,
    KafkaSettings,
    end_offsets,
    ensure_topics,
)
from evproto.bus.topics import Topic, partition_for
from evproto.daemons.common import is_loopback_host
from evproto.domain.events import Event, RequestUpdate, SupplyRequest, Ticket

HANG_GUARD_S = 45.0


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = HANG_GUARD_S, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after the hang guard."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: str
    ready: dict[str, Any] = field(default_factory=dict)

    def send(self, line: str) -> None:
        """Type a line on the process's stdin (an engine's keys)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write((line + "\n").encode())
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            with open(self.log, "rb") as fh:
                return b"\n".join(fh.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class Network:
    """Processes of one test network; ``close()`` kills them all.

    ``secure``: release 2 as ``evcharging up`` runs it: a CA and Central's certificate
    in ``tmp/pki``, CPs registered with credentials (cheap scrypt for speed), drivers
    with keys, Central's API over HTTPS with an admin token. Otherwise release 1's
    plaintext (``--insecure`` everywhere).
    """

    def __init__(self, tmp: str, bootstrap: str, *, secure: bool = False, hosts: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.secure = secure
        self.db = os.path.join(tmp, "central.db")
        self.token = ""
        self.ssl: Any = None
        if secure:
            from evproto.aio import tls_client_context
            from evproto.daemons.pki import CertificateAuthority

            self.pki = os.path.join(tmp, "pki")
            self.ca = CertificateAuthority.ensure(self.pki)
            self.central_cert = self.ca.issue("central", self.pki, hosts=("127.0.0.1", "localhost", *hosts))
            self.ssl = tls_client_context(ca=str(self.ca.cert_path))
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.procs: list[Proc] = []
        self.closers: list[Callable[[], None]] = []
        self.http = ""
        self.central_addr = ""
        self.settings = KafkaSettings(bootstrap=bootstrap, client_id="e2e-test", prefix=self.prefix)
        asyncio.run(ensure_topics(self.settings))

    # -- processes -------------------------------------------------------------------------

    def spawn(
        self, name: str, module: str, *args: str, stdin: bool = False, ready: bool = True, wrap: tuple[str, ...] = ()
    ) -> Proc:
        """Start ``python -m evproto.daemons.<module> args``; ``wrap`` prefixes the command
        (e.g. ``("ip", "netns", "exec", "h3")`` to run it on another simulated host)."""
        log = os.path.join(self.tmp, f"{name}.log")
        ready_file = os.path.join(self.tmp, f"{name}.ready.json")
        argv = [*wrap, sys.executable, "-m", f"evproto.daemons.{module}", *args, "--log-format", "text"]
        if not self.secure and module in ("central", "engine", "monitor", "driver") and "--insecure" not in args:
            argv.append("--insecure")
        if os.path.exists(ready_file):
            os.unlink(ready_file)  # a restart must not read its predecessor's ports
        if ready:
            argv += ["--ready-file", ready_file]
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "EVPROTO_TOPIC_PREFIX": self.prefix},
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if ready:

            def is_ready() -> Any:
                if not proc.alive():
                    raise AssertionError(f"{name} exited ({popen.returncode}):\n{proc.tail()}")
                if os.path.exists(ready_file):
                    with open(ready_file, encoding="utf-8") as rf:
                        return json.load(rf)
                return None

            proc.ready = wait_for(is_ready, f"{name} to be ready")
        return proc

    def start_central(
        self,
        *drivers: str,
        extra: tuple[str, ...] = (),
        host: str = "127.0.0.1",
        wrap: tuple[str, ...] = (),
        same_ports: bool = False,
    ) -> Proc:
        """Start Central (database in the test's directory); ``same_ports`` reuses the ports of
        the previous Central, as a restart on the same machine would."""
        port, http_port = ("0", "0")
        if same_ports and self.central_addr:
            port, http_port = self.central_addr.rsplit(":", 1)[1], self.http.rsplit(":", 1)[1]
        args = [
            "--db",
            self.db,
            "--kafka",
            self.bootstrap,
            "--port",
            port,
            "--http-port",
            http_port,
            "--host",
            host,
            "--no-panel",
            *extra,
        ]
        for d in drivers:
            args += ["--register-driver", d]
        if self.secure:
            args += ["--tls-cert", str(self.central_cert.cert), "--tls-key", str(self.central_cert.key)]
            for d in drivers:
                self.driver_credentials(d)
            if not self.token:
                self.token = self.make_token("admin")
        proc = self.spawn("central", "central", *args, stdin=True, wrap=wrap)
        self.central_addr = proc.ready["listen"]
        self.http = ("https://" if self.secure else "http://") + proc.ready["http"]
        return proc

    # -- release 2: credentials ------------------------------------------------------------

    def make_token(self, role: str, name: str = "tester") -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "evproto.daemons.central",
                "--db",
                self.db,
                "tokens",
                "create",
                "--role",
                role,
                "--name",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def cp_credentials(self, cp_id: str, location: str = "Alicante") -> str:
        """Register ``cp_id`` as the registry would and write its credentials file; its path."""
        from pathlib import Path

        from evproto.daemons.credentials import AlreadyRegistered, CredentialStore
        from evproto.daemons.credentials_file import write_cp_credentials

        path = Path(self.tmp) / "creds" / f"{cp_id}.json"
        if path.exists():
            return str(path)
        store = CredentialStore(self.db, params=(10, 8, 1))
        try:
            secret = store.register(cp_id, location, by="test")
        except AlreadyRegistered:
            raise AssertionError(f"{cp_id} registered without a credentials file") from None
        finally:
            store.close()
        return str(write_cp_credentials(path, cp_id, secret))

    def driver_credentials(self, driver_id: str) -> str:
        path = os.path.join(self.tmp, "creds", f"{driver_id}.json")
        if not os.path.exists(path):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "evproto.daemons.central",
                    "--db",
                    self.db,
                    "drivers",
                    "add",
                    driver_id,
                    "--credentials",
                    os.path.join(self.tmp, "creds"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
        return path

    def gate(self) -> Any:
        """A reader's gate that opens every record of this network (Central's keys)."""
        from evproto.daemons.central.keyring import KeyRing
        from evproto.daemons.gate import PLAIN_POLICY, RecordGate

        if not self.secure:
            from evproto.daemons.gate import MemoryKeyBook

            return RecordGate(MemoryKeyBook(), policy=PLAIN_POLICY)
        return RecordGate(KeyRing(self.db))

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Kill a process with a real signal and forget it."""
        proc.popen.send_signal(sig)
        proc.popen.wait(15)
        self.procs.remove(proc)

    def restart(self, proc: Proc, **overrides: Any) -> Proc:
        """Start a killed process again with the same command line (same identity and state)."""
        argv = list(proc.popen.args)  # type: ignore[arg-type]
        if "--listen" in argv and proc.ready.get("listen"):
            # Back on the port its monitor knows (a tls:// address keeps its certificate options).
            at = argv.index("--listen") + 1
            scheme, _, rest = argv[at].rpartition("://")
            options = rest.partition("?")[2]
            argv[at] = (f"{scheme}://" if scheme else "") + proc.ready["listen"] + (f"?{options}" if options else "")
        ready = os.path.join(self.tmp, f"{proc.name}.ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        with open(proc.log, "ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "EVPROTO_TOPIC_PREFIX": self.prefix},
            )
        again = Proc(proc.name, popen, proc.log, dict(proc.ready))
        self.procs.append(again)
        if "--ready-file" in argv:
            again.ready = wait_for(
                lambda: os.path.exists(ready) and json.load(open(ready, encoding="utf-8")),
                f"{proc.name} to be ready again",
            )
        return again

    def log_has(self, proc: Proc, text: str) -> bool:
        try:
            with open(proc.log, encoding="utf-8", errors="replace") as fh:
                return text in fh.read()
        except OSError:
            return False

    def start_engine(
        self,
        cp_id: str,
        *,
        auto: bool = False,
        engine_args: tuple[str, ...] = (),
        listen: str = "127.0.0.1:0",
        wrap: tuple[str, ...] = (),
    ) -> Proc:
        if self.secure and "://" not in listen and not is_loopback_host(listen.rpartition(":")[0]):
            # Release 2 across hosts: the monitor-engine link is mutual TLS (ev-central certs --cp).
            cert = self.ca.issue(cp_id, self.pki, hosts=(listen.rpartition(":")[0],), stem=f"engine-{cp_id}")
            listen = f"tls://{listen}?cert={cert.cert}&key={cert.key}&ca={self.ca.cert_path}"
        return self.spawn(
            f"engine-{cp_id}",
            "engine",
            "--kafka",
            self.bootstrap,
            "--listen",
            listen,
            "--state-dir",
            os.path.join(self.tmp, f"state-{cp_id}"),
            *(["--auto"] if auto else []),
            *engine_args,
            stdin=True,
            wrap=wrap,
        )

    def start_monitor(
        self,
        cp_id: str,
        engine_addr: str,
        *,
        location: str = "Alicante",
        price: float = 0.30,
        central: str | None = None,
        wrap: tuple[str, ...] = (),
    ) -> Proc:
        extra: list[str] = []
        if self.secure:
            extra = ["--credentials", self.cp_credentials(cp_id, location), "--ca", str(self.ca.cert_path)]
            if "://" not in engine_addr and not is_loopback_host(engine_addr.rpartition(":")[0]):
                cert = self.ca.issue(cp_id, self.pki, client=True, stem=f"monitor-{cp_id}")
                engine_addr = f"tls://{engine_addr}?ca={self.ca.cert_path}&cert={cert.cert}&key={cert.key}"
        return self.spawn(
            f"monitor-{cp_id}",
            "monitor",
            "--engine",
            engine_addr,
            "--central",
            central or self.central_addr,
            "--id",
            cp_id,
            "--location",
            location,
            "--price",
            str(price),
            *extra,
            wrap=wrap,
        )

    def start_cp(
        self,
        cp_id: str,
        *,
        location: str = "Alicante",
        price: float = 0.30,
        auto: bool = False,
        engine_args: tuple[str, ...] = (),
    ) -> tuple[Proc, Proc]:
        engine = self.start_engine(cp_id, auto=auto, engine_args=engine_args)
        monitor = self.start_monitor(cp_id, engine.ready["listen"], location=location, price=price)
        return engine, monitor

    def start_driver(self, driver_id: str, requests: str, *args: str) -> Proc:
        path = os.path.join(self.tmp, f"requests-{driver_id}.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(requests)
        extra = ["--credentials", self.driver_credentials(driver_id)] if self.secure else []
        return self.spawn(
            f"driver-{driver_id}",
            "driver",
            "--kafka",
            self.bootstrap,
            "--id",
            driver_id,
            "--requests",
            path,
            "--state-dir",
            os.path.join(self.tmp, f"dstate-{driver_id}"),
            *extra,
            *args,
        )

    def close(self) -> None:
        for closer in self.closers:
            closer()
        for p in self.procs:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for p in self.procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            if p.popen.stdin:
                p.popen.stdin.close()

    def forge(self, topic: Topic, key: str | None, value: bytes | None, *, partition: int | None = None) -> None:
        """Write a raw record as anyone who reaches the broker could (plain confluent-kafka,
        none of our adapters): by default on the partition our readers take for ``key``."""
        import confluent_kafka

        partitions = asyncio.run(ensure_topics(self.settings))
        if partition is None:
            partition = partition_for(key or "", partitions[topic])
        producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap, "message.max.bytes": 2_000_000})
        errors: list[Any] = []
        producer.produce(
            self.settings.topic(topic),
            value=value,
            key=key.encode("utf-8", "surrogatepass") if key else None,
            partition=partition,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
        assert producer.flush(15) == 0 and not errors, errors

    def read_topic(self, topic: Topic, *, key: str | None = None) -> list[Event]:
        """Every record of ``topic`` so far (all partitions, from the beginning), decoded;
        only those with ``key`` when given."""

        async def read() -> list[Event]:
            partitions = await ensure_topics(self.settings)
            found: list[Event] = []
            ends = await end_offsets(self.settings, topic, list(range(partitions[topic])))
            wanted = [(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0]
            if not wanted:
                return found
            left = {p: end for p, end in ends.items() if end > 0}
            gate = self.gate()
            async with BusConsumer(self.settings, wanted) as consumer:
                while left:
                    record = await asyncio.wait_for(consumer.__anext__(), HANG_GUARD_S)
                    if record.offset + 1 >= left.get(record.partition, 0):
                        left.pop(record.partition, None)
                    if (key is None or record.key == key) and record.value is not None:  # not tombstones
                        gate.window.load({})  # reading history again is not replaying it
                        found.append(gate.decode(record, int(time.time() * 1000)))
            return found

        return asyncio.run(read())

    def raw_records(self, topic: Topic, *, key: str | None = None) -> list[bytes]:
        """The raw values of ``topic`` so far (all partitions), as an eavesdropper sees them."""

        async def read() -> list[bytes]:
            partitions = await ensure_topics(self.settings)
            ends = await end_offsets(self.settings, topic, list(range(partitions[topic])))
            wanted = [(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0]
            found: list[bytes] = []
            left = {p: end for p, end in ends.items() if end > 0}
            if not wanted:
                return found
            async with BusConsumer(self.settings, wanted) as consumer:
                while left:
                    record = await asyncio.wait_for(consumer.__anext__(), HANG_GUARD_S)
                    if record.offset + 1 >= left.get(record.partition, 0):
                        left.pop(record.partition, None)
                    if (key is None or record.key == key) and record.value is not None:
                        found.append(record.value)
            return found

        return asyncio.run(read())

    def run_cli(self, module: str, *args: str) -> str:
        """Run ``python -m evproto.daemons.<module> args`` to completion; its output."""
        done = subprocess.run(
            [sys.executable, "-m", f"evproto.daemons.{module}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp,
        )
        return done.stdout + done.stderr

    def _request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.http + path, method=method, data=data)
        token = self.token if token is None else token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=5, context=self.ssl) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def delete(self, path: str) -> tuple[int, Any]:
        return self._request("DELETE", path)

    def status(self) -> dict[str, Any]:
        """Central's counters (GET /api/v1/status)."""
        return self.get("/api/v1/status")["counters"]

    # -- Central's HTTP API ----------------------------------------------------------------

    def get(self, path: str) -> Any:
        status, body = self._request("GET", path)
        if status != 200:
            raise urllib.error.HTTPError(self.http + path, status, str(body), None, None)  # type: ignore[arg-type]
        return body

    def post(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self._request("POST", path, data=kw.pop("data", b""), **kw)

    def cp_state(self, cp_id: str) -> str | None:
        """The CP's state on Central's API, None while Central does not know it yet."""
        return next((c["state"] for c in self.get("/api/v1/cps") if c["id"] == cp_id), None)

    def wait_state(self, cp_id: str, state: str, timeout_s: float = HANG_GUARD_S) -> None:
        wait_for(lambda: self.cp_state(cp_id) == state, f"{cp_id} to be {state}", timeout_s)

    def wait_serving(self, engine: Proc, cp_id: str) -> None:
        """Wait until ``engine`` serves ``cp_id``: its keys act from then on.

        Central shows a CP ACTIVATED as soon as its monitor registers; the monitor
        names the CP to its engine only after that, so keys typed between the two
        find no charge point yet, and a cable pulled in between leaves the two
        without a link to lose.
        """
        wait_for(
            lambda: self.log_has(engine, f"serving charge point {cp_id}") and self.log_has(engine, "monitor connected"),
            f"the engine to serve {cp_id} with its monitor connected",
        )


class KafkaDriver:
    """The test plays a driver: sends requests and reads its own driver-events partition.

    A background thread keeps one consumer on the driver's partition (from the
    beginning) and collects the driver's events as they arrive.
    """

    def __init__(self, net: Network, driver_id: str) -> None:
        self.net = net
        self.driver_id = driver_id
        self.sealer: Any = None
        if net.secure:
            from evproto.daemons.credentials_file import read_driver_credentials
            from evproto.daemons.gate import RecordSealer

            creds = read_driver_credentials(net.driver_credentials(driver_id), driver_id)
            self.sealer = RecordSealer(sealing_key=lambda topic, key: (creds.key_id, creds.key))
        self._gate = net.gate()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._read()), daemon=True)
        self._thread.start()
        net.closers.append(self.close)

    async def _read(self) -> None:
        partitions = await ensure_topics(self.net.settings)
        partition = partition_for(self.driver_id, partitions[Topic.DRIVER_EVENTS])
        async with BusConsumer(self.net.settings, [(Topic.DRIVER_EVENTS, partition, OFFSET_BEGINNING)]) as consumer:
            while not self._stop.is_set():
                try:
                    record = await asyncio.wait_for(consumer.__anext__(), 0.2)
                except asyncio.TimeoutError:
                    continue
                if record.key == self.driver_id:
                    with self._lock:
                        self._events.append(self._gate.decode(record, int(time.time() * 1000)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def request(self, cp_id: str, *, energy_kwh: float | None = None, duration_s: float | None = None) -> str:
        request_id = uuid.uuid4().hex
        ev = SupplyRequest(
            request_id=request_id,
            driver_id=self.driver_id,
            cp_id=cp_id,
            ts_ms=int(time.time() * 1000),
            target_energy_kwh=energy_kwh,
            target_duration_s=duration_s,
        )

        async def send() -> None:
            value = encode_event(ev)
            if self.sealer is not None:
                value = self.sealer.wrap(Topic.DRIVER_REQUESTS, self.driver_id, value)
            async with BusProducer(self.net.settings) as producer:
                await producer.send(Topic.DRIVER_REQUESTS, self.driver_id, value)

        asyncio.run(send())
        return request_id

    def events(self) -> list[Event]:
        """Every event for this driver received so far."""
        with self._lock:
            return list(self._events)

    def updates(self, request_id: str) -> list[RequestUpdate]:
        return [e for e in self.events() if isinstance(e, RequestUpdate) and e.request_id == request_id]

    def wait_status(self, request_id: str, status: str, timeout_s: float = HANG_GUARD_S) -> RequestUpdate:
        return wait_for(
            lambda: next((u for u in self.updates(request_id) if u.status == status), None),
            f"request {request_id[:8]} of {self.driver_id} to be {status}",
            timeout_s,
        )

    def tickets(self) -> list[Ticket]:
        return [e for e in self.events() if isinstance(e, Ticket)]


def launcher_api(run_dir: str, path: str, *, method: str = "GET") -> Any:
    """Call Central's API of a network ``evcharging up`` started, as ``evcharging env``
    tells a shell to: its base URL, the operator token and the CA, when it is secure."""
    with open(os.path.join(run_dir, "instances.json"), encoding="utf-8") as fh:
        meta = json.load(fh)["meta"]
    secure = bool(meta.get("secure"))
    request = urllib.request.Request(
        f"{'https' if secure else 'http'}://{meta['http']}{path}", method=method, data=b"" if method == "POST" else None
    )
    context = None
    if secure:
        from evproto.daemons.netsecrets import NetworkSecrets
        from evproto.daemons.tokens import TokenRole

        secrets = NetworkSecrets(run_dir)
        token = secrets.token(os.path.join(run_dir, "central", "central.db"), TokenRole.OPERATOR)
        request.add_header("Authorization", f"Bearer {token}")
        context = secrets.tls()
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        return json.load(resp)


def full_supply(net: Network, driver: KafkaDriver, cp_id: str, engine: Proc) -> Ticket:
    """A request, authorisation, plug, unplug and ticket at ``cp_id``: the CP works."""
    from evproto.domain.events import DriverTelemetry

    rid = driver.request(cp_id)
    sid = driver.wait_status(rid, "authorized").session_id
    engine.send("p")
    net.wait_state(cp_id, "SUPPLYING")
    wait_for(
        lambda: any(
            isinstance(e, DriverTelemetry) and e.session_id == sid and e.energy_kwh > 0 for e in driver.events()
        ),
        "energy to flow",
    )
    engine.send("u")
    driver.wait_status(rid, "completed")
    return wait_for(lambda: next((t for t in driver.tickets() if t.request_id == rid), None), "the ticket")
