"""Central's panel in the launcher's terminal, drawn from Central's HTTP API.

Central itself runs without a terminal; the launcher polls ``/cps``, ``/requests``,
``/messages`` and ``/status`` twice a second, reads the answers back into a
:class:`CentralView` (``CentralView.from_json``, next to the ``to_json`` that wrote
them) and posts the panel's commands (stop, resume, revoke) to the same API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from .network import api_base, api_client
from .processes import Registry

__all__ = ["show_panel"]


async def show_panel(reg: Registry) -> None:
    """Central's panel, drawn here from its HTTP API (Central itself runs without a terminal)."""
    import aiohttp

    from evproto.domain.central.view import CentralView, MessageView

    from ..central.panel import Command
    from ..central.terminal import run_panel

    base = api_base(reg)
    http_addr = base.removesuffix("/api/v1")  # what the panel says it connects to (with its scheme)
    headers, tls = api_client(reg)
    # No timestamp: nothing from Central yet; the panel says it is connecting, with no date.
    latest = {"view": CentralView(central_id="", http=http_addr)}
    reachable: bool | None = None  # the last poll's outcome, once there was one

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=2),
        headers=headers,
        connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
    ) as http:

        async def poll() -> None:
            nonlocal reachable
            while True:
                try:
                    cps = await (await http.get(f"{base}/cps")).json()
                    reqs = await (await http.get(f"{base}/requests")).json()
                    msgs = await (await http.get(f"{base}/messages")).json()
                    status = await (await http.get(f"{base}/status")).json()
                    latest["view"] = CentralView.from_json(
                        cps=cps, requests=reqs, messages=msgs, status=status, now_ts_ms=int(time.time() * 1000)
                    )
                    reachable = True
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
                    old = latest["view"]
                    notes = (
                        ()
                        if reachable is False
                        else (  # said once per outage, not every poll
                            MessageView(
                                ts_ms=int(time.time() * 1000),
                                level="error",
                                text=f"cannot reach Central's HTTP API at {base}",
                            ),
                        )
                    )
                    reachable = False
                    if not old.now_ts_ms:  # never reached yet: still connecting, nothing else is known
                        latest["view"] = dataclasses.replace(old, messages=old.messages[-20:] + notes)
                    else:
                        latest["view"] = CentralView(
                            cps=tuple(dataclasses.replace(c, state="DISCONNECTED") for c in old.cps),
                            messages=old.messages[-20:] + notes,
                            central_id=old.central_id,
                            kafka=old.kafka,
                            kafka_ok=False,
                            now_ts_ms=int(time.time() * 1000),
                        )
                await asyncio.sleep(0.5)

        async def on_command(cmd: Command) -> str:
            if cmd.action == "quit":
                return "bye"
            if cmd.action == "help":
                return "s CP|all: stop · r CP|all: resume · v CP: revoke its key · q: quit (stops the network)"
            url = f"{base}/cps/{cmd.target}/{cmd.action}" if cmd.target else f"{base}/cps/{cmd.action}"
            try:
                async with http.post(url) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        return str(body.get("error", "failed"))
                    if cmd.action == "revoke":
                        return f"{cmd.target}: keys revoked; it must authenticate again"
                    return f"{cmd.action.upper()} sent to {', '.join(body.get('cps', []))}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return f"cannot reach Central: {exc}"

        poller = asyncio.ensure_future(poll())
        try:
            await run_panel(lambda: latest["view"], on_command)
        finally:
            poller.cancel()
