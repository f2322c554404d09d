"""The reference daemons (installed as ``evproto.daemons``)."""
