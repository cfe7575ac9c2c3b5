"""Keyboard teleoperation: how a person's keys become an env's actions.

A person correcting a deployed policy (``--corrector.kind human``) presses keys; a
:class:`Teleop` turns them into the env's actions. Each env says what its actions mean, so each
env declares its teleop (an adapter env through ``AdapterEnv.teleop``); an env that declares
none gets :func:`box_teleop`, which moves up to six action dimensions away from the middle of
their range — right for delta / velocity action spaces, which most are.

* :class:`AxisTeleop`: velocity-style. A key selects a direction along an axis of the action
  (the last one pressed holds until another is pressed, or ``x`` stops); :class:`Toggle` keys
  flip a dimension between two values (a gripper). The tabletop's pusher and gym-hil's Panda
  end-effector are driven this way.
* :class:`TargetTeleop`: position-style, for envs whose action is an absolute target (gym-pusht:
  the agent's target in pixels): the action is the current position, read from the
  observation's state, plus a step in the held direction.

Keys are names (``"w"``, ``"up"``, ``"space"`` …, see :func:`anyskill.flywheel.human.parse_keys`);
``space``, ``x`` and ``q`` belong to the person corrector (take/hand back, stop, stop watching)
and are never bound here. Everything is numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

#: keys the person corrector keeps for itself (take/hand back control, stop, stop watching)
RESERVED = ("space", "x", "q")


@runtime_checkable
class Teleop(Protocol):
    """Keys -> one env's actions."""

    help: str
    """One line naming the keys (shown under the person's view)."""

    def reset(self) -> None:
        """Forget the held direction and toggles (a new episode, or control taken over)."""
        ...

    def stop(self) -> None:
        """Stop moving (key ``x``); toggles keep their value."""
        ...

    def press(self, key: str) -> bool:
        """Take in a key; False when the key means nothing to this teleop."""
        ...

    def action(self, state: np.ndarray | None) -> np.ndarray:
        """The action for this step; ``state``: the env's current ``observation.state``
        (None when the policy does not read it; a teleop that needs it raises)."""
        ...

    def status(self) -> str:
        """What the person is holding, in words (e.g. ``"moving +x, gripper closed"``)."""
        ...


@dataclasses.dataclass(frozen=True)
class Axis:
    """Keys that drive one action dimension: ``plus`` keys towards its high bound, ``minus``
    keys towards its low bound."""

    dim: int
    plus: tuple[str, ...]
    minus: tuple[str, ...]
    name: str = ""
    """Shown in the status (default ``"a<dim>"``)."""


@dataclasses.dataclass(frozen=True)
class Toggle:
    """A key that flips dimension ``dim`` between ``values[0]`` and ``values[1]``; until it is
    first pressed (in an episode, or after taking over) the dimension stays at the teleop's
    ``rest`` value (e.g. a gripper's "hold as is": taking over keeps what the policy holds),
    and the first press sets ``values[1]``."""

    key: str
    dim: int
    values: tuple[float, float]
    names: tuple[str, str] = ("off", "on")
    name: str = ""


def _check_keys(axes: tuple[Axis, ...], toggles: tuple[Toggle, ...], dims: int) -> None:
    seen: dict[str, str] = {}
    for what, keys, dim in [
        *((f"axis {a.dim}", (*a.plus, *a.minus), a.dim) for a in axes),
        *((f"toggle {t.dim}", (t.key,), t.dim) for t in toggles),
    ]:
        if not 0 <= dim < dims:
            raise ValueError(f"teleop {what} drives dimension {dim} of a {dims}-dim action")
        for k in keys:
            if k in RESERVED:
                raise ValueError(f"teleop key {k!r} is reserved for the person corrector")
            if k in seen:
                raise ValueError(f"teleop key {k!r} is bound twice ({seen[k]} and {what})")
            seen[k] = what


def _help(axes: tuple[Axis, ...], toggles: tuple[Toggle, ...]) -> str:
    parts = [f"{'/'.join(a.plus[:1] + a.minus[:1])} {a.name or f'a{a.dim}'}" for a in axes]
    parts += [f"{t.key} {t.name or f'a{t.dim}'}" for t in toggles]
    return "  ".join(parts)


