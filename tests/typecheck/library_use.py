"""A third party's program against the public API, checked by `mypy --strict` in `make test`
(make typecheck). It must type-check as written: keyword arguments of messages, event
types narrowed by isinstance, error attributes with their real types. It also runs:
tests/test_typecheck.py executes main() against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import evproto
from evproto import (
    Backoff,
    CpState,
    CpStatus,
    DecoderEvent,
    DownReason,
    Endpoint,
    FrameDecoder,
    FrameReceived,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkConfig,
    LinkDownError,
    LinkRejectedError,
    MessageReceived,
    ReasonCode,
    RequestReceived,
    Role,
    UnknownMessageReceived,
    decode_body,
    encode_body,
    encode_frame,
    parse_endpoint,
)
from evproto.aio import Link, open_link, serve


def frames_of(data: bytes) -> list[bytes]:
    events: list[DecoderEvent] = FrameDecoder().feed(data)
    return [ev.body for ev in events if isinstance(ev, FrameReceived)]


def round_trip() -> CpState:
    hello = Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=1000)
    body = encode_body(hello, seq=1)
    assert decode_body(frames_of(encode_frame(body))[0]).message == hello
    status = CpStatus(state=CpState.SUPPLYING, session_id=7)
    return status.state


async def serve_and_ask() -> tuple[HealthState, int]:
    async def handler(link: Link) -> None:
        async for event in link.messages:
            if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
                await link.respond(event, HealthStatus(state=HealthState.OK))
            elif isinstance(event, UnknownMessageReceived):
                print(f"type 0x{event.msg_type:02x} from a newer peer")

    endpoint: Endpoint = parse_endpoint("tcp://127.0.0.1:0")
    async with await serve(endpoint, handler, node_id="srv") as server:
        link = await open_link(
            f"tcp://127.0.0.1:{server.port}",
            config=LinkConfig(max_incoming=64),
            hello=Hello(role=Role.MONITOR, node_id="CP001"),
        )
        try:
            answer = await link.request(HealthCheck(), timeout_s=5.0)
            assert isinstance(answer, HealthStatus)
            return answer.state, server.port
        finally:
            await link.close()


async def refused(port: int) -> ReasonCode | None:
    try:
        await open_link(f"tcp://127.0.0.1:{port}", hello=Hello(role=Role.MONITOR, node_id="x"))
    except LinkRejectedError as exc:
        return exc.code
    except LinkDownError as exc:
        reason: DownReason = exc.reason
        return None if reason.clean else None
    return None


def next_delay() -> float:
    return Backoff(initial_s=0.5, max_s=10.0).next_delay()


def main() -> tuple[CpState, HealthState, float, str]:
    state, _port = asyncio.run(serve_and_ask())
    assert reading_round_trip().energy_wh == 12.5
    return round_trip(), state, next_delay(), evproto.__version__


async def _messages(link: Link) -> list[CpStatus]:
    out: list[CpStatus] = []
    async for event in link.messages:
        if isinstance(event, MessageReceived) and isinstance(event.message, CpStatus):
            out.append(event.message)
    return out


if __name__ == "__main__":
    print(main())


# -- an application message of its own ----------------------------------------------------

from dataclasses import dataclass  # noqa: E402


@evproto.register_message(0xEE)
@dataclass(frozen=True, slots=True, kw_only=True)
class Reading(evproto.Message):
    meter: str = evproto.wire.text()
    energy_wh: float = evproto.wire.f64()
    note: float | None = evproto.wire.opt_f32()


def reading_round_trip() -> Reading:
    message = decode_body(encode_body(Reading(meter="m1", energy_wh=12.5), seq=3)).message
    assert isinstance(message, Reading)
    opaque = evproto.Opaque(channel=1, payload=b"raw")
    assert decode_body(encode_body(opaque)).message == opaque
    return message
