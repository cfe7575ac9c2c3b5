"""Policy serving: an openpi-compatible websocket policy server (``server``), its wire format
(``wire``), the robot-side runtime (``runtime``, no JAX) and a simulated robot (``robot``).

This package ``__init__`` imports nothing, so ``anyskill.serve.runtime`` stays JAX-free."""
