"""evproto.aio over TLS on 127.0.0.1: ``tls://`` next to ``tcp://`` and ``serial://``.

Certificates come from the network's own CA (daemons/pki.py) made in a temp dir, and
from a second, foreign CA playing the attacker's. Every refusal is a TransportError
that names the reason; nothing here waits on a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat

import pytest

from evproto import HealthCheck, Hello, LinkDownError, Role, TransportError, aio
from evproto.daemons.pki import CertificateAuthority
from evproto.endpoint import parse_endpoint

GUARD = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.ensure(root / "ca")
    foreign = CertificateAuthority.ensure(root / "foreign", name="someone else's CA")
    return {
        "ca": ca,
        "server": ca.issue("central", root / "certs", hosts=("127.0.0.1", "localhost")),
        "wrong_name": ca.issue("elsewhere", root / "certs", hosts=("central.example",)),
        "client": ca.issue("CP001", root / "certs", client=True),
        "foreign_server": foreign.issue("central", root / "foreign-certs", hosts=("127.0.0.1",)),
        "foreign_client": foreign.issue("CP001", root / "foreign-certs", client=True),
    }


def _listen(server_cert, *, client_ca=None) -> str:
    url = f"tls://127.0.0.1:0?cert={server_cert.cert}&key={server_cert.key}"
    return url + (f"&ca={client_ca}" if client_ca else "")


async def _echo_server(url: str, seen: list):
    async def handler(link: aio.Link) -> None:
        seen.append((link.peer_id, link.peer_common_name))
        with contextlib.suppress(Exception):
            async for _ in link.messages:
                pass

    return await aio.serve(url, handler, node_id="central")


def test_tls_addresses_parse_and_print_without_their_files() -> None:
    ep = parse_endpoint("tls://central.example:7443?ca=/etc/ev/ca.pem&server_name=central")
    assert (ep.scheme, ep.host, ep.port) == ("tls", "central.example", 7443)
    assert ep.options == {"ca": "/etc/ev/ca.pem", "server_name": "central"}
    assert ep.address == "tls://central.example:7443"
    for bad, why in [
        ("tls://h:1?color=red", "unknown TLS option"),
        ("tls://h:1?cert=/a", "go together"),
        ("tls://h:1?ca=", "empty"),
        ("tcp://h:1?ca=/x", "take no options"),
    ]:
        with pytest.raises(TransportError, match=why):
            parse_endpoint(bad)


async def test_a_link_over_tls_checks_the_server_against_the_network_ca(pki) -> None:
    seen: list = []
    server = await _echo_server(_listen(pki["server"]), seen)
    try:
        assert server.url.startswith("tls://127.0.0.1:")
        url = f"tls://127.0.0.1:{server.port}?ca={pki['ca'].cert_path}"
        async with aio.connect(url, hello=Hello(role=Role.MONITOR, node_id="CP001")) as link:
            await asyncio.wait_for(link.send(HealthCheck()), GUARD)
            assert link.peer_id == "central" and link.peer_certificate is not None
        assert seen == [("CP001", None)]  # no client certificate was asked for
    finally:
        await server.close()


@pytest.mark.parametrize(
    "case, why",
    [
        ("foreign_server", "certificate not trusted: unable to get local issuer"),  # not signed by the network's CA
        ("wrong_name", "certificate not trusted: .*mismatch"),  # signed, but for another host
    ],
)
async def test_a_server_the_client_cannot_trust_is_refused_before_any_frame(pki, case, why) -> None:
    seen: list = []
    server = await _echo_server(_listen(pki[case]), seen)
    try:
        url = f"tls://127.0.0.1:{server.port}?ca={pki['ca'].cert_path}"
        with pytest.raises(TransportError, match=why):
            await asyncio.wait_for(aio.open_link(url, hello=Hello(role=Role.MONITOR, node_id="CP001")), GUARD)
        assert seen == []
    finally:
        await server.close()


async def test_a_plaintext_client_gets_nothing_from_a_tls_server(pki) -> None:
    seen: list = []
    server = await _echo_server(_listen(pki["server"]), seen)
    try:
        with pytest.raises(LinkDownError):
            await asyncio.wait_for(
                aio.open_link(f"tcp://127.0.0.1:{server.port}", hello=Hello(role=Role.MONITOR, node_id="CP001")), GUARD
            )
        assert seen == []
    finally:
        await server.close()


async def test_mutual_tls_names_the_client_and_refuses_one_without_a_certificate_from_the_ca(pki) -> None:
    seen: list = []
    server = await _echo_server(_listen(pki["server"], client_ca=pki["ca"].cert_path), seen)
    try:
        base = f"tls://127.0.0.1:{server.port}?ca={pki['ca'].cert_path}"
        good = pki["client"]
        async with aio.connect(
            f"{base}&cert={good.cert}&key={good.key}", hello=Hello(role=Role.MONITOR, node_id="CP001")
        ) as link:
            await asyncio.wait_for(link.send(HealthCheck()), GUARD)
        assert seen == [("CP001", "CP001")]
        bad = pki["foreign_client"]
        for url in (base, f"{base}&cert={bad.cert}&key={bad.key}"):
            with pytest.raises((TransportError, LinkDownError)):  # TLS 1.3: the server refuses after the client's side
                link = await asyncio.wait_for(
                    aio.open_link(url, hello=Hello(role=Role.MONITOR, node_id="CP001")), GUARD
                )
                await asyncio.wait_for(link.send(HealthCheck()), GUARD)
        assert seen == [("CP001", "CP001")]
    finally:
        await server.close()


async def test_missing_files_and_a_server_without_a_certificate_are_clear_errors(pki, tmp_path) -> None:
    with pytest.raises(TransportError, match="needs its certificate"):
        await aio.serve("tls://127.0.0.1:0", lambda link: asyncio.sleep(0), node_id="x")
    with pytest.raises(TransportError, match="CA file not found"):
        await aio.open_link(
            f"tls://127.0.0.1:1?ca={tmp_path / 'nope.pem'}", hello=Hello(role=Role.MONITOR, node_id="a")
        )
    with pytest.raises(TransportError, match="not found"):
        await aio.serve(
            f"tls://127.0.0.1:0?cert={tmp_path / 'a.pem'}&key={tmp_path / 'a.key'}",
            lambda link: asyncio.sleep(0),
            node_id="x",
        )


def test_private_keys_are_written_for_their_owner_only(pki) -> None:
    for path in (pki["ca"].key_path, pki["server"].key, pki["client"].key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
