"""``evcp-monitor`` / ``EV_CP_M``: registers its charge point with Central and watches its engine.

Two links, each kept up by its own reconnect loop with backoff:

- to Central: Hello(role MONITOR, CP id, location, price) registers or authenticates
  the CP; its keepalive is how Central knows the CP is there at all (DISCONNECTED
  otherwise). In release 2 (the default) the link is TLS and the monitor proves the
  CP's registry credential (evproto.auth); Central answers with the CP's record key,
  which the monitor hands to its engine (CpKey) so it can seal what it reports. The
  monitor reports the engine's health: FaultReport on a fault, RecoveryReport when
  it clears, HealthStatus right after (re)connecting.
- to the engine: Hello names the CP; a HealthCheck every second. A KO answer, no
  answer in time, or the link dropping is a fault.
"""

from __future__ import annotations

from .app import CentralRefused, Health, Monitor
from .cli import main, tls_address

__all__ = ["Monitor", "Health", "CentralRefused", "main", "tls_address"]
