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
    execute_horizon: int | None = None
    """Actions of each chunk the policy was trained to execute before replanning (a VLA's
    ``replan_every``); None: the whole chunk. Announced to clients, whose runtime executes
    this many by default."""

    def __post_init__(self):
        if self.execute_horizon is not None and not 1 <= self.execute_horizon <= (
            self.action_horizon
        ):
            raise ValueError(
                f"execute_horizon must be in 1..action_horizon ({self.action_horizon}), got "
                f"{self.execute_horizon}"
            )

    def metadata(self) -> dict[str, Any]:
        """JSON/msgpack-friendly description, sent to clients on connect."""
        return {
            "name": self.name,
            "action_dim": self.action_dim,
            "action_horizon": self.action_horizon,
            "execute_horizon": self.execute_horizon or self.action_horizon,
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
                # maxsplit: a 4 MB prompt of one-letter words is refused without splitting it
                if s.max_length and len(value.split(maxsplit=s.max_length)) > s.max_length:
                    n = len(value.split()) if len(value) <= 1 << 16 else f"more than {s.max_length}"
                    raise ObservationError(
                        s.name, f"{n} words, longer than the policy's context of {s.max_length}"
                    )
                out[s.name] = value
                continue
            out[s.name] = _as_array(s, value)
        return out


def _as_array(s: InputSpec, value: Any) -> np.ndarray:
    """``value`` as an array of ``s``'s shape and dtype, or an :class:`ObservationError` naming
    ``s.name``. Finiteness is checked *after* the cast: a float64 1e300 is finite but becomes
    inf in float32, and must be refused here rather than poison the batch it would join."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, huge ints, ...
        raise ObservationError(
            s.name, f"cannot be read as a {s.dtype} array of shape {tuple(s.shape)} ({e})"
        ) from None
    # bool, str, bytes, object (None, dicts, huge ints), complex: none is a number we read
    if arr.dtype.kind not in "iuf":
        raise ObservationError(
            s.name, f"dtype {arr.dtype}, expected {s.dtype} numbers ({s.description})"
        )
    if arr.shape != tuple(s.shape):
        raise ObservationError(
            s.name, f"shape {arr.shape}, expected {tuple(s.shape)} ({s.description})"
        )
    want = np.dtype(s.dtype)
    if want == np.uint8 and arr.dtype != np.uint8:
        raise ObservationError(s.name, f"dtype {arr.dtype}, expected uint8 image")
    if want.kind in "iu":
        info = np.iinfo(want)
        if arr.dtype.kind not in "iu" or (
            arr.size and (arr.min() < info.min or arr.max() > info.max)
        ):
            raise ObservationError(
                s.name,
                f"dtype {arr.dtype}, expected {s.dtype} integers in [{info.min}, {info.max}]",
            )
        return arr.astype(want, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=False)
    if not np.all(np.isfinite(out)):
        raise ObservationError(
            s.name,
            f"contains NaN or infinity (as {s.dtype}, whose largest value is "
            f"{np.finfo(want).max:.3g})",
        )
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
