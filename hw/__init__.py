"""Real meter drivers over serial lines (installed as ``evproto.hw``)."""
