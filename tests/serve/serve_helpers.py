"""Test helpers: a tiny numpy policy (no JAX compile) and a good observation for it."""

from __future__ import annotations

import threading
import time

import numpy as np

from anyskill.policies.base import InputSpec, PolicySpec

STATE_DIM, IMAGE_SIZE, HORIZON, ACTION_DIM = 4, 8, 5, 2


class CountingPolicy:
    """Actions encode the request (state[0] + step index) so replies can be matched to
    requests; counts infer calls and batch sizes; ``delay`` slows each forward pass."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.spec = PolicySpec(
            inputs=(
                InputSpec("observation/state", (STATE_DIM,), "float32", "state"),
                InputSpec("observation/image", (IMAGE_SIZE, IMAGE_SIZE, 3), "uint8", "camera"),
                InputSpec("prompt", (), "str", "instruction", max_length=64),
            ),
            action_dim=ACTION_DIM,
            action_horizon=HORIZON,
            control_hz=50.0,
            name="counting",
        )
        self.delay = delay
        self.fail = fail
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def infer(self, batch):
        with self._lock:
            self.calls.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom: secret internal detail")
        out = np.zeros((len(batch), HORIZON, ACTION_DIM), np.float32)
        for i, obs in enumerate(batch):
            out[i] = obs["observation/state"][0] + np.arange(HORIZON, dtype=np.float32)[:, None]
        return out


class BlockingPolicy(CountingPolicy):
    """A forward pass that signals ``entered`` and then waits for ``release`` (at most 20 s):
    tests hold the worker busy while they look at what the event loop does meanwhile."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def infer(self, batch):
        self.entered.set()
        self.release.wait(20)
        return super().infer(batch)


def good_obs(value: float = 0.0) -> dict:
    return {
        "observation/state": np.full(STATE_DIM, value, np.float32),
        "observation/image": np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
        "prompt": "go to the red zone",
    }


def msgpack_values():
    """Hypothesis strategy: any structure msgpack can carry (what a decoded frame may hold)."""
    from hypothesis import strategies as st

    leaves = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats()
        | st.text(max_size=16)
        | st.binary(max_size=16)
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=6)
            | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=6)
        ),
        max_leaves=12,
    )
