"""The files a charge point's monitor and a driver's app read their credentials from.

- A CP's: ``{"cp_id": "CP001", "secret": "..."}`` as the registry's answer gives it
  (its ``id`` key is accepted too), or the secret alone on one line.
- A driver's: ``{"driver_id": "D001", "key_id": "...", "key": "<64 hex>", "central_key":
  "<64 hex>"}``, written by ``ev-central drivers add --credentials DIR``.

Both are secrets: written 0600, and refused when others may read them.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .pki import write_private

T = TypeVar("T")

__all__ = [
    "credentials_for_cli",
    "CredentialsFileError",
    "CpCredentials",
    "DriverCredentials",
    "read_cp_credentials",
    "read_driver_credentials",
    "write_driver_credentials",
    "write_cp_credentials",
]


class CredentialsFileError(Exception):
    """A credentials file that cannot be used; the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class CpCredentials:
    cp_id: str
    secret: str

    def __repr__(self) -> str:
        return f"CpCredentials(cp_id={self.cp_id!r})"


@dataclass(frozen=True, slots=True)
class DriverCredentials:
    driver_id: str
    key_id: str
    key: bytes
    central_key: bytes

    def __repr__(self) -> str:
        return f"DriverCredentials(driver_id={self.driver_id!r}, key_id={self.key_id!r})"


def _read_private(path: str) -> str:
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsFileError(
                f"{path} can be read by others (mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {path}"
            )
        if st.st_size > 64 * 1024:
            raise CredentialsFileError(f"{path} is {st.st_size} bytes: not a credentials file")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CredentialsFileError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise CredentialsFileError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CredentialsFileError(f"{path}: {exc.strerror}") from None


def read_cp_credentials(path: str, cp_id: str) -> CpCredentials:
    text = _read_private(path).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise CredentialsFileError(f"{path} is not valid JSON") from None
        named, secret = obj.get("cp_id", obj.get("id")), obj.get("secret")
        if named is not None and named != cp_id:
            raise CredentialsFileError(f"{path} holds the credentials of {str(named)[:64]!r}, not {cp_id!r}")
    else:
        secret = text
    if not isinstance(secret, str) or not 16 <= len(secret) <= 256:
        raise CredentialsFileError(f"{path} holds no usable secret")
    return CpCredentials(cp_id, secret)


def write_cp_credentials(path: Path, cp_id: str, secret: str) -> Path:
    write_private(path, (json.dumps({"cp_id": cp_id, "secret": secret}) + "\n").encode())
    return path


def write_driver_credentials(path: Path, driver_id: str, key_id: str, key: bytes, central_key: bytes) -> Path:
    write_private(
        path,
        (
            json.dumps({"driver_id": driver_id, "key_id": key_id, "key": key.hex(), "central_key": central_key.hex()})
            + "\n"
        ).encode(),
    )
    return path


def read_driver_credentials(path: str, driver_id: str) -> DriverCredentials:
    try:
        obj = json.loads(_read_private(path))
        creds = DriverCredentials(
            str(obj["driver_id"]), str(obj["key_id"]), bytes.fromhex(obj["key"]), bytes.fromhex(obj["central_key"])
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialsFileError(f"{path} is not a driver's credentials file") from None
    if creds.driver_id != driver_id:
        raise CredentialsFileError(f"{path} holds the credentials of {creds.driver_id[:64]!r}, not {driver_id!r}")
    if len(creds.key) != 32 or len(creds.central_key) != 32:
        raise CredentialsFileError(f"{path} holds keys of the wrong size")
    return creds


def credentials_for_cli(
    prog: str, *, insecure: bool, path: str | None, read: Callable[[str], T], missing: str, plaintext: str
) -> T | None:
    """A program's ``--credentials`` / ``--insecure`` pair, as every daemon handles it: under
    --insecure no file (and a warning, ``plaintext`` says what that means); otherwise the
    file is required (``missing`` says how to get one) and read with ``read``. Exit 2 for a
    missing option, 64 for a file that cannot be used, with one line each."""
    import sys

    import click

    if insecure:
        if path:
            raise click.UsageError("--insecure uses no credentials: leave out --credentials")
        click.echo(f"{prog}: WARNING: --insecure: {plaintext}", err=True)
        return None
    if not path:
        raise click.UsageError(f"{missing}, or --insecure for release 1's plaintext mode")
    try:
        return read(path)
    except CredentialsFileError as exc:
        click.echo(f"{prog}: {exc}", err=True)
        sys.exit(64)
