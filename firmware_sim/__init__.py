"""A simulated meter on a pty, with fault injection (installed as ``evproto.firmware_sim``)."""
