"""Simulated hosts for end-to-end tests: Linux network namespaces on one bridge.

::

    with Hosts(["central", "monitors", "engines"]) as hosts:
        hosts.addr("central")          # "10.x.y.1": the host's only address
        hosts.wrap("central")          # ("ip", "netns", "exec", ns): prefix a command to run it there
        hosts.pull("monitors")         # the host's cable is pulled: no packet passes, no RST, no FIN
        hosts.plug("monitors")         # and plugged back in
        hosts.root_addr                # "10.x.y.254": the test process itself (the bridge's address)

Each host is a namespace with ``lo`` up and one end of a veth pair ("its cable",
named ``eth0`` inside) whose other end is a port of a bridge in the root
namespace. The bridge has an address on the same /24, so the test process
(root namespace) reaches every host directly: it plays the drivers, polls
Central's HTTP API and talks to the broker. Names carry a random tag and the
/24 (10.x.y.0/24) is picked at random among those not routed here yet, so
several runs can share the machine.

``pull`` sets the bridge-side end of the cable down: the host sees NO-CARRIER,
keeps its address and routes (flagged ``linkdown``) and every packet it sends
is silently dropped, as is every packet sent to it. Nobody gets a RST or a FIN:
TCP connections just go quiet, as with a real cable. (Setting the host-side end
down instead would remove its routes and make ``connect`` fail at once with
ENETUNREACH, which a pulled cable does not do.)

Teardown (``close``, ``__exit__``, and ``atexit`` as a last resort) always
removes everything, whatever failed: processes still running in the namespaces
(SIGKILL, by pid), the veths, the namespaces and the bridge.

Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip``;
:func:`unavailable_reason` says why not, :func:`require_netns` skips a test.

:class:`Broker` runs the embedded Kafka broker (``python -m evproto.bus.broker``)
as a subprocess, optionally inside a namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

__all__ = ["Broker", "Hosts", "NetnsUnavailable", "require_netns", "unavailable_reason"]

IP = "ip"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no ``ip``, no capability)."""


