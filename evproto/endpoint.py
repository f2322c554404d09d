"""Transport addresses: ``tcp://host:port``, ``tls://host:port?ca=FILE`` and
``serial:///dev/ttyUSB0?baudrate=9600``.

Pure parsing, no I/O. Shorthands accepted everywhere a URL is: ``host:port``
means TCP and a path starting with ``/`` (or a Windows port name such as ``COM3``)
means a serial device. pyserial's URL handlers (``rfc2217://``, ``socket://``,
``loop://``, ``spy://``, ``alt://``, ``hwgrep://``, ``cp2110://``) are serial
ports too: the line settings of their query (``baudrate`` ...) are ours, any other
option stays in the URL for pyserial.

TLS options (query string, file paths): ``ca`` the CA bundle that signs the other
side's certificate (a client checks the server against it; a server given ``ca``
requires and checks client certificates), ``cert`` and ``key`` this side's own
certificate chain and private key (a server needs them; a client sends them when
given), ``server_name`` the name the client expects in the server's certificate
(default: the host).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import TransportError

__all__ = ["Endpoint", "parse_endpoint", "SERIAL_DEFAULTS", "TLS_OPTIONS", "PYSERIAL_SCHEMES"]

#: Serial settings used when the URL does not give them (8N1, the usual meter default).
SERIAL_DEFAULTS: dict[str, object] = {"baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}

_PARITIES = {"N", "E", "O", "M", "S"}
_BYTESIZES = {5, 6, 7, 8}
_STOPBITS = {1, 1.5, 2}
_BOOL_OPTIONS = {"rtscts", "xonxoff", "dsrdtr", "exclusive"}
#: pyserial URL handlers, passed to ``serial.serial_for_url`` as they are.
PYSERIAL_SCHEMES = ("rfc2217", "socket", "loop", "spy", "alt", "hwgrep", "cp2110")
_LINE_OPTIONS = {"baudrate", "bytesize", "parity", "stopbits"} | _BOOL_OPTIONS
_WINDOWS_PORT = re.compile(r"(?i)COM[0-9]{1,3}")
#: What a ``tls://`` address may carry in its query string.
TLS_OPTIONS = ("ca", "cert", "key", "server_name")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A parsed transport address."""

    scheme: str  # "tcp", "tls" or "serial"
    host: str = ""
    port: int = 0
    path: str = ""
    options: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The canonical URL form."""
        query = "&".join(f"{k}={v}" for k, v in self.options.items())
        if "://" in self.path:  # a pyserial URL
            return self.path + (("&" if "?" in self.path else "?") + query if query else "")
        if self.scheme in ("tcp", "tls"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.scheme}://{host}:{self.port}" + (f"?{query}" if query else "")
        return f"serial://{self.path}" + (f"?{query}" if query else "")

    @property
    def address(self) -> str:
        """``scheme://host:port`` without options (what messages and logs name)."""
        if "://" in self.path:
            return self.path.split("?", 1)[0]
        if self.scheme in ("tcp", "tls"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.scheme}://{host}:{self.port}"
        return f"serial://{self.path}"


def _tcp(
    host: str | None, port: int | None, text: str, scheme: str = "tcp", options: dict[str, object] | None = None
) -> Endpoint:
    if not host:
        raise TransportError(f"{text!r}: missing host (expected {scheme}://HOST:PORT)")
    if port is None:
        raise TransportError(f"{text!r}: missing port (expected {scheme}://HOST:PORT)")
    if not 0 <= port <= 65535:
        raise TransportError(f"{text!r}: port {port} is out of range 0..65535")
    return Endpoint(scheme=scheme, host=host, port=port, options=options or {})


def _tls_options(query: str, text: str) -> dict[str, object]:
    opts: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in TLS_OPTIONS:
            raise TransportError(f"{text!r}: unknown TLS option {key!r} (known: {', '.join(TLS_OPTIONS)})")
        if not value:
            raise TransportError(f"{text!r}: TLS option {key!r} is empty")
        opts[key] = value
    if ("cert" in opts) != ("key" in opts):
        raise TransportError(f"{text!r}: TLS options 'cert' and 'key' go together")
    return opts


def _serial_options(query: str, text: str) -> dict[str, object]:
    opts: dict[str, object] = dict(SERIAL_DEFAULTS)
    for key, value in parse_qsl(query, keep_blank_values=True):
        try:
            if key == "baudrate":
                baud = int(value)
                if baud <= 0:
                    raise ValueError
                opts[key] = baud
            elif key == "bytesize":
                size = int(value)
                if size not in _BYTESIZES:
                    raise ValueError
                opts[key] = size
            elif key == "parity":
                if value.upper() not in _PARITIES:
                    raise ValueError
                opts[key] = value.upper()
            elif key == "stopbits":
                bits = float(value)
                if bits not in _STOPBITS:
                    raise ValueError
                opts[key] = 1.5 if bits == 1.5 else int(bits)
            elif key in _BOOL_OPTIONS:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                opts[key] = value.lower() in ("1", "true", "yes")
            else:
                raise TransportError(f"{text!r}: unknown serial option {key!r}")
        except ValueError:
            raise TransportError(f"{text!r}: bad value {value!r} for serial option {key!r}") from None
    return opts


def parse_endpoint(text: str) -> Endpoint:
    """Parse a transport address; raises TransportError with the reason when it is invalid."""
    text = text.strip()
    if not text:
        raise TransportError("empty transport address")
    if text.startswith("/"):
        path, _, query = text.partition("?")
        return Endpoint(scheme="serial", path=path, options=_serial_options(query, text))
    if _WINDOWS_PORT.fullmatch(text.partition("?")[0]):
        path, _, query = text.partition("?")
        return Endpoint(scheme="serial", path=path.upper(), options=_serial_options(query, text))
    scheme_part = text.partition("://")[0].lower() if "://" in text else ""
    if scheme_part in PYSERIAL_SCHEMES:
        base, _, query = text.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        ours = urlencode([(k, v) for k, v in pairs if k in _LINE_OPTIONS])
        theirs = urlencode([(k, v) for k, v in pairs if k not in _LINE_OPTIONS])
        return Endpoint(
            scheme="serial", path=base + (f"?{theirs}" if theirs else ""), options=_serial_options(ours, text)
        )
    if "://" not in text:
        text_url = "tcp://" + text
    else:
        text_url = text
    parts = urlsplit(text_url)
    scheme = parts.scheme.lower()
    if scheme in ("tcp", "tls"):
        try:
            port = parts.port
        except ValueError:
            raise TransportError(f"{text!r}: port is not a number in 0..65535") from None
        if scheme == "tcp":
            if parts.query:
                raise TransportError(f"{text!r}: tcp:// addresses take no options (TLS is tls://...)")
            return _tcp(parts.hostname, port, text)
        return _tcp(parts.hostname, port, text, "tls", _tls_options(parts.query, text))
    if scheme == "serial":
        path = parts.netloc + parts.path
        if not path:
            raise TransportError(f"{text!r}: missing device path (expected serial:///dev/ttyUSB0)")
        return Endpoint(scheme="serial", path=path, options=_serial_options(parts.query, text))
    raise TransportError(
        f"{text!r}: unsupported scheme {parts.scheme!r} (use tcp://, tls://, serial:// or a "
        f"pyserial URL: {', '.join(s + '://' for s in PYSERIAL_SCHEMES)})"
    )
