"""Secrets on a command line (the provider's key, Central's token): given as an option, an
environment variable or a file, read once, never echoed back."""

from __future__ import annotations

import click

__all__ = ["read_secret_option", "MAX_SECRET_CHARS"]

MAX_SECRET_CHARS = 512


def read_secret_option(prog: str, option: str, value: str | None, file: str | None, *, required: bool = True) -> str:
    """``value`` or the first line of ``file`` (not both); a usage error naming ``option``
    (never the secret) when it is missing, empty, or not one printable line."""
    if value and file:
        raise click.UsageError(f"{prog}: give {option} or {option}-file, not both")
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                value = fh.read(MAX_SECRET_CHARS + 1).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"{prog}: {option}-file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    value = (value or "").strip()
    if not value:
        if required:
            raise click.UsageError(f"{prog}: {option} (or {option}-file) is required")
        return ""
    if len(value) > MAX_SECRET_CHARS or not value.isprintable() or any(c.isspace() for c in value):
        raise click.UsageError(f"{prog}: {option} must be one word of printable characters")
    return value
