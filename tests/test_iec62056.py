"""IEC 62056-21 mode C readout codec (``evproto.hw.iec62056``): golden bytes, recorded
exchanges, the incremental readers under every chunking, data parsing and unit conversion.

The recorded exchanges are module-level constants so docs can show the very same bytes.
Every incremental test feeds its input whole, byte by byte and in random splits, and requires
the same outcome from all three.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from evproto import lrc
from evproto.errors import EvprotoError, LocalProtocolError
from evproto.hw import iec62056
from evproto.hw.base import MeterProtocolError, MeterReading
from evproto.hw.iec62056 import (
    BAUD_CHARS,
    DataBlock,
    DataBlockDecoder,
    DataValue,
    Identification,
    IdentificationReader,
    ack_option,
    bcc,
    canonical_address,
    parse_data,
    parse_data_line,
    parse_identification,
    reading_from_data,
    readout_bytes,
    select_baud_char,
    sign_on,
)
from evproto.messages import MeterStatus

# -- recorded exchanges ----------------------------------------------------------------------------

#: An ISKRA MT174 (three-phase, 9600 baud, 20 ms reaction) read through an optical head, in the
#: order the bytes cross the line. The meter writes full OBIS addresses (``1-0:1.8.0*255``) and its
#: date as ``0YYMMDD``. The clock says 2024-03-15 14:25:03; 1.8.0 = 1.8.1 + 1.8.2.
MT174_EXCHANGE: tuple[tuple[str, bytes], ...] = (
    ("client", b"/?!\r\n"),
    ("meter", b"/ISk5MT174-0001\r\n"),
    ("client", b"\x06050\r\n"),
    (
        "meter",
        (
            b"\x02"
            b"0-0:C.1.0*255(62807889)\r\n"
            b"0-0:0.0.0*255(12345678)\r\n"
            b"1-0:0.9.1*255(142503)\r\n"
            b"1-0:0.9.2*255(0240315)\r\n"
            b"0-0:F.F.0*255(0000000)\r\n"
            b"1-0:1.8.0*255(0012345.678*kWh)\r\n"
            b"1-0:1.8.1*255(0008123.456*kWh)\r\n"
            b"1-0:1.8.2*255(0004222.222*kWh)\r\n"
            b"1-0:2.8.0*255(0000000.000*kWh)\r\n"
            b"1-0:1.7.0*255(7.412*kW)\r\n"
            b"1-0:32.7.0*255(231.4*V)\r\n"
            b"1-0:52.7.0*255(232.0*V)\r\n"
            b"1-0:72.7.0*255(230.9*V)\r\n"
            b"1-0:31.7.0*255(10.72*A)\r\n"
            b"1-0:51.7.0*255(10.68*A)\r\n"
            b"1-0:71.7.0*255(10.75*A)\r\n"
            b"!\r\n"
            b"\x03q"
        ),
    ),
)
MT174_READING = MeterReading(
    energy_wh=12_345_678.0,
    power_w=7412.0,
    timestamp_ms=int(datetime(2024, 3, 15, 14, 25, 3, tzinfo=timezone.utc).timestamp()) * 1000,
    voltage_v=231.4,
    current_a=10.72,
    status=MeterStatus.NONE,
    meter_clock=True,
)

#: A Landis+Gyr ZMD (9600 baud, HDLC-capable: ``\2``), after a real readout, in the short
#: address style, with billing-period history (``*19``) after each current register, a signed
#: sum power 16.7.0, a maximum demand with its time, and 32.7.0 reused further down for a sag
#: counter.
ZMD_EXCHANGE: tuple[tuple[str, bytes], ...] = (
    ("client", b"/?!\r\n"),
    ("meter", b"/LGZ5\\2ZMD3104407.B24\r\n"),
    ("client", b"\x06050\r\n"),
    (
        "meter",
        (
            b"\x02"
            b"F.F(00000000)\r\n"
            b"0.0.0(95316176)\r\n"
            b"0.9.1(16:40:56)\r\n"
            b"0.9.2(17-11-06)\r\n"
            b"0.1.0(19)\r\n"
            b"1.8.0(000102.28*kWh)\r\n"
            b"1.8.0*19(000101.71*kWh)\r\n"
            b"1.8.1(0000.125*kWh)\r\n"
            b"1.8.1*19(0000.997*kWh)\r\n"
            b"2.8.0(000008.09*kWh)\r\n"
            b"2.8.0*19(000008.09*kWh)\r\n"
            b"1.6.1(000.01*kW)(17-11-02 08:30)\r\n"
            b"1.6.1*19(000.01*kW)(17-10-02 08:45)\r\n"
            b"16.7.0(-0.35*kW)\r\n"
            b"32.7.0(231.2*V)\r\n"
            b"52.7.0(000.7*V)\r\n"
            b"72.7.0(239.5*V)\r\n"
            b"31.7.0(0.00*A)\r\n"
            b"32.7.0(0002)(00-01-01 00:00)\r\n"
            b"72.7.0(0000)(00-00-00 00:00)\r\n"
            b"!\r\n"
            b"\x03\x0f"
        ),
    ),
)
ZMD_READING = MeterReading(
    energy_wh=102_280.0,
    power_w=-350.0,
    timestamp_ms=int(datetime(2017, 11, 6, 16, 40, 56, tzinfo=timezone.utc).timestamp()) * 1000,
    voltage_v=231.2,
    current_a=0.0,
    status=MeterStatus.NONE,
    meter_clock=True,
)

EXCHANGES = {"mt174": (MT174_EXCHANGE, MT174_READING), "zmd": (ZMD_EXCHANGE, ZMD_READING)}
MT174_BLOCK = MT174_EXCHANGE[3][1]

# -- helpers -----------------------------------------------------------------------------------

MODES = ("whole", "bytewise", "random")


def _chunks(data: bytes, mode: str, seed: int = 0) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def _feed(make: Callable[[], object], data: bytes, mode: str, seed: int = 0) -> tuple[object, object, bytes]:
    """Feed ``data`` in chunks until a result; return (reader, result, bytes after the result)."""
    reader = make()
    chunks = _chunks(data, mode, seed)
    for i, chunk in enumerate(chunks):
        result = reader.feed(chunk)  # type: ignore[attr-defined]
        if result is not None:
            rest = reader.remainder + b"".join(chunks[i + 1 :])  # type: ignore[attr-defined]
            return reader, result, rest
    return reader, None, b""


def _all_modes(make: Callable[[], object], data: bytes) -> list[tuple[object, object, bytes]]:
    out = [_feed(make, data, mode, seed) for mode in MODES for seed in range(3 if mode == "random" else 1)]
    for reader, result, rest in out[1:]:
        assert result == out[0][1]
        assert rest == out[0][2]
        assert reader.skipped == out[0][0].skipped  # type: ignore[attr-defined]
    return out


def _raises_in_all_modes(make: Callable[[], object], data: bytes, match: str) -> None:
    for mode in MODES:
        for seed in range(3 if mode == "random" else 1):
            reader = make()
            with pytest.raises(MeterProtocolError, match=match):
                for chunk in _chunks(data, mode, seed):
                    reader.feed(chunk)  # type: ignore[attr-defined]
            assert reader.finished  # type: ignore[attr-defined]
            with pytest.raises(LocalProtocolError):
                reader.feed(b"x")  # type: ignore[attr-defined]


def _values(*lines: str) -> dict[str, DataValue]:
    return parse_data(list(lines))


# -- module shape --------------------------------------------------------------------------------


def test_module_does_no_io_and_declares_its_api() -> None:
    tree = ast.parse(Path(iec62056.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "serial", "time", "threading", "logging", "os"}
    for name in iec62056.__all__:
        assert hasattr(iec62056, name), name
    assert issubclass(MeterProtocolError, EvprotoError)


# -- golden vectors ------------------------------------------------------------------------------


def test_bcc_example_from_the_standard() -> None:
    message = b"\x01P0\x02(1234567)\x03"
    assert bcc(message) == 0x50 == ord("P")
    assert lrc(message[1:]) == 0x50  # computed over the bytes after SOH
    assert bcc(MT174_BLOCK[:-1]) == MT174_BLOCK[-1]


@pytest.mark.parametrize("message", [b"", b"\x01", b"P0\x02(1)\x03", b"\x01P0\x02(1)"])
def test_bcc_rejects_what_is_not_a_message(message: bytes) -> None:
    with pytest.raises(ValueError):
        bcc(message)


def test_constants() -> None:
    assert (iec62056.SOH, iec62056.STX, iec62056.ETX, iec62056.ACK, iec62056.NAK) == (
        1,
        2,
        3,
        6,
        0x15,
    )
    assert iec62056.CRLF == b"\r\n"
    assert BAUD_CHARS == {
        "0": 300,
        "1": 600,
        "2": 1200,
        "3": 2400,
        "4": 4800,
        "5": 9600,
        "6": 19200,
    }
    assert iec62056.REACTION_TIME_MIN_FAST_S == 0.02 and iec62056.REACTION_TIME_MIN_S == 0.2
    assert iec62056.REACTION_TIME_MAX_S == 1.5 <= iec62056.ANSWER_WAIT_S


@pytest.mark.parametrize(
    "address,wire",
    [
        ("", b"/?!\r\n"),
        ("12345678", b"/?12345678!\r\n"),
        ("00042", b"/?00042!\r\n"),
        ("Meter 7", b"/?Meter 7!\r\n"),
        ("A" * 32, b"/?" + b"A" * 32 + b"!\r\n"),
    ],
)
def test_sign_on(address: str, wire: bytes) -> None:
    assert sign_on(address) == wire


@pytest.mark.parametrize("address", ["A" * 33, "12!", "1/2", "1?", "1.2", "\r", "é", "1-2"])
def test_sign_on_rejects_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        sign_on(address)


@pytest.mark.parametrize(
    "args,kwargs,wire",
    [
        (("5",), {}, b"\x06050\r\n"),
        (("0",), {}, b"\x06000\r\n"),
        (("6",), {}, b"\x06060\r\n"),
        (("4",), {"mode": "1"}, b"\x06041\r\n"),
        (("5",), {"mode": "2", "protocol": "2"}, b"\x06252\r\n"),
    ],
)
def test_ack_option(args: tuple[str, ...], kwargs: dict[str, str], wire: bytes) -> None:
    assert ack_option(*args, **kwargs) == wire


@pytest.mark.parametrize(
    "args,kwargs",
    [
        (("7",), {}),
        (("A",), {}),
        (("",), {}),
        (("55",), {}),
        (("5",), {"mode": "x"}),
        (("5",), {"mode": ""}),
        (("5",), {"protocol": "3"}),
        (("5",), {"protocol": "00"}),
    ],
)
def test_ack_option_rejects_bad_characters(args: tuple[str, ...], kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        ack_option(*args, **kwargs)


def _ident(
    maker: str,
    baud: tuple[str, int | None],
    ident: str,
    *,
    fast: bool = False,
    enhanced: tuple[str, ...] = (),
) -> Identification:
    return Identification(
        manufacturer=maker,
        baud_char=baud[0],
        baud=baud[1],
        identification=ident,
        fast_reaction=fast,
        enhanced=enhanced,
    )


IDENTIFICATIONS = [
    (b"/ISk5MT174-0001\r\n", _ident("ISK", ("5", 9600), "MT174-0001", fast=True)),
    (b"/ISk5MT174-0001", _ident("ISK", ("5", 9600), "MT174-0001", fast=True)),
    (b"/LGZ4ZMD3104100.B32\r\n", _ident("LGZ", ("4", 4800), "ZMD3104100.B32")),
    (b"/EMH5\\2eHZ1234567\r\n", _ident("EMH", ("5", 9600), "eHZ1234567", enhanced=("2",))),
    (b"/LGZ5\\2ZMD3104407.B24\r\n", _ident("LGZ", ("5", 9600), "ZMD3104407.B24", enhanced=("2",))),
    (b"/ABC6\\2\\9X 1\r\n", _ident("ABC", ("6", 19200), "X 1", enhanced=("2", "9"))),
    (b"/ELS0\r\n", _ident("ELS", ("0", 300), "")),
    (
        b"/KFMEGAS-1\r\n",
        _ident("KFM", ("E", None), "GAS-1"),
    ),  # mode B: 'E' is not a mode C character
]


@pytest.mark.parametrize("line,expected", IDENTIFICATIONS)
def test_parse_identification(line: bytes, expected: Identification) -> None:
    ident = parse_identification(line)
    assert ident == expected
    assert ident.mode_c == (expected.baud is not None)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"/",
        b"/IS",
        b"/ISk",
        b"ISk5MT174\r\n",
        b" /ISk5MT174\r\n",
        b"/isk5MT174\r\n",
        b"/1SK5MT174\r\n",
        b"/I-k5MT174\r\n",
        b"/ISk5MT!174\r\n",
        b"/ISk5MT/174\r\n",
        b"/ISk5MT174\r",
        b"/ISk5MT174\n",
        b"/ISk5MT174\r\n\r\n",
        b"/ISk5MT\x00174\r\n",
        b"/ISk5MT\xb1174\r\n",
        b"/ISk5\\\r\n",
        b"/ISk5MT\\2\r\n",
        b"/ISk MT174\r\n",
        b"/ISk!MT174",
        b"/?!\r\n",
    ],
)
def test_parse_identification_rejects(line: bytes) -> None:
    with pytest.raises(MeterProtocolError):
        parse_identification(line)


@pytest.mark.parametrize(
    "offered,max_baud,chosen",
    [
        ("5", None, "5"),
        ("5", 19200, "5"),
        ("6", 9600, "5"),
        ("5", 4000, "3"),
        ("0", 9600, "0"),
        ("6", 300, "0"),
        ("3", 2400, "3"),
    ],
)
def test_select_baud_char(offered: str, max_baud: int | None, chosen: str) -> None:
    assert select_baud_char(offered, max_baud) == chosen


@pytest.mark.parametrize("offered,max_baud", [("E", None), ("7", 9600), ("5", 299), ("", None)])
def test_select_baud_char_rejects(offered: str, max_baud: int | None) -> None:
    with pytest.raises(ValueError):
        select_baud_char(offered, max_baud)


# -- the recorded exchanges ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_recorded_exchange_parses_into_the_expected_reading(name: str) -> None:
    exchange, expected = EXCHANGES[name]
    (_, request), (_, ident_line), (_, ack), (_, block_bytes) = exchange
    assert request == sign_on()
    ident = IdentificationReader().feed(ident_line)
    assert ident is not None and ident.mode_c
    assert ack == ack_option(ident.baud_char)
    block = DataBlockDecoder().feed(block_bytes)
    assert block is not None
    assert readout_bytes(block.lines) == block_bytes  # the builder is the decoder's inverse
    assert block.bcc == block_bytes[-1]
    reading = reading_from_data(parse_data(block), received_ms=1)
    assert reading == expected


def test_recorded_mt174_values() -> None:
    values = parse_data(DataBlockDecoder().feed(MT174_BLOCK))  # type: ignore[arg-type]
    assert values["1.8.0"] == DataValue("0012345.678", "kWh", address="1.8.0", raw_address="1-0:1.8.0*255")
    assert values["1.8.1"].number() + values["1.8.2"].number() == pytest.approx(values["1.8.0"].number())
    assert values["C.1.0"].value == "62807889" and values["0.0.0"].value == "12345678"
    assert values["F.F.0"].value == "0000000"
    assert len(values) == 16


def test_recorded_zmd_keeps_history_apart_and_the_first_of_a_reused_address() -> None:
    values = parse_data(DataBlockDecoder().feed(ZMD_EXCHANGE[3][1]))  # type: ignore[arg-type]
    assert values["1.8.0"].value == "000102.28"
    assert values["1.8.0*19"].value == "000101.71"
    assert values["1.8.0*19"].raw_address == "1.8.0*19"
    assert values["32.7.0"] == DataValue("231.2", "V", address="32.7.0", raw_address="32.7.0")
    assert values["1.6.1"].extra == (DataValue("17-11-02 08:30"),)
    assert values["1.6.1*19"].extra == (DataValue("17-10-02 08:45"),)


def test_meter_clock_is_utc_and_falls_back_to_the_arrival_time() -> None:
    values = parse_data(DataBlockDecoder().feed(MT174_BLOCK))  # type: ignore[arg-type]
    assert reading_from_data(values, received_ms=99).timestamp_ms == 1_710_512_703_000
    values.pop("0.9.2")
    reading = reading_from_data(values, received_ms=99)
    assert reading.timestamp_ms == 99 and not reading.meter_clock


# -- IdentificationReader ----------------------------------------------------------------------

IDENT_LINE = b"/ISk5MT174-0001\r\n"
ISK = parse_identification(IDENT_LINE)


@pytest.mark.parametrize(
    "stream,skipped,rest",
    [
        (IDENT_LINE, 0, b""),
        (b"\x00\xff\x7f junk" + IDENT_LINE, 8, b""),
        (b"/?!\r\n" + IDENT_LINE, 5, b""),  # the optical head echoes our sign-on
        (b"/?12345678!\r\n" + IDENT_LINE, 13, b""),
        (b"\r\n\r\n" + IDENT_LINE, 4, b""),
        (b"x/y/" + IDENT_LINE, 4, b""),  # stray '/' before the real one
        (b"/?!" + IDENT_LINE, 3, b""),  # an echo cut short
        (b"/ISk5MT\x00" + IDENT_LINE, 8, b""),  # a line restarted by the meter
        (IDENT_LINE + b"\x02data", 0, b"\x02data"),
    ],
)
def test_identification_reader_any_chunking(stream: bytes, skipped: int, rest: bytes) -> None:
    for reader, result, after in _all_modes(IdentificationReader, stream):
        assert result == ISK
        assert after == rest
        assert reader.skipped == skipped  # type: ignore[attr-defined]
        assert reader.finished  # type: ignore[attr-defined]


def test_identification_reader_counts_echoes_and_waits_for_more() -> None:
    reader = IdentificationReader()
    assert reader.feed(b"/?!\r\n/ISk5MT") is None
    assert reader.echoes == 1 and not reader.finished
    assert reader.feed(b"174-0001\r") is None
    assert reader.feed(b"\n") == ISK
    with pytest.raises(LocalProtocolError):
        reader.feed(b"")


def test_identification_reader_keeps_no_noise() -> None:
    reader = IdentificationReader()
    for _ in range(100):
        assert reader.feed(b"\x00" * 1000) is None
    assert reader._buf == b"" and reader.skipped == 100_000


def test_identification_reader_bound() -> None:
    def line(n: int) -> bytes:  # a valid identification line of exactly n bytes
        return b"/ISk5" + b"A" * (n - 7) + b"\r\n"

    for mode in MODES:
        _, result, _ = _feed(lambda: IdentificationReader(max_line=32), line(32), mode, 1)
        assert result is not None and len(result.identification) == 25  # type: ignore[attr-defined]
    _raises_in_all_modes(lambda: IdentificationReader(max_line=32), line(33), "longer than 32")
    _raises_in_all_modes(IdentificationReader, b"/ISk5" + b"A" * 500, "longer than 128")
    # A '/' in noise starts a candidate line; one that outgrows the bound is an error even if a
    # good line follows (optical heads do not send 128 bytes of junk without CR LF).
    _raises_in_all_modes(IdentificationReader, b"/" + b"x" * 200 + IDENT_LINE, "longer than")
    with pytest.raises(ValueError):
        IdentificationReader(max_line=6)


@pytest.mark.parametrize("stream", [b"/ISk5MT!74\r\n", b"junk/\r\n", b"/ISK5\x00\r\n", b"/isk5MT174\r\n"])
def test_identification_reader_rejects_bad_lines(stream: bytes) -> None:
    _raises_in_all_modes(IdentificationReader, stream, "not an identification")


@settings(max_examples=examples(60), deadline=None)
@given(
    noise=st.binary(max_size=60).map(lambda b: b.replace(b"/", b"")),
    ident=st.sampled_from([line for line, _ in IDENTIFICATIONS if line.endswith(b"\r\n")]),
    tail=st.binary(max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_identification_reader_property(noise: bytes, ident: bytes, tail: bytes, cuts: list[int]) -> None:
    stream = noise + ident + tail
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    reader = IdentificationReader()
    for i, chunk in enumerate(chunks):
        result = reader.feed(chunk)
        if result is not None:
            assert result == parse_identification(ident)
            assert reader.remainder + b"".join(chunks[i + 1 :]) == tail
            assert reader.skipped == len(noise)
            return
    raise AssertionError("no identification")


# -- DataBlockDecoder --------------------------------------------------------------------------


def _block(*lines: str) -> bytes:
    return readout_bytes(list(lines))


SMALL = _block("1.8.0(1*kWh)")
SMALL_BLOCK = DataBlock(lines=("1.8.0(1*kWh)",), bcc=SMALL[-1])


@pytest.mark.parametrize(
    "stream,skipped,rest",
    [
        (MT174_BLOCK, 0, b""),
        (b"\x06050\r\n" + MT174_BLOCK, 6, b""),  # the optical head echoes our ACK
        (b"\x00\xff\x03junk\x03" + MT174_BLOCK, 8, b""),
        (b"\x02half a blo" + MT174_BLOCK, 11, b""),  # an abandoned start
        (b"\x02\x02" + MT174_BLOCK, 2, b""),
        (MT174_BLOCK + b"\x02trailing", 0, b"\x02trailing"),
    ],
)
def test_data_block_decoder_any_chunking(stream: bytes, skipped: int, rest: bytes) -> None:
    expected = DataBlockDecoder().feed(MT174_BLOCK)
    assert expected is not None and len(expected.lines) == 16
    for reader, result, after in _all_modes(DataBlockDecoder, stream):
        assert result == expected
        assert after == rest
        assert reader.skipped == skipped  # type: ignore[attr-defined]


def test_data_block_decoder_waits_for_the_bcc() -> None:
    dec = DataBlockDecoder()
    assert dec.feed(SMALL[:-1]) is None
    assert dec.buffered == len(SMALL) - 1 and not dec.finished
    assert dec.feed(SMALL[-1:]) == SMALL_BLOCK
    assert dec.finished and dec.buffered == 0
    with pytest.raises(LocalProtocolError):
        dec.feed(b"")


@pytest.mark.parametrize(
    "wire",
    [
        b"\x020.0.0( 1)\r\n!\r\n\x03\x02",  # BCC is STX
        b"\x020.0.0( 0)\r\n!\r\n\x03\x03",  # BCC is ETX
        b"\x020.0.0( 9)\r\n!\r\n\x03\n",  # BCC is LF
        b"\x020.0.0( >)\r\n!\r\n\x03\r",  # BCC is CR
    ],
)
def test_data_block_decoder_bcc_may_be_any_byte(wire: bytes) -> None:
    line = wire[1:10].decode()
    assert readout_bytes([line]) == wire
    for _, block, rest in _all_modes(DataBlockDecoder, b"\x03\x06" + wire + b"\x02x"):
        assert block == DataBlock(lines=(line,), bcc=wire[-1])
        assert rest == b"\x02x"


def test_data_block_decoder_bad_bcc() -> None:
    bad = MT174_BLOCK[:-1] + bytes([MT174_BLOCK[-1] ^ 0x01])
    _raises_in_all_modes(DataBlockDecoder, bad, r"BCC 0x70, expected 0x71")
    # One flipped data byte.
    i = MT174_BLOCK.index(b"12345.678")
    damaged = MT174_BLOCK[:i] + b"9" + MT174_BLOCK[i + 1 :]
    _raises_in_all_modes(DataBlockDecoder, damaged, r"BCC 0x71, expected 0x79")


def test_data_block_decoder_bound() -> None:
    size = len(SMALL)
    for mode in MODES:
        _, result, _ = _feed(lambda: DataBlockDecoder(max_block=size), SMALL, mode, 2)
        assert result == SMALL_BLOCK
    _raises_in_all_modes(lambda: DataBlockDecoder(max_block=size - 1), SMALL, f"longer than {size - 1}")
    _raises_in_all_modes(DataBlockDecoder, b"\x02" + b"1.8.0(1)\r\n" * 1000, "longer than 8192")
    # An abandoned start that had already outgrown the bound is an error too (same under any split).
    _raises_in_all_modes(lambda: DataBlockDecoder(max_block=64), b"\x02" + b"x" * 70 + SMALL, "longer than 64")
    with pytest.raises(ValueError):
        DataBlockDecoder(max_block=4)


def test_data_block_decoder_keeps_no_noise() -> None:
    dec = DataBlockDecoder()
    for _ in range(100):
        assert dec.feed(b"\x00\x03\x06" * 300) is None
    assert dec.buffered == 0 and dec.skipped == 90_000


def _raw_block(data: bytes) -> bytes:
    inner = data + b"\x03"
    return b"\x02" + inner + bytes([lrc(inner)])


@pytest.mark.parametrize(
    "data,match",
    [
        (b"1.8.0(1*kWh)\r\n", "end line"),
        (b"", "end line"),
        (b"1.8.0(1*kWh)\r\n!\r\n\r\n", "end line"),
        (b"!\r\n1.8.0(1*kWh)\r\n!\r\n", "after the end line"),
        (b"1.8.0(1*kWh)\n!\r\n", "CR or LF"),
        (b"1.8.0(1*kWh)\r!\r\n", "CR or LF"),
        (b"1.8.0(1\x00*kWh)\r\n!\r\n", "0x00 at offset 7"),
        (b"1.8.0(1\xb1*kWh)\r\n!\r\n", "0xb1"),
    ],
)
def test_data_block_decoder_rejects_bad_content(data: bytes, match: str) -> None:
    _raises_in_all_modes(DataBlockDecoder, _raw_block(data), match)


@pytest.mark.parametrize(
    "data,lines",
    [
        (b"!\r\n", ()),
        (b"!", ()),  # end line without its CR LF
        (b"1.8.0(1*kWh)\r\n!", ("1.8.0(1*kWh)",)),
        (b"\r\na(1)\r\n\r\n!\r\n", ("", "a(1)", "")),  # blank lines are kept; parse_data skips them
    ],
)
def test_data_block_lines(data: bytes, lines: tuple[str, ...]) -> None:
    block = DataBlockDecoder().feed(_raw_block(data))
    assert block is not None and block.lines == lines


_LINE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).filter(lambda s: s != "!")


@settings(max_examples=examples(150), deadline=None)
@given(
    lines=st.lists(_LINE, max_size=20),
    noise=st.binary(max_size=20).map(lambda b: b.replace(b"\x02", b"")),
    tail=st.binary(max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_readout_round_trip(lines: list[str], noise: bytes, tail: bytes, cuts: list[int]) -> None:
    wire = readout_bytes(lines)
    assert wire[0] == 0x02 and wire[-2] == 0x03 and bcc(wire[:-1]) == wire[-1]
    stream = noise + wire + tail
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    dec = DataBlockDecoder()
    for i, chunk in enumerate(chunks):
        block = dec.feed(chunk)
        if block is not None:
            assert block.lines == tuple(lines)
            assert dec.remainder + b"".join(chunks[i + 1 :]) == tail
            assert dec.skipped == len(noise)
            return
    raise AssertionError("no block")


@pytest.mark.parametrize("lines", [["!"], ["a\r\nb"], ["a\x03"], ["\x02"], ["é"], ["tab\there"]])
def test_readout_bytes_rejects_bad_lines(lines: list[str]) -> None:
    with pytest.raises(ValueError):
        readout_bytes(lines)


def test_readout_bytes_golden() -> None:
    assert readout_bytes([]) == b"\x02!\r\n\x03" + bytes([lrc(b"!\r\n\x03")])
    assert readout_bytes(["1.8.0(1*kWh)"]) == b"\x021.8.0(1*kWh)\r\n!\r\n\x03" + bytes(
        [lrc(b"1.8.0(1*kWh)\r\n!\r\n\x03")]
    )


# -- data lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,canonical",
    [
        ("1.8.0", "1.8.0"),
        ("1-0:1.8.0*255", "1.8.0"),
        ("1-0:1.8.0", "1.8.0"),
        ("1-1:1.8.0", "1.8.0"),
        ("1.8.0*255", "1.8.0"),
        ("1.8.0&255", "1.8.0"),
        ("1.8.0*01", "1.8.0*01"),  # billing period 1: history, not the current register
        ("1.8.0&01", "1.8.0&01"),
        ("1-0:1.8.0*19", "1.8.0*19"),
        ("0-0:F.F.0*255", "F.F.0"),
        ("F.F", "F.F"),
        ("0-0:C.51.2*01", "C.51.2*01"),
        ("P.01", "P.01"),
        (" 1.8.0 ", "1.8.0"),
        ("ID", "ID"),
        ("x:y", "x:y"),
        ("", ""),
    ],
)
def test_canonical_address(raw: str, canonical: str) -> None:
    assert canonical_address(raw) == canonical


@pytest.mark.parametrize(
    "line,expected",
    [
        (
            "1.8.0(0012345.67*kWh)",
            (DataValue("0012345.67", "kWh", address="1.8.0", raw_address="1.8.0"),),
        ),
        ("0.0.0(12345678)", (DataValue("12345678", address="0.0.0", raw_address="0.0.0"),)),
        ("0.2.1()", (DataValue("", address="0.2.1", raw_address="0.2.1"),)),
        ("1.8.0(5*)", (DataValue("5", None, address="1.8.0", raw_address="1.8.0"),)),
        ("1.8.0 ( 5 * kWh )", (DataValue("5", "kWh", address="1.8.0", raw_address="1.8.0"),)),
        (
            "1.6.1(07.20*kW)(24-03-15 12:30)",
            (
                DataValue(
                    "07.20",
                    "kW",
                    address="1.6.1",
                    raw_address="1.6.1",
                    extra=(DataValue("24-03-15 12:30"),),
                ),
            ),
        ),
        (
            "1.8.1(1*kWh)1.8.2(2*kWh)",
            (
                DataValue("1", "kWh", address="1.8.1", raw_address="1.8.1"),
                DataValue("2", "kWh", address="1.8.2", raw_address="1.8.2"),
            ),
        ),
        ("(9)(10)", (DataValue("9", extra=(DataValue("10"),)),)),
        ("", ()),
        ("   ", ()),
        ("!", ()),
    ],
)
def test_parse_data_line(line: str, expected: tuple[DataValue, ...]) -> None:
    assert parse_data_line(line) == expected


@pytest.mark.parametrize("line", ["1.8.0(12", "1.8.0 12", "1.8.0(1)x", "1.8.0(a(b))", "1.8.0)(1)", "!!"])
def test_parse_data_line_rejects(line: str) -> None:
    with pytest.raises(MeterProtocolError, match="not address"):
        parse_data_line(line)


def test_parse_data_first_occurrence_wins_and_continuations_attach() -> None:
    values = _values(
        "1-0:1.8.0*255(10*kWh)",
        "1.8.0(99*kWh)",  # same canonical address: ignored
        "(ignored too)",  # continues the ignored duplicate
        "1.6.1(1*kW)",
        "(24-03-15 12:30)(x)",
        "",
        "1.8.0*01(8*kWh)",
        "!",
        "2.8.0(never read)",
    )
    assert values["1.8.0"].value == "10" and values["1.8.0"].raw_address == "1-0:1.8.0*255"
    assert values["1.6.1"].extra == (DataValue("24-03-15 12:30"), DataValue("x"))
    assert values["1.8.0*01"].value == "8"
    assert "2.8.0" not in values
    assert parse_data(DataBlock(lines=("a(1)",), bcc=0)) == {"a": DataValue("1", address="a", raw_address="a")}


def test_parse_data_rejects_a_leading_value_without_address() -> None:
    with pytest.raises(MeterProtocolError, match="no address"):
        _values("(1)", "1.8.0(1*kWh)")


@pytest.mark.parametrize(
    "value,number",
    [
        ("0012345.678", 12345.678),
        ("-0.35", -0.35),
        ("+1", 1.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("0", 0.0),
    ],
)
def test_number(value: str, number: float) -> None:
    assert DataValue(value).number() == number


@pytest.mark.parametrize("value", ["", "1e3", "nan", "inf", "1,5", "12:30", "1_000", " 1", "0x10", "????", "--1"])
def test_number_rejects(value: str) -> None:
    with pytest.raises(MeterProtocolError, match="1.8.0.*not a number"):
        DataValue(value, raw_address="1.8.0").number()


# -- reading_from_data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "energy_line,energy_wh",
    [
        ("1.8.0(0012345.678*kWh)", 12_345_678.0),
        ("1.8.0(12345678*Wh)", 12_345_678.0),
        ("1.8.0(0.001*kWh)", 1.0),
        ("1.8.0(5*KWH)", 5000.0),
        ("1.8.0(5*wh)", 5.0),
        ("1-0:1.8.0*255(000000.000*kWh)", 0.0),
    ],
)
def test_energy_units(energy_line: str, energy_wh: float) -> None:
    assert reading_from_data(_values(energy_line), received_ms=0).energy_wh == energy_wh


@pytest.mark.parametrize(
    "power_lines,power_w",
    [
        ((), 0.0),  # a meter without power registers: documented as 0.0
        (("1.7.0(7.412*kW)",), 7412.0),
        (("1.7.0(7412*W)",), 7412.0),
        (("16.7.0(-0.35*kW)",), -350.0),
        (("16.7.0(+120*W)",), 120.0),
        (("16.7.0(-1*kW)", "1.7.0(0.000*kW)"), 0.0),  # 1.7.0 first
        (("1-0:16.7.0*255(2.5*kW)",), 2500.0),
    ],
)
def test_power_units(power_lines: tuple[str, ...], power_w: float) -> None:
    reading = reading_from_data(_values("1.8.0(1*kWh)", *power_lines), received_ms=0)
    assert reading.power_w == power_w


def test_voltage_and_current() -> None:
    def read(*lines: str) -> MeterReading:
        return reading_from_data(_values("1.8.0(1*kWh)", *lines), received_ms=0)

    assert (read().voltage_v, read().current_a) == (None, None)
    assert read("32.7.0(231.4*V)", "31.7.0(10.72*A)").voltage_v == 231.4
    assert read("32.7.0(231.4*V)", "31.7.0(10.72*A)").current_a == 10.72
    assert read("12.7.0(229*V)", "11.7.0(3*A)").voltage_v == 229.0
    assert read("12.7.0(229*V)", "11.7.0(3*A)").current_a == 3.0
    assert read("12.7.0(229*V)", "32.7.0(231*V)").voltage_v == 231.0  # 32.7.0 first
    assert read("32.7.0(231)", "31.7.0(2)").current_a == 2.0  # no unit: taken as V, A
    with pytest.raises(MeterProtocolError, match="voltage must be in V"):
        read("32.7.0(0.231*kV)")
    with pytest.raises(MeterProtocolError, match="current must be in A"):
        read("31.7.0(10*mA)")


@pytest.mark.parametrize(
    "lines,match",
    [
        ((), r"^no energy register 1\.8\.0 in the readout$"),
        (("1.8.1(1*kWh)", "1.8.0*01(1*kWh)"), r"^no energy register 1\.8\.0 in the readout$"),
        (("1.8.0(12345)",), "energy without a unit"),
        (("1.8.0(1*kvarh)",), "unit is not one of wh, kwh"),
        (("1.8.0(1*MWh)",), "unit is not one of"),
        (("1.8.0(-1*kWh)",), "negative energy"),
        (("1.8.0(????????*kWh)",), "not a number"),
        (("1.8.0(1*kWh)", "1.7.0(-1*kW)"), "cannot be negative"),
        (("1.8.0(1*kWh)", "1.7.0(1)"), "power without a unit"),
        (("1.8.0(1*kWh)", "16.7.0(1*kVA)"), "unit is not one of w, kw"),
    ],
)
def test_reading_rejects(lines: tuple[str, ...], match: str) -> None:
    with pytest.raises(MeterProtocolError, match=match):
        reading_from_data(_values(*lines), received_ms=0)


@pytest.mark.parametrize(
    "time,date,expected",
    [
        ("142503", "240315", datetime(2024, 3, 15, 14, 25, 3)),
        ("14:25:03", "24-03-15", datetime(2024, 3, 15, 14, 25, 3)),
        ("000000", "0240101", datetime(2024, 1, 1)),  # ISKRA's 0YYMMDD
        ("235959", "991231", datetime(2099, 12, 31, 23, 59, 59)),
    ],
)
def test_meter_clock_formats(time: str, date: str, expected: datetime) -> None:
    reading = reading_from_data(_values("1.8.0(1*kWh)", f"0.9.1({time})", f"0.9.2({date})"), received_ms=7)
    assert reading.meter_clock
    assert reading.timestamp_ms == int(expected.replace(tzinfo=timezone.utc).timestamp()) * 1000


@pytest.mark.parametrize(
    "time,date",
    [
        ("1425", "240315"),
        ("142503", "2403"),
        ("14h25m03", "240315"),
        ("142503", "241315"),
        ("250000", "240315"),
        ("142503", "240230"),
        ("", ""),
    ],
)
def test_meter_clock_rejects(time: str, date: str) -> None:
    with pytest.raises(MeterProtocolError, match="meter clock"):
        reading_from_data(_values("1.8.0(1*kWh)", f"0.9.1({time})", f"0.9.2({date})"), received_ms=7)


@pytest.mark.parametrize("lines", [("0.9.1(142503)",), ("0.9.2(240315)",), ()])
def test_meter_clock_needs_both_registers(lines: tuple[str, ...]) -> None:
    reading = reading_from_data(_values("1.8.0(1*kWh)", *lines), received_ms=1234)
    assert (reading.timestamp_ms, reading.meter_clock) == (1234, False)


@pytest.mark.parametrize(
    "line,status",
    [
        ("F.F(00000000)", MeterStatus.NONE),
        ("0-0:F.F.0*255(0000000)", MeterStatus.NONE),
        ("F.F(00000010)", MeterStatus.FAULT),
        ("F.F.0(A)", MeterStatus.FAULT),
    ],
)
def test_error_register_sets_fault(line: str, status: MeterStatus) -> None:
    assert reading_from_data(_values("1.8.0(1*kWh)", line), received_ms=0).status == status


def test_reading_is_json_ready() -> None:
    assert MT174_READING.as_json()["energy_wh"] == 12_345_678.0
    assert isinstance(reading_from_data(_values("1.8.0(1*kWh)"), received_ms=5).timestamp_ms, int)


# -- reaction times, option select, programming commands, partial blocks ---------------------------


@pytest.mark.parametrize(
    "manufacturer,window", [("ISK", (0.2, 1.5)), ("ISk", (0.02, 1.5)), ("LGZ", (0.2, 1.5)), ("EVp", (0.02, 1.5))]
)
def test_reaction_window(manufacturer: str, window: tuple[float, float]) -> None:
    assert iec62056.reaction_window_s(manufacturer) == window
    ident = parse_identification(f"/{manufacturer}5X\r\n".encode())
    assert ident.reaction_window_s == window


@pytest.mark.parametrize("manufacturer", ["", "IS", "ISKR", "IS1"])
def test_reaction_window_rejects(manufacturer: str) -> None:
    with pytest.raises(ValueError):
        iec62056.reaction_window_s(manufacturer)


def test_command_messages_from_the_standard() -> None:
    # The standard's BCC example is a password request; B0 is the break message.
    assert iec62056.command_message("P0", "(1234567)") == b"\x01P0\x02(1234567)\x03P"
    assert iec62056.break_message() == b"\x01B0\x03q"
    assert bcc(iec62056.break_message()[:-1]) == ord("q")
    for bad in ("X0", "P", "PP", "P00"):
        with pytest.raises(ValueError):
            iec62056.command_message(bad)


@pytest.mark.parametrize(
    "wire,expected",
    [
        (b"\x06050\r\n", ("0", "5", "0", False)),
        (b"\x06051\r\n", ("0", "5", "1", True)),
        (b"\x06060", ("0", "6", "0", False)),
    ],
)
def test_parse_option_select(wire: bytes, expected: tuple[str, str, str, bool]) -> None:
    option = iec62056.parse_option_select(wire)
    assert (option.protocol, option.baud_char, option.mode, option.programming) == expected
    assert ack_option(option.baud_char, option.mode, option.protocol) == wire[:4] + b"\r\n"


@pytest.mark.parametrize("wire", [b"\x0605\r\n", b"\x15050\r\n", b"\x06350\r\n", b"\x060705\r\n", b"\x0605x\r\n"])
def test_parse_option_select_rejects(wire: bytes) -> None:
    with pytest.raises(MeterProtocolError):
        iec62056.parse_option_select(wire)


LINES = [f"1.8.{i}({i:07.3f}*kWh)" for i in range(7)]


def _read_readout(wire: bytes, mode: str, seed: int = 0) -> tuple[iec62056.ReadoutReader, object, bytes]:
    reader = iec62056.ReadoutReader()
    sent = b""
    for chunk in _chunks(wire, mode, seed):
        result = reader.feed(chunk)
        sent += reader.data_to_send()
        if result is not None:
            return reader, result, sent
    return reader, None, sent


@pytest.mark.parametrize("per_block,blocks", [(1, 7), (3, 3), (7, 1), (100, 1)])
def test_partial_blocks_round_trip_any_chunking(per_block: int, blocks: int) -> None:
    wire = iec62056.readout_blocks(LINES, per_block)
    assert len(wire) == blocks
    assert all(b[0] == iec62056.STX and b[-2] == iec62056.EOT for b in wire[:-1])
    assert wire[-1][-2] == iec62056.ETX and wire[-1].endswith(b"!\r\n\x03" + wire[-1][-1:])
    if blocks == 1:
        assert wire[0] == readout_bytes(LINES)  # one block is the plain data message
    for mode in MODES:
        reader, result, sent = _read_readout(b"".join(wire), mode, seed=per_block)
        assert isinstance(result, DataBlock) and result.lines == tuple(LINES)
        # Every block of a partial readout is acknowledged, the single data message is not.
        assert sent == (b"\x06" * blocks if blocks > 1 else b"")
        assert reader.blocks == blocks - 1 and reader.finished


def test_a_damaged_partial_block_is_asked_again_and_the_retries_are_bounded() -> None:
    first, last = iec62056.readout_blocks(LINES, 4)
    bad = first[:-1] + bytes((first[-1] ^ 0x5A,))
    reader = iec62056.ReadoutReader(max_retries=2)
    assert reader.feed(bad) is None and reader.data_to_send() == b"\x15"  # NAK: repeat it
    assert reader.feed(first) is None and reader.data_to_send() == b"\x06"
    bad_last = last[:-1] + bytes((last[-1] ^ 1,))
    assert reader.feed(bad_last) is None and reader.data_to_send() == b"\x15"  # the last one too
    result = reader.feed(last)
    assert isinstance(result, DataBlock) and result.lines == tuple(LINES)
    assert reader.data_to_send() == b"\x06" and reader.repeats == 2

    reader = iec62056.ReadoutReader(max_retries=2)
    with pytest.raises(MeterProtocolError, match="bad BCC 3 times"):
        for _ in range(3):
            reader.feed(bad)
    assert reader.data_to_send() == b"\x15\x15" and reader.finished


def test_the_number_of_partial_blocks_is_bounded() -> None:
    wire = b"".join(iec62056.readout_blocks(LINES, 1))  # 7 blocks
    assert isinstance(iec62056.ReadoutReader(max_blocks=7).feed(wire), DataBlock)
    with pytest.raises(MeterProtocolError, match="more than 6 blocks"):
        iec62056.ReadoutReader(max_blocks=6).feed(wire)


def test_a_damaged_single_block_is_an_error_not_a_repeat() -> None:
    wire = readout_bytes(LINES)
    reader = iec62056.ReadoutReader()
    with pytest.raises(MeterProtocolError, match="BCC"):
        reader.feed(wire[:-1] + bytes((wire[-1] ^ 1,)))
    assert reader.data_to_send() == b""


@pytest.mark.parametrize("noise", [b"", b"\x06051\r\n", b"\x00junk"])
def test_a_password_request_is_answered_with_a_break(noise: bytes) -> None:
    wire = noise + iec62056.command_message("P0", "(12345678)")
    for mode in MODES:
        reader, result, sent = _read_readout(wire, mode)
        assert result == iec62056.PasswordRequest(data="(12345678)")
        assert sent == iec62056.break_message() and reader.finished


@pytest.mark.parametrize(
    "wire,match",
    [
        (b"\x01B0\x03r", "command message BCC"),
        (iec62056.command_message("R1", "1.8.0()"), "programming command 'R1'"),
        (b"\x02" + b"x" * 9000, "longer than"),
        (_raw_block(b"a\x00(1)\r\n!\r\n"), "not printable"),
    ],
)
def test_readout_reader_rejects(wire: bytes, match: str) -> None:
    _raises_in_all_modes(iec62056.ReadoutReader, wire, match)
