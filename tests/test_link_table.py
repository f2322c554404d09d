"""Walk every (state, input) pair of the link's transition table on a real LinkConnection."""

from __future__ import annotations

import itertools

import pytest

from evproto import (
    Accept,
    CpState,
    CpStatus,
    DownReason,
    Hello,
    LinkConnection,
    LinkDown,
    LocalProtocolError,
    ReasonCode,
    Reject,
    Role,
    Side,
    encode_body,
    encode_frame,
)
from evproto import link as link_module
from evproto.link_table import ACTIONS, TABLE, LinkAction, LinkInput, LinkState, Transition

ENQ, ACK, NACK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
HELLO = Hello(role=Role.MONITOR, node_id="CP1", keepalive_ms=1000)


def frame(msg: object, seq: int, **kw: int) -> bytes:
    return encode_frame(encode_body(msg, seq=seq, **kw))  # type: ignore[arg-type]


def make(state: LinkState) -> LinkConnection:
    """A connection driven into ``state`` through its public API and real bytes."""
    t = 0.0
    if state in (LinkState.IDLE, LinkState.ENQ_SENT, LinkState.HELLO_SENT, LinkState.CLOSED):
        c = LinkConnection(Side.CLIENT, hello=HELLO)
        if state is not LinkState.IDLE:
            c.start(t)
        if state is LinkState.HELLO_SENT:
            c.receive_data(ACK, t)
        if state is LinkState.CLOSED:
            c.close(t)
    elif state is LinkState.OPEN:
        c = LinkConnection(Side.CLIENT, hello=HELLO)
        c.start(t)
        c.receive_data(ACK, t)
        c.receive_data(ACK + frame(Accept(node_id="central", keepalive_ms=1000), seq=1), t)
    else:
        c = LinkConnection(Side.SERVER, node_id="central")
        c.start(t)
        if state in (LinkState.AWAIT_HELLO, LinkState.HELLO_RECEIVED):
            c.receive_data(ENQ, t)
        if state is LinkState.HELLO_RECEIVED:
            c.receive_data(frame(HELLO, seq=1), t)
    assert c.state is state
    c.data_to_send()
    c.events()
    return c


def apply(c: LinkConnection, inp: LinkInput, now: float) -> None:
    """Deliver ``inp`` the way it happens for real (bytes, calls); timers go straight to the table."""
    fresh = 40
    if inp is LinkInput.CALL_START:
        c.start(now)
    elif inp is LinkInput.CALL_ACCEPT:
        c.accept(now)
    elif inp is LinkInput.CALL_REJECT:
        c.reject(now, ReasonCode.BUSY, "full")
    elif inp is LinkInput.CALL_SEND:
        c.send(CpStatus(state=CpState.ACTIVATED), now)
    elif inp is LinkInput.CALL_CLOSE:
        c.close(now)
    elif inp is LinkInput.RX_ENQ:
        c.receive_data(ENQ, now)
    elif inp is LinkInput.RX_ACK:
        c.receive_data(ACK, now)
    elif inp is LinkInput.RX_NACK:
        c.receive_data(NACK, now)
    elif inp is LinkInput.RX_EOT:
        c.receive_data(EOT, now)
    elif inp is LinkInput.RX_HELLO:
        c.receive_data(frame(HELLO, seq=fresh), now)
    elif inp is LinkInput.RX_ACCEPT:
        c.receive_data(frame(Accept(node_id="x"), seq=fresh), now)
    elif inp is LinkInput.RX_REJECT:
        c.receive_data(frame(Reject(code=ReasonCode.UNKNOWN_ID), seq=fresh), now)
    elif inp is LinkInput.RX_DATA:
        c.receive_data(frame(CpStatus(state=CpState.SUPPLYING), seq=fresh), now)
    elif inp is LinkInput.RX_DUPLICATE:
        if c._last_rx_seq is None:
            # No frame received yet, so no real byte sequence is a duplicate here:
            # check the table entry itself through the dispatcher.
            c._handle(inp, now)
        else:
            c.receive_data(frame(CpStatus(state=CpState.SUPPLYING), seq=c._last_rx_seq), now)
    elif inp is LinkInput.RX_UNKNOWN:
        c.receive_data(encode_frame(bytes([0x7E, 0, 0, fresh, 0, 0]) + b"newer"), now)
    elif inp is LinkInput.RX_BAD:
        bad = bytearray(frame(CpStatus(state=CpState.SUPPLYING), seq=fresh))
        bad[-1] ^= 0xFF
        c.receive_data(bytes(bad), now)
    elif inp is LinkInput.RX_EOF:
        c.receive_data(b"", now)
    else:  # timers: fire exactly this one
        c._handle(inp, now)


