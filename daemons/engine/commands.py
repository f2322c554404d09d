"""The engine's side of Kafka's cp-commands: what Central asks of this CP, checked at the gate.

A part of :class:`~.app.Engine` (its state is set up there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from evproto.bus import seal
from evproto.bus.events import MAX_EVENT_BYTES
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    BusConsumer,
    LogReset,
    Record,
)
from evproto.bus.seal import SealError
from evproto.bus.topics import Topic, partition_for, spec_for
from evproto.domain.chargepoint import Effect
from evproto.domain.events import (
    AuthorizeCommand,
    CancelAuthorization,
    ResumeCommand,
    StopCommand,
)

from ..common import now_ms

__all__ = ["CommandReader"]

log = logging.getLogger("evproto.engine")

#: What Central may send on cp-commands.
_COMMANDS = (AuthorizeCommand, StopCommand, ResumeCommand, CancelAuthorization)
#: How long a command sealed with a key of ours the engine has not been handed yet waits for it.
KEY_WAIT_S = 30.0


class CommandReader:
    """Reads this CP's commands and hands them to the charge point."""

    async def _commands_loop(self, cp_id: str) -> None:
        partition = partition_for(cp_id, self.partitions[Topic.CP_COMMANDS])
        start = self.commands_offset if self.commands_offset is not None else OFFSET_BEGINNING
        # With the log it came from: a broker that lost its data since is found out, and the
        # new log is read from its beginning (expired authorisations in it are skipped below).
        position = (Topic.CP_COMMANDS, partition, start, self.commands_topic_id)
        async with BusConsumer(
            self.opts.kafka, assignments=[position], on_reset=self._commands_reset, max_value_bytes=MAX_EVENT_BYTES
        ) as consumer:
            async for record in consumer:
                self.commands_offset, self.commands_topic_id = record.offset + 1, record.topic_id
                if record.key != cp_id or self.cp is None:
                    continue
                await self._await_key_for(record, cp_id)
                assert self.records is not None
                self.records.take(record, self._on_command)
                self._save()

    async def _await_key_for(self, record: Record, cp_id: str) -> None:
        """A command sealed with a key of ours that the monitor has not handed over yet
        (Central issued it a moment ago) waits for it, KEY_WAIT_S at most."""
        if not self.gate.secure:
            return
        try:
            envelope = seal.peek(record.value)
        except SealError:
            return
        if envelope is None or envelope.key_id in self.keys.keys or not envelope.key_id.startswith(f"cp.{cp_id}."):
            return
        self._key_arrived.clear()
        log.info(
            "a command sealed with key %s, which the monitor has not handed over yet: waiting for it",
            envelope.key_id[:64],
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._key_arrived.wait(), KEY_WAIT_S)

    def _on_command(self, record: Record) -> str | None:
        """Apply one command for this CP; why it cannot be applied, or None once applied."""
        cp = self.cp
        assert cp is not None
        now = now_ms()
        try:
            ev = self.gate.decode(record, now)
        except SealError as exc:
            return f"refused: {exc}"
        if not isinstance(ev, _COMMANDS):
            return f"a {ev.TYPE} event is not a command"
        if ev.cp_id != cp.cp_id:
            return f"a command for {ev.cp_id}, not for {cp.cp_id}"
        if isinstance(ev, AuthorizeCommand):
            if ev.expires_ts_ms <= now:
                return None  # an old authorisation (replayed history): Central expired it already
            self._apply(cp.authorize(ev, now))
        elif isinstance(ev, StopCommand):
            self._apply(cp.stop(now))
        elif isinstance(ev, ResumeCommand):
            self._apply(cp.resume(now))
        else:
            self._apply(cp.cancel(ev.session_id, now))
        return None

    def _commands_reset(self, reset: LogReset) -> None:
        log.warning(
            "Kafka lost its log of %s (%s): reading the new log from its beginning; %s",
            reset.topic.value,
            reset.cause.text,
            spec_for(reset.topic).resend.recovery,
        )
        self.commands_offset, self.commands_topic_id = OFFSET_BEGINNING, reset.topic_id
        self._save()

    def _central_news(self, now: int) -> list[Effect]:
        """Tell the CP whether Central is reachable (nothing while it is too early to say)."""
        state = self.central.state()
        return [] if state is None or self.cp is None else self.cp.central_reachable(state, now)
