"""What every deployable policy offers: a declared input spec and batched chunk inference.

This is the boundary between learning (``algos/``) and deployment (``serve/``): the policy
server, the robot-side runtime and the evaluation harness only see this interface.

Observations cross it as flat dicts keyed like openpi's examples (``"observation/state"``,
``"observation/image"``, ``"prompt"``), numpy arrays plus the instruction string, so a robot
client needs neither JAX nor anyskill.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np


class ObservationError(ValueError):
    """An observation does not match the policy's input spec; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One observation field."""

    name: str
    """Key in the observation dict, e.g. ``observation/state``."""
    shape: tuple[int, ...]
    """Shape of one observation (no batch axis); ``()`` for the prompt."""
    dtype: str
    """numpy dtype name (``float32``, ``uint8``), or ``str`` for the instruction."""
    description: str = ""
    max_length: int = 0
    """For ``str`` fields: the longest accepted text, in words."""


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a policy reads and what it returns."""

    inputs: tuple[InputSpec, ...]
    action_dim: int
    action_horizon: int
    """Actions per chunk returned by ``infer``."""
    control_hz: float
    """Rate the chunk's actions are meant to be executed at."""
    name: str = "policy"

    def metadata(self) -> dict[str, Any]:
        """JSON/msgpack-friendly description, sent to clients on connect."""
        return {
            "name": self.name,
            "action_dim": self.action_dim,
            "action_horizon": self.action_horizon,
            "control_hz": self.control_hz,
            "inputs": {
                s.name: {
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "description": s.description,
                    **({"max_length": s.max_length} if s.dtype == "str" else {}),
                }
                for s in self.inputs
            },
        }

    def validate(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Check one observation (no batch axis) against the spec; returns it with arrays cast
        to their declared dtype. Raises :class:`ObservationError` naming the first bad field.
        Extra keys are ignored."""
        if not isinstance(obs, dict):
            raise ObservationError("<observation>", f"expected a dict, got {type(obs).__name__}")
        out = {}
        for s in self.inputs:
            if s.name not in obs:
                raise ObservationError(
                    s.name, f"missing; expected keys {sorted(i.name for i in self.inputs)}"
                )
            value = obs[s.name]
            if s.dtype == "str":
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if not isinstance(value, str):
                    raise ObservationError(s.name, f"expected a string, got {type(value).__name__}")
                n_words = len(value.split())
                if s.max_length and n_words > s.max_length:
                    raise ObservationError(
                        s.name,
                        f"{n_words} words, longer than the policy's context of {s.max_length}",
                    )
                out[s.name] = value
                continue
            arr = np.asarray(value)
            if arr.shape != tuple(s.shape):
                raise ObservationError(
                    s.name, f"shape {arr.shape}, expected {tuple(s.shape)} ({s.description})"
                )
            if arr.dtype.kind not in "biuf":
                raise ObservationError(s.name, f"dtype {arr.dtype}, expected {s.dtype}")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ObservationError(s.name, "contains NaN or infinity")
            want = np.dtype(s.dtype)
            if want == np.uint8 and arr.dtype != np.uint8:
                raise ObservationError(s.name, f"dtype {arr.dtype}, expected uint8 image")
            out[s.name] = arr.astype(want, copy=False)
        return out


@runtime_checkable
class Policy(Protocol):
    """A deployable policy: ``infer`` maps a batch of validated observations to action chunks.

    ``infer(batch)`` takes a list of observation dicts (each already passed through
    ``spec.validate``) and returns a float32 array ``[len(batch), action_horizon,
    action_dim]``. It may be slow (a network's forward pass): callers keep it off event loops.
    """

    spec: PolicySpec

    def infer(self, batch: list[dict[str, Any]]) -> np.ndarray: ...
