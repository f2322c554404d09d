"""The monitor-engine link in release 2: the monitor hands its engine the CP's record key
over it, so only this host (loopback) or a monitor certified for the CP (mutual TLS)
may hold it. Real processes, real TLS, the real broker."""

from __future__ import annotations

import asyncio
import os
import ssl

import pytest
from netharness import Network, wait_for

from evproto import Hello, LinkRejectedError, ReasonCode, Role
from evproto.aio import open_link, tls_client_context
from evproto.daemons.common import EXIT_USAGE
from evproto.errors import EvprotoError

#: No EVPROTO_INSECURE from the caller's environment: the programs decide as release 2.
RELEASE_2 = {**os.environ, "EVPROTO_INSECURE": ""}


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:0", "192.0.2.7:7100", "[::]:7100", "engine.example:7100", "tls://0.0.0.0:0?cert=e.pem&key=e.key"],
)
def test_a_release_2_engine_will_not_take_its_key_over_a_link_others_can_reach(listen: str, run_daemon) -> None:
    r = run_daemon("evcp-engine", "--kafka", "127.0.0.1:1", "--listen", listen, env=RELEASE_2)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "record key" in r.stderr or "ca=" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("engine", ["192.0.2.7:7100", "engine.example:7100", "tls://192.0.2.7:7100?ca=ca.pem"])
def test_a_release_2_monitor_will_not_hand_its_key_over_a_link_others_can_read(engine: str, run_daemon) -> None:
    r = run_daemon("evcp-monitor", "--engine", engine, "--central", "127.0.0.1:1", "--id", "CP001", env=RELEASE_2)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "--engine" in r.stderr and "Traceback" not in r.stderr


def test_insecure_keeps_release_1_s_plain_link_anywhere(run_daemon) -> None:
    r = run_daemon(
        "evcp-engine", "--kafka", "127.0.0.1:1", "--listen", "0.0.0.0:0", "--insecure", "--help", env=RELEASE_2
    )
    assert r.returncode == 0  # accepted by the parser; --help: nothing started


@pytest.mark.slow
def test_over_mutual_tls_only_a_monitor_certified_for_the_cp_holds_the_engine_s_link(secure_net: Network) -> None:
    net = secure_net
    net.start_central()
    engine_cert = net.ca.issue("CP001", net.pki, hosts=("127.0.0.1",), stem="engine-CP001")
    ca = str(net.ca.cert_path)
    engine = net.start_engine(
        "CP001", listen=f"tls://127.0.0.1:0?cert={engine_cert.cert}&key={engine_cert.key}&ca={ca}"
    )
    host, port = engine.ready["listen"].rsplit(":", 1)
    assert engine.ready["scheme"] == "tls"
    other = net.ca.issue("CP002", net.pki, client=True, stem="monitor-CP002")

    async def attack(cert: str | None, key: str | None) -> BaseException | None:
        ctx = tls_client_context(ca=ca, cert=cert, key=key)
        try:
            link = await open_link(
                f"tls://{host}:{port}", tls=ctx, hello=Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=1000)
            )
        except (EvprotoError, ssl.SSLError, OSError) as exc:
            return exc
        await link.close()
        return None

    # Another CP's monitor certificate naming CP001: refused at the Hello.
    refused = asyncio.run(attack(str(other.cert), str(other.key)))
    assert isinstance(refused, LinkRejectedError) and refused.code is ReasonCode.BAD_CREDENTIALS, refused
    # No client certificate at all: the TLS handshake fails, no link.
    assert asyncio.run(attack(None, None)) is not None
    # Plain TCP to a TLS port: no link either.
    assert asyncio.run(_plain_hello(host, int(port))) is not None
    wait_for(lambda: net.log_has(engine, "certificate is for CP002"), "the engine's warning")
    assert not net.log_has(engine, "serving charge point")  # nobody became its monitor

    # The monitor certified for CP001 gets the CP running and hands over the key.
    mine = net.ca.issue("CP001", net.pki, client=True, stem="monitor-CP001")
    net.start_monitor("CP001", f"tls://{host}:{port}?ca={ca}&cert={mine.cert}&key={mine.key}")
    net.wait_state("CP001", "ACTIVATED")
    wait_for(lambda: net.log_has(engine, "record key"), "the engine to receive the record key")
    assert engine.alive()


async def _plain_hello(host: str, port: int) -> BaseException | None:
    try:
        link = await asyncio.wait_for(
            open_link(f"tcp://{host}:{port}", hello=Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=1000)), 10
        )
    except (EvprotoError, OSError, asyncio.TimeoutError) as exc:
        return exc
    await link.close()
    return None
