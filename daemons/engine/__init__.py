"""evcp-engine (EV_CP_E): the charge point's engine."""