def _ip(*args: str, check: bool = True, timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


_PROBED: str | None | bool = False  # False: not probed yet


def unavailable_reason() -> str | None:
    """None when namespaces, veths and bridges can be made here; otherwise why not (cached)."""
    global _PROBED
    if _PROBED is not False:
        return _PROBED  # type: ignore[return-value]
    _PROBED = _probe()
    return _PROBED


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if shutil.which(IP) is None:
        return "iproute2's `ip` command is not installed"
    if os.geteuid() != 0:
        # Capabilities without root are possible, but `ip netns add` also needs to mount.
        return f"network namespaces need root (euid {os.geteuid()})"
    ns = f"evprobe-{secrets.token_hex(3)}"
    try:
        proc = _ip("netns", "add", ns, check=False)
        if proc.returncode != 0:
            return f"cannot create a network namespace: {proc.stderr.strip() or proc.returncode}"
        # The bridge and the veth are made inside the probe namespace: nothing leaks into ours.
        for args in (
            ("link", "add", "pb0", "type", "bridge"),
            ("link", "add", "pv0", "type", "veth", "peer", "name", "pv1"),
            ("link", "set", "pv0", "master", "pb0"),
            ("link", "set", "pv0", "up"),
        ):
            proc = _ip("-n", ns, *args, check=False)
            if proc.returncode != 0:
                return f"`ip {' '.join(args)}` is not allowed: {proc.stderr.strip() or proc.returncode}"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run `ip`: {exc}"
    finally:
        with contextlib.suppress(Exception):
            _ip("netns", "del", ns, check=False)


def require_netns() -> None:
    """``pytest.skip`` with the reason when network namespaces are unavailable."""
    reason = unavailable_reason()
    if reason is not None:
        import pytest

        pytest.skip(f"simulated hosts unavailable: {reason}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for args in (("-j", "-4", "route", "show", "table", "all"), ("-j", "-4", "addr", "show")):
        proc = _ip(*args, check=False)
        try:
            rows = json.loads(proc.stdout or "[]")
        except ValueError:
            continue
        for row in rows:
            dst = row.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(dst, strict=False))
            for info in row.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    return nets


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    rng = random.SystemRandom()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(100, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 found for the simulated hosts")


_LIVE: set[Hosts] = set()


@atexit.register
def _close_leftovers() -> None:
    for hosts in list(_LIVE):
        hosts.close()


class Hosts:
    """Simulated hosts ``names`` on one bridge; a context manager (see the module's docstring)."""

    BRIDGE_HOST = 254

    def __init__(self, names: Sequence[str], *, subnet: str | None = None) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"host names must be distinct and non-empty: {names!r}")
        if len(names) >= self.BRIDGE_HOST - 1:
            raise ValueError("too many hosts for one /24")
        self.names = list(names)
        self.tag = secrets.token_hex(3)
        self.subnet = ipaddress.ip_network(subnet) if subnet else None
        self.bridge = f"evb{self.tag}"
        self._ns = {n: f"evh-{self.tag}-{n}" for n in self.names}
        self._veth = {n: f"ev{self.tag}h{i}" for i, n in enumerate(self.names)}
        self._addr: dict[str, str] = {}
        self._plugged = {n: False for n in self.names}
        self._made_ns: list[str] = []
        self._made_links: list[str] = []
        self.root_addr = ""
        self.built = False

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Hosts:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> Hosts:
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        _LIVE.add(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.built = True
        return self

    def _build(self) -> None:
        net = self.subnet or _pick_subnet()
        self.subnet = net
        base = net.network_address
        prefix = net.prefixlen
        self.root_addr = str(base + self.BRIDGE_HOST)
        self._made_links.append(self.bridge)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        _ip("addr", "add", f"{self.root_addr}/{prefix}", "dev", self.bridge)
        for i, name in enumerate(self.names):
            ns, veth = self._ns[name], self._veth[name]
            addr = str(base + i + 1)
            self._made_ns.append(ns)
            _ip("netns", "add", ns)
            self._made_links.append(veth)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "set", veth, "up")
            self._addr[name] = addr
            self._plugged[name] = True

    def close(self) -> None:
        """Remove everything this object made; never raises, safe to call twice."""
        _LIVE.discard(self)
        for ns in self._made_ns:
            self._kill_processes_in(ns)
        for link in reversed(self._made_links):
            with contextlib.suppress(Exception):
                _ip("link", "del", link, check=False)
        for ns in self._made_ns:
            with contextlib.suppress(Exception):
                _ip("netns", "del", ns, check=False)
        self._made_links.clear()
        self._made_ns.clear()
        self.built = False

    @staticmethod
    def _kill_processes_in(ns: str) -> None:
        """SIGKILL what still runs in ``ns`` (our own children, left by a failed test):
        a namespace with a process in it outlives ``ip netns del``."""
        with contextlib.suppress(Exception):
            proc = _ip("netns", "pids", ns, check=False)
            pids = [int(p) for p in proc.stdout.split() if p.strip().isdigit()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if _alive(p)]
                time.sleep(0.05)

    # -- hosts -----------------------------------------------------------------------------

    def _check(self, name: str) -> None:
        if name not in self._ns:
            raise KeyError(f"no simulated host {name!r} (hosts: {', '.join(self.names)})")

    def addr(self, name: str) -> str:
        """The host's IPv4 address."""
        self._check(name)
        return self._addr[name]

    def ns(self, name: str) -> str:
        """The host's network namespace name."""
        self._check(name)
        return self._ns[name]

    def wrap(self, name: str) -> tuple[str, ...]:
        """Prefix for a command line that runs it on that host."""
        return (IP, "netns", "exec", self.ns(name))

    def run(self, name: str, *argv: str, timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Run a short command on that host and return its result."""
        return subprocess.run([*self.wrap(name), *argv], capture_output=True, text=True, timeout=timeout_s, check=False)

    def pull(self, name: str) -> None:
        """Pull the host's cable: nothing passes either way; connections go silent."""
        self._check(name)
        _ip("link", "set", self._veth[name], "down")
        self._plugged[name] = False

    def plug(self, name: str) -> None:
        """Plug the host's cable back in."""
        self._check(name)
        _ip("link", "set", self._veth[name], "up")
        self._plugged[name] = True

    def plugged(self, name: str) -> bool:
        self._check(name)
        return self._plugged[name]

    @contextlib.contextmanager
    def pulled(self, *names: str):
        """``with hosts.pulled("engines"):`` the cables are back in afterwards, whatever happens."""
        try:
            for n in names:
                self.pull(n)
            yield
        finally:
            for n in names:
                with contextlib.suppress(Exception):
                    self.plug(n)

    def __repr__(self) -> str:
        hosts = ", ".join(f"{n}={self._addr.get(n, '?')}" for n in self.names)
        return f"<Hosts {self.tag} {self.subnet} {hosts}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone (not reaped here: its Popen must still get its exit status).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Broker:
    """``python -m evproto.bus.broker`` as a subprocess (inside a namespace with ``wrap``).

    Listens on ``host``; ``bootstrap`` is what it printed (``HOST:PORT``). Its own
    output goes to ``log_path``; tansu's to ``log_path + ".tansu"``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        wrap: Iterable[str] = (),
        log_path: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.wrap = tuple(wrap)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.popen: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Broker:
        argv = [*self.wrap, sys.executable, "-m", "evproto.bus.broker", "--host", self.host, "--port", str(self.port)]
        if self.log_path:
            argv += ["--log", self.log_path + ".tansu"]
        err = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        finally:
            if err is not subprocess.DEVNULL:
                err.close()
        assert self.popen.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the broker printed no bootstrap line within {self.start_timeout_s:g} s")
                ready, _, _ = select.select([self.popen.stdout], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(self.popen.stdout.fileno(), 4096)
                    if not chunk:
                        raise RuntimeError(
                            f"the broker exited ({self.popen.wait()}) before it was ready"
                            + (f"; see {self.log_path}" if self.log_path else "")
                        )
                    buf += chunk
            line = buf.split(b"\n", 1)[0].decode().strip()
            if not line.startswith("bootstrap="):
                raise RuntimeError(f"unexpected first line from the broker: {line!r}")
            self.bootstrap = line.partition("=")[2]
        except BaseException:
            self.close()
            raise
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def close(self) -> None:
        """SIGTERM (the wrapper stops tansu), SIGKILL if it lingers."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(8)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()
