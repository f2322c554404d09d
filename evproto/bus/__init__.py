"""The Kafka side of the network: topic names, JSON event schemas, and thin adapters.

``topics``, ``events`` and ``resets`` are pure (no I/O); ``kafka`` and ``broker`` talk
to a real broker (confluent-kafka, and the embedded Tansu broker for development).
"""
