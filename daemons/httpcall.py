"""One JSON request to a peer of ours (the registry, the weather simulator), with its error
answer (``{"error": ...}``) or its absence made into one exception."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any, Callable

__all__ = ["call_json"]


def call_json(
    request: urllib.request.Request,
    *,
    peer: str,
    error: Callable[[str], Exception],
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    hint: str = "",
) -> Any:
    """The JSON answer to ``request``. An error status raises ``error("PEER answered CODE:
    WHY")`` (WHY from the answer's ``error``); no answer raises ``error("cannot reach PEER:
    WHY" + hint)``."""
    try:
        with urllib.request.urlopen(request, context=tls, timeout=timeout_s) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            why = json.load(exc).get("error", exc.reason)
        except ValueError:
            why = exc.reason
        raise error(f"{peer} answered {exc.code}: {why}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise error(f"cannot reach {peer}: {getattr(exc, 'reason', exc)}{hint}") from None