# What each action must visibly do: (bytes the connection writes, LinkDown reason or None).
def _check(action: str, before: LinkState, c: LinkConnection, out: bytes, events: list[object]) -> None:
    downs = [e for e in events if isinstance(e, LinkDown)]
    reasons = {
        "close_local": DownReason.CLOSED,
        "close_quiet": DownReason.CLOSED,
        "peer_closed": DownReason.PEER_CLOSED,
        "connection_lost": DownReason.CONNECTION_LOST,
        "peer_reset": DownReason.PEER_RESET,
        "handshake_timeout": DownReason.HANDSHAKE_TIMEOUT,
        "peer_silent": DownReason.PEER_SILENT,
        "rejected": DownReason.REJECTED,
        "do_reject": DownReason.REJECTED,
    }
    if action in reasons:
        assert [d.reason for d in downs] == [reasons[action]]
        assert c.state is LinkState.CLOSED
    else:
        assert not downs, downs
    if action == "nack":
        assert out.endswith(NACK)
    elif action in ("answer_enq", "reack"):
        assert out == ACK
    elif action == "close_local":
        assert out == EOT
    elif action == "do_reject":
        assert out.startswith(b"\x02") and out.endswith(EOT)
    elif action == "start_client":
        assert out == ENQ
    elif action == "enq_acked":
        assert out.startswith(b"\x02") and out[3] == 0x01  # the Hello frame
    elif action in ("hello_received", "accepted", "rejected", "deliver"):
        assert out.startswith(ACK)
    elif action == "unknown":
        assert out.startswith(ACK) and c.stats.unknown_types == 1
        assert any(type(e).__name__ == "UnknownMessageReceived" for e in events)
    elif action in (
        "ignore",
        "local_error",
        "close_quiet",
        "peer_closed",
        "connection_lost",
        "peer_reset",
        "handshake_timeout",
        "peer_silent",
        "start_server",
    ):
        assert out == b""


PAIRS = list(itertools.product(LinkState, LinkInput))


def test_table_is_complete_and_names_real_actions() -> None:
    assert set(TABLE) == set(PAIRS)
    for tr in TABLE.values():
        assert tr.action in ACTIONS
        assert hasattr(LinkConnection, "_a_" + tr.action), tr.action


def test_every_action_is_used_documented_and_resolved_to_its_own_method() -> None:
    assert {tr.action for tr in TABLE.values()} == set(LinkAction) == set(ACTIONS)
    resolved = link_module._ACTIONS
    assert set(resolved) == set(LinkAction)
    for action, method in resolved.items():
        assert method is getattr(LinkConnection, "_a_" + action.value), action
    # Every action method is one the table uses: none is left over.
    methods = {name for name in vars(LinkConnection) if name.startswith("_a_")}
    assert methods == {"_a_" + action.value for action in LinkAction}
    for pair, tr in TABLE.items():
        assert link_module._DISPATCH[pair] == (resolved[tr.action], tr.next)


def test_the_import_check_refuses_an_action_without_its_method_or_a_method_without_its_action(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    link_module._check_actions()
    with monkeypatch.context() as m:
        m.delitem(link_module._ACTIONS, LinkAction.REACK)
        with pytest.raises(RuntimeError, match="without a method \\['reack'\\].*no action names \\['_a_reack'\\]"):
            link_module._check_actions()
    with monkeypatch.context() as m:
        m.setitem(link_module._ACTIONS, LinkAction.REACK, LinkConnection._a_nack)
        with pytest.raises(RuntimeError, match="another action's method \\['reack'\\]"):
            link_module._check_actions()


@pytest.mark.parametrize("state,inp", PAIRS, ids=[f"{s.name}-{i.name}" for s, i in PAIRS])
def test_every_pair(state: LinkState, inp: LinkInput) -> None:
    c = make(state)
    expected: Transition = TABLE[(state, inp)]
    if expected.action == "local_error":
        with pytest.raises(LocalProtocolError):
            apply(c, inp, 0.1)
        assert c.state is state
        return
    apply(c, inp, 0.1)
    assert c.state is (expected.next or state)
    _check(expected.action, state, c, c.data_to_send(), c.events())
