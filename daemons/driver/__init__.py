"""``ev-driver`` / ``EV_Driver``: a driver's app.

Sends supply requests (one-off, or a file of them) to Central through Kafka and
shows every step of each: received, authorised or denied (with the reason), live
kWh and EUR while charging, and the final ticket. A driver reads only its own
partition of driver-events and keeps only its own records. It remembers where it
was (state file): killed mid-supply and started again with the same id, it shows
the outcome of that supply and carries on with its file where it left off.

On a terminal it draws a live screen (:mod:`.screen` what it shows, :mod:`.keys` what
keys mean, :mod:`.live` the terminal); elsewhere it writes plain log lines.
"""

from __future__ import annotations

from .app import Driver
from .cli import main
from .figures import LiveFigures
from .requests import RequestLine, parse_requests, parse_target
from .screen import DriverScreen

__all__ = ["RequestLine", "parse_requests", "parse_target", "LiveFigures", "DriverScreen", "Driver", "main"]
