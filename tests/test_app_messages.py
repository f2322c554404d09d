"""Application messages: a third party registers its own types in 0x80-0xef (or sends
Opaque bytes) and they travel like the catalogue's, over a real link on 127.0.0.1."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

import evproto
from evproto import (
    Hello,
    Message,
    MessageReceived,
    Opaque,
    RequestReceived,
    Role,
    decode_body,
    encode_body,
    register_message,
    wire,
)
from evproto.aio import open_link, serve


class Tier(enum.IntEnum):
    BASE = 1
    PEAK = 2


@register_message(0x90)
@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff(Message):
    cp_id: str = wire.text()
    price_eur_kwh: float = wire.f64()
    tier: Tier = wire.enum8(Tier, Tier.BASE)
    valid_s: int = wire.u32(3600)
    cap_kw: float | None = wire.opt_f32()


@register_message(0x91)
@dataclass(frozen=True, slots=True, kw_only=True)
class TariffQuery(Message):
    cp_id: str = wire.text()


def test_an_application_message_encodes_to_its_documented_bytes() -> None:
    body = encode_body(Tariff(cp_id="CP1", price_eur_kwh=0.5, tier=Tier.PEAK, valid_s=60), seq=5)
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"`{body.hex(' ')}`" in docs  # the vector of docs/protocol.md, "Application messages"
    assert body.hex(" ") == ("90 00 00 05 00 00 03 43 50 31 3f e0 00 00 00 00 00 00 02 00 00 00 3c 7f c0 00 00")
    assert decode_body(body).message == Tariff(cp_id="CP1", price_eur_kwh=0.5, tier=Tier.PEAK, valid_s=60)
    assert evproto.is_known_type(0x90) and Tariff.TYPE == 0x90


@given(
    cp_id=st.text(max_size=60),
    price=st.floats(allow_nan=False),
    valid_s=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=2000),
    channel=st.integers(0, 0xFFFF),
)
@settings(max_examples=examples(200))
def test_application_and_opaque_messages_round_trip(
    cp_id: str, price: float, valid_s: int, payload: bytes, channel: int
) -> None:
    for msg in (Tariff(cp_id=cp_id, price_eur_kwh=price, valid_s=valid_s), Opaque(channel=channel, payload=payload)):
        assert decode_body(encode_body(msg, seq=9)).message == msg


async def test_application_messages_travel_over_a_real_link_both_ways() -> None:
    async def handler(link) -> None:
        async for event in link.messages:
            if isinstance(event, RequestReceived) and isinstance(event.message, TariffQuery):
                await link.respond(event, Tariff(cp_id=event.message.cp_id, price_eur_kwh=0.42))
            elif isinstance(event, MessageReceived) and isinstance(event.message, Opaque):
                await link.send(Opaque(channel=event.message.channel + 1, payload=event.message.payload[::-1]))

    async with await serve("tcp://127.0.0.1:0", handler, node_id="srv") as server:
        link = await asyncio.wait_for(
            open_link(f"tcp://127.0.0.1:{server.port}", hello=Hello(role=Role.TOOL, node_id="app")), 10
        )
        answer = await asyncio.wait_for(link.request(TariffQuery(cp_id="CP7"), timeout_s=5), 10)
        assert answer == Tariff(cp_id="CP7", price_eur_kwh=0.42)
        await link.send(Opaque(channel=7, payload=b"abc"))
        event = await asyncio.wait_for(link.messages.__anext__(), 10)
        assert isinstance(event, MessageReceived) and event.message == Opaque(channel=8, payload=b"cba")
        assert link.is_open
        await link.close()


@pytest.mark.parametrize("msg_type", [0x7F, 0x01, 0xF0, 0xFF, 0x100, -1, True, "0x80"])
def test_types_outside_the_application_range_are_refused(msg_type: object) -> None:
    with pytest.raises(ValueError, match="0x80..0xef"):
        register_message(msg_type)  # type: ignore[arg-type]


def test_a_type_taken_by_another_class_is_refused() -> None:
    with pytest.raises(ValueError, match="already Tariff"):

        @register_message(0x90)
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Other(Message):
            x: int = wire.u8()

    # The same class again is harmless (a module imported twice).
    assert register_message(0x90)(Tariff) is Tariff


def test_classes_that_cannot_be_messages_are_refused_with_the_reason() -> None:
    class NotADataclass(Message):
        pass

    @dataclass(kw_only=True)
    class Mutable(Message):
        x: int = wire.u8()

    @dataclass(frozen=True, slots=True, kw_only=True)
    class PlainField(Message):
        x: int = 0

    @dataclass(frozen=True, slots=True, kw_only=True)
    class NotAMessage:
        x: int = wire.u8()

    for cls, reason in (
        (NotADataclass, "dataclass subclass"),
        (Mutable, "frozen=True, slots=True"),
        (PlainField, "evproto.wire field"),
        (NotAMessage, "dataclass subclass"),
    ):
        with pytest.raises(TypeError, match=reason):
            register_message(0xA0)(cls)  # type: ignore[type-var]
    assert not evproto.is_known_type(0xA0)


def test_an_unregistered_message_class_says_how_to_register_it() -> None:
    from evproto import MessageEncodeError

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Unregistered(Message):
        x: int = wire.u8()

    with pytest.raises(MessageEncodeError, match="register_message"):
        encode_body(Unregistered(x=1))