class AxisTeleop:
    """Velocity-style teleop: ``rest`` (the action with no key held) plus ``speed`` times the
    half range towards the held direction's bound; toggled dimensions take their toggle's value;
    clipped to ``[low, high]``."""

    def __init__(
        self,
        low: tuple[float, ...],
        high: tuple[float, ...],
        axes: tuple[Axis, ...],
        toggles: tuple[Toggle, ...] = (),
        speed: float = 1.0,
        rest: tuple[float, ...] | None = None,
    ):
        self.low = np.asarray(low, np.float32)
        self.high = np.asarray(high, np.float32)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"action bounds must be two vectors of one size: {low} vs {high}")
        if not 0.0 < speed <= 1.0:
            raise ValueError(f"teleop speed must be in (0, 1] (of the half range), got {speed}")
        _check_keys(axes, toggles, len(self.low))
        self.axes, self.toggles, self.speed = tuple(axes), tuple(toggles), float(speed)
        mid = (self.low + self.high) / 2
        self.rest = mid if rest is None else np.asarray(rest, np.float32)
        self.help = _help(self.axes, self.toggles)
        self._keys = {k: (a, +1.0) for a in self.axes for k in a.plus}
        self._keys.update({k: (a, -1.0) for a in self.axes for k in a.minus})
        self.reset()

    def reset(self) -> None:
        self.direction = np.zeros(len(self.low), np.float32)
        self.toggled: dict[str, bool | None] = {t.key: None for t in self.toggles}

    def stop(self) -> None:
        self.direction = np.zeros(len(self.low), np.float32)

    def press(self, key: str) -> bool:
        if key in self._keys:
            axis, sign = self._keys[key]
            self.direction = np.zeros(len(self.low), np.float32)
            self.direction[axis.dim] = sign
            return True
        if key in self.toggled:
            self.toggled[key] = not self.toggled[key]  # None (untouched) -> True
            return True
        return False

    def action(self, state: np.ndarray | None = None) -> np.ndarray:
        half = (self.high - self.low) / 2
        a = self.rest + self.speed * half * self.direction
        for t in self.toggles:
            if self.toggled[t.key] is not None:
                a[t.dim] = t.values[int(self.toggled[t.key])]
        return np.clip(a, self.low, self.high).astype(np.float32)

    def status(self) -> str:
        moving = [
            f"{'+' if self.direction[a.dim] > 0 else '-'}{a.name or f'a{a.dim}'}"
            for a in self.axes
            if self.direction[a.dim] != 0
        ]
        words = [f"moving {moving[0]}" if moving else "still"]
        words += [
            f"{t.name or f'a{t.dim}'} "
            + ("as is" if self.toggled[t.key] is None else t.names[int(self.toggled[t.key])])
            for t in self.toggles
        ]
        return ", ".join(words)


class TargetTeleop:
    """Position-style teleop for an action that is an absolute target: the position
    ``state[position]`` plus ``step`` times the held direction (a unit vector over the
    position's dimensions), clipped to ``[low, high]``. ``directions``: key -> direction."""

    def __init__(
        self,
        position: tuple[int, ...],
        low: tuple[float, ...],
        high: tuple[float, ...],
        step: float,
        directions: dict[str, tuple[float, ...]],
    ):
        self.position = tuple(int(i) for i in position)
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if not (self.low.shape == self.high.shape == (len(self.position),)):
            raise ValueError(
                f"a target teleop's bounds have one value per position dimension "
                f"({len(self.position)}), got {low} and {high}"
            )
        if not step > 0:
            raise ValueError(f"teleop step must be > 0, got {step}")
        for k, d in directions.items():
            if k in RESERVED:
                raise ValueError(f"teleop key {k!r} is reserved for the person corrector")
            if len(d) != len(self.position):
                raise ValueError(f"direction of key {k!r} has {len(d)} values, not {len(position)}")
        self.step, self.directions = (
            float(step),
            {k: np.asarray(d, np.float32) for k, d in directions.items()},
        )
        self.help = "/".join(list(directions)[:4]) + " move the target"
        self.reset()

    def reset(self) -> None:
        self.direction = np.zeros(len(self.position), np.float32)

    def stop(self) -> None:
        self.reset()

    def press(self, key: str) -> bool:
        if key not in self.directions:
            return False
        self.direction = self.directions[key].copy()
        return True

    def action(self, state: np.ndarray | None) -> np.ndarray:
        if state is None:
            raise ValueError(
                "this teleop moves a target from the current position, which it reads from "
                "observation.state: the deployed policy must read the state"
            )
        here = np.asarray(state, np.float32).reshape(-1)[list(self.position)]
        return np.clip(here + self.step * self.direction, self.low, self.high).astype(np.float32)

    def status(self) -> str:
        if not self.direction.any():
            return "holding position"
        return "moving " + ",".join(f"{v:+.0f}" for v in self.direction)


#: key pairs (plus, minus) of the generic teleop's dimensions 0..5
BOX_KEYS = (("d", "a"), ("w", "s"), ("r", "f"), ("t", "g"), ("y", "h"), ("u", "j"))


def box_teleop(low: tuple[float, ...], high: tuple[float, ...], speed: float = 1.0) -> AxisTeleop:
    """A teleop for any box action space: dimension ``i < 6`` driven by the key pair
    :data:`BOX_KEYS`\\ ``[i]`` (dimension 0 also by the right/left arrows, 1 by up/down);
    further dimensions stay at the middle of their range."""
    axes = []
    for i, (plus, minus) in enumerate(BOX_KEYS[: len(low)]):
        extra = {0: (("right",), ("left",)), 1: (("up",), ("down",))}.get(i, ((), ()))
        axes.append(Axis(i, (plus, *extra[0]), (minus, *extra[1])))
    return AxisTeleop(tuple(low), tuple(high), tuple(axes), speed=speed)


def pusher_teleop(speed: float = 1.0) -> AxisTeleop:
    """The tabletop's pusher (actions: a velocity in ``[-1, 1]^2``, x right, y towards the far
    edge): W/A/S/D or the arrows, at ``speed``."""
    return AxisTeleop(
        (-1.0, -1.0),
        (1.0, 1.0),
        (Axis(0, ("d", "right"), ("a", "left"), "x"), Axis(1, ("w", "up"), ("s", "down"), "y")),
        speed=speed,
        rest=(0.0, 0.0),
    )


__all__ = [
    "RESERVED",
    "Axis",
    "AxisTeleop",
    "BOX_KEYS",
    "TargetTeleop",
    "Teleop",
    "Toggle",
    "box_teleop",
    "pusher_teleop",
]
