"""Domain rules of the charging network, pure and table-driven (no I/O, time passed in).

- :mod:`.cp`: a charge point's state as Central shows it (the spec's truth table).
- :mod:`.session`: the lifecycle of a supply session.
- :mod:`.chargepoint`: the engine's own state machine (authorise, plug, supply, end).
"""
