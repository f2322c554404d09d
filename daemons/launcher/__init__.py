"""``evcharging``: start, list and stop a whole charging network on one machine.

``evcharging up`` starts the embedded Kafka broker (unless ``--kafka`` names one),
Central, N charge points (engine + monitor each) and M drivers, every one a
separate OS process with its own log and state under the run directory, then
shows Central's panel. Ports are chosen by the processes themselves (port 0)
and reported through ready files, so nothing is juggled by hand. The registry
(``RUN/instances.json``) lets ``ps`` and ``down`` work from any terminal.

One job a module:

- :mod:`.processes`: the registry of instances; starting, waiting for and stopping them.
- :mod:`.stopping`: what stops a foreground network (signals), and output whose reader is gone.
- :mod:`.network`: starting the pieces in order (broker, registry, Central, CPs, drivers), growing, stopping.
- :mod:`.demodata`: demo locations, requests files and new ids.
- :mod:`.remote_panel`: Central's panel drawn from its HTTP API.
- :mod:`.chaos`: random kills and restarts.
- :mod:`.auditing`: where ``evcharging audit`` finds the books.
- :mod:`.weather_cmd`: the simulated weather provider and ``ev-weather`` in a network; ``evcharging weather``.
- :mod:`.cli`: the click commands, thin.
"""

from .cli import main
from .processes import Instance, Registry

__all__ = ["main", "Registry", "Instance"]
