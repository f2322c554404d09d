"""``evcharging chaos``: random instances killed with SIGKILL, each restarted after a random delay.

Every action is printed and appended to ``RUN/chaos.log``; when the time is up every
victim still down is restarted, so the network is whole again when chaos ends.
"""

from __future__ import annotations

import os
import random
import signal
import time

import click

from ..files import open_private
from .processes import ROLES, Registry, pid_alive, reap, restart

__all__ = ["chaos_roles", "run_chaos"]


def chaos_roles(roles: str) -> set[str]:
    """The roles named in a comma-separated list; a usage error for one that does not exist."""
    wanted = {r.strip() for r in roles.split(",") if r.strip()}
    unknown = wanted - set(ROLES)
    if unknown:
        raise click.UsageError(f"unknown role(s): {', '.join(sorted(unknown))} (roles: {', '.join(ROLES)})")
    return wanted


def run_chaos(
    reg: Registry,
    *,
    wanted: set[str],
    interval: float,
    duration: float,
    down_min: float,
    down_max: float,
    seed: int | None,
) -> None:
    """A SIGKILL every ``interval`` seconds among the live instances of the ``wanted`` roles, for
    ``duration`` seconds; each victim stays down between ``down_min`` and ``down_max`` seconds."""
    rng = random.Random(seed)
    log_path = os.path.join(reg.run_dir, "chaos.log")

    def note(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        click.echo(line)
        with open_private(log_path, "a") as fh:
            fh.write(line + "\n")

    dead: dict[str, float] = {}  # name -> time to restart it
    end = time.monotonic() + duration
    next_kill = time.monotonic()
    kills = restarts = 0
    note(f"chaos for {duration:g} s: a SIGKILL every {interval:g} s among {', '.join(sorted(wanted))}")
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            for name, when in sorted(dead.items(), key=lambda kv: kv[1]):
                if now >= when:
                    restart(reg, reg.instances[name])
                    del dead[name]
                    restarts += 1
                    note(f"restarted {name} (pid {reg.instances[name].pid})")
            if now >= next_kill:
                next_kill = now + interval
                candidates = [
                    i for i in reg.instances.values() if i.role in wanted and i.name not in dead and pid_alive(i.pid)
                ]
                if candidates:
                    victim = rng.choice(candidates)
                    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
                    reap()
                    delay = rng.uniform(down_min, down_max)
                    dead[victim.name] = time.monotonic() + delay
                    kills += 1
                    note(f"killed {victim.name} (pid {victim.pid}); back in {delay:.1f} s")
            time.sleep(0.1)
    finally:
        for name in list(dead):
            restart(reg, reg.instances[name])
            restarts += 1
            note(f"restarted {name} (pid {reg.instances[name].pid})")
        note(f"chaos over: {kills} kills, {restarts} restarts")
