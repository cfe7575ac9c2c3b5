"""Scripted experts of the adapter envs, as policies of their observations.

An adapter env (gym-pusht, gym-hil-panda) runs on the host and exposes no simulator state to JAX,
so its expert reads what any policy reads — ``observation/state`` — and is a
:class:`~anyskill.policies.base.Policy` (one action per chunk): it records demonstrations
through :func:`anyskill.rollout.rollout` and acts as a corrector's actor on the steps it
takes over. Nothing here imports a simulator: the experts are numpy functions of the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from anyskill.policies.base import STATE, Batch, ChunkPolicy, InputSpec, PolicySpec

#: ``action_fn(state) -> action`` for one env's ``observation.state``
ActionFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class ScriptedExpert(ChunkPolicy):
    """``action_fn`` of each row's state, with Gaussian noise of ``noise`` times half the
    action range (drawn from the act key: the same key gives the same actions), clipped to
    ``[low, high]``; chunks of one action."""

    action_fn: ActionFn
    """One env's ``observation.state`` -> its action (env units)."""
    state_dim: int
    low: tuple[float, ...]
    """Lower bounds of the action (the env's ``action_space.low``)."""
    high: tuple[float, ...]
    """Upper bounds of the action."""
    noise: float = 0.0
    """Action noise, as a fraction of half the action range."""
    name: str = "scripted-expert"
    control_hz: float = 10.0

    pad_batches = False

    def __post_init__(self):
        if len(self.low) != len(self.high):
            raise ValueError(f"action bounds differ in size: {self.low} vs {self.high}")
        if not self.noise >= 0:
            raise ValueError(f"expert noise must be >= 0, got {self.noise}")
        spec = PolicySpec(
            (InputSpec(STATE, (self.state_dim,), "float32", "the env's observation.state"),),
            action_dim=len(self.low),
            action_horizon=1,
            control_hz=self.control_hz,
            name=f"{self.name}(noise={self.noise})",
        )
        object.__setattr__(self, "spec", spec)

    def act(self, obs: Batch, key: Any) -> np.ndarray:
        states = np.asarray(obs[STATE], np.float32)
        actions = np.stack([np.asarray(self.action_fn(s), np.float32) for s in states])
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        if self.noise > 0:
            import jax

            n = len(states)
            keys = key if getattr(key, "ndim", 0) == 1 and len(key) == n else None
            if keys is None:
                z = jax.random.normal(key, actions.shape)
            else:  # one key per env (EpisodeKeys)
                z = jax.vmap(lambda k: jax.random.normal(k, actions.shape[1:]))(keys)
            actions = actions + self.noise * (high - low) / 2 * np.asarray(z, np.float32)
        return np.clip(actions, low, high)[:, None]


# ---- gym-pusht ------------------------------------------------------------------------------

#: PushT's goal pose of the T (gym-pusht's ``goal_pose``): centre (256, 256), angle π/4
PUSHT_GOAL = np.array([256.0, 256.0])
PUSHT_GOAL_ANGLE = np.pi / 4
#: the T's centre of mass in its body frame (gym-pusht's add_tee: bar 120x30, stem 30x90)
PUSHT_COM = np.array([0.0, 45.0])


def _rot(a: float, v: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def pusht_action(state: np.ndarray) -> np.ndarray:
    """PushT's state ``[agent_x, agent_y, block_x, block_y, block_angle]`` -> the agent's
    target position: push the T's centre of mass onto the goal's (its angle is left as it
    comes) — circle round the block at a safe radius until behind it, then push through the
    centre of mass. Final coverage ~0.25 on average (random actions: ~0)."""
    agent, pos, angle = state[:2], state[2:4], state[4]
    c = pos + _rot(angle, PUSHT_COM)
    d = PUSHT_GOAL + _rot(PUSHT_GOAL_ANGLE, PUSHT_COM) - c
    dist = np.linalg.norm(d)
    a = agent - c
    r = max(np.linalg.norm(a), 1e-6)
    if dist < 4:  # there: back off
        return np.clip(c + 130 * a / r, 15, 497).astype(np.float32)
    u = d / dist
    s = a @ u
    if s < -70 and np.linalg.norm(a - s * u) < 20:  # behind the block, on the line: push
        target = c + u * min(40.0, dist)
    else:
        ah, behind = a / r, -u
        off = np.arctan2(ah[0] * behind[1] - ah[1] * behind[0], ah @ behind)
        if abs(off) < np.radians(25):
            target = c - u * 95
        else:  # orbit towards the point behind the block, 40 degrees at a time
            target = c + 115 * _rot(np.sign(off) * min(abs(off), np.radians(40)), ah)
    return np.clip(target, 15, 497).astype(np.float32)


def pusht_expert(noise: float = 0.0) -> ScriptedExpert:
    """The PushT expert (:func:`pusht_action`) for gym-pusht's ``state`` observations;
    actions are PushT's agent targets in pixels, ``[0, 512]^2``."""
    return ScriptedExpert(pusht_action, 5, (0.0, 0.0), (512.0, 512.0), noise, "pusht-expert")


# ---- gym-hil Panda pick-cube ------------------------------------------------------------
# gym-hil-panda's observation.state (21 values): joint positions (7), joint velocities (7),
# the gripper command (0 open .. 255 closed), the pinch point between the fingers (xyz, m),
# then the cube's centre (xyz, m). Actions (gym-hil's EEActionWrapper): [dx, dy, dz] in
# [-1, 1] steps of PANDA_EE_STEP metres of the end-effector target, and a gripper command in
# [0, 2] (0 opens, 1 keeps, 2 closes; each step moves the grip by ``command - 1`` of its range).
_GRIP, _PINCH, _CUBE = 14, slice(15, 18), slice(18, 21)
#: metres per unit of end-effector action (lerobot_sim.GYM_HIL_EE_STEP; not imported: no
#: simulator here)
PANDA_EE_STEP = 0.025
#: the gripper command that means fully closed (gym-hil's MAX_GRIPPER_COMMAND)
PANDA_GRIPPER_CLOSED = 255.0
#: the cube's centre at rest (half its 4 cm side) and gym-hil's success: lifted by > 10 cm
PANDA_CUBE_REST_Z = 0.02
PANDA_LIFT = 0.1
#: approach height of the pinch point above the cube's centre before descending
PANDA_HOVER = 0.05


def _steps(delta: np.ndarray) -> np.ndarray:
    """A displacement in metres as end-effector action steps (the target moves by at most one
    step per axis: gym-hil's controller follows within the 0.1 s control period)."""
    return np.clip(np.asarray(delta) / PANDA_EE_STEP, -1.0, 1.0)


def panda_action(state: np.ndarray) -> np.ndarray:
    """gym-hil-panda's state -> a scripted pick, each phase read off the state: with the
    gripper open, bring the pinch point over the cube at ``PANDA_HOVER`` (rising first when
    low beside it, not to sweep it away), descend onto the cube's centre and close; with the
    gripper closed, lift while the cube is between the fingers, otherwise open and rise to
    start over (a lost grasp, or a policy's stray closing when it takes over)."""
    pinch, cube = state[_PINCH], state[_CUBE]
    closed = state[_GRIP] > PANDA_GRIPPER_CLOSED / 2
    d = cube - pinch
    off = float(np.linalg.norm(d[:2]))
    up = np.array([0.0, 0.0, 1.0])
    if closed:
        held = off < 0.02 and abs(d[2]) < 0.03
        return np.array([*up, 2.0 if held else 0.0], np.float32)
    above = -d[2]  # height of the pinch point over the cube's centre
    # hysteresis: once descending, a small drift is corrected on the way down
    if off > (0.015 if above < PANDA_HOVER - 0.01 else 0.008):
        if above < 0.03 and off > 0.02:  # low and beside the cube: rise before moving over
            return np.array([*up, 0.0], np.float32)
        return np.array([*_steps(d + [0.0, 0.0, PANDA_HOVER]), 0.0], np.float32)
    if above > 0.005:  # over the cube: descend
        return np.array([*_steps(d), 0.0], np.float32)
    return np.array([*_steps([d[0], d[1], 0.0]), 2.0], np.float32)  # around it: close


def panda_goal_distance(state: np.ndarray) -> float:
    """How far gym-hil-panda's episode is from success, in metres: the pinch point's distance
    to the cube plus the height the cube still has to rise (what the stall trigger watches)."""
    cube = state[_CUBE]
    rest = max(PANDA_CUBE_REST_Z + PANDA_LIFT - float(cube[2]), 0.0)
    return float(np.linalg.norm(cube - state[_PINCH])) + rest


def panda_expert(noise: float = 0.0) -> ScriptedExpert:
    """The Panda pick-cube expert (:func:`panda_action`) for gym-hil-panda's state (21
    values); actions are gym-hil's ``[dx, dy, dz, gripper]`` in ``[-1, 1]^3 x [0, 2]``."""
    low, high = (-1.0, -1.0, -1.0, 0.0), (1.0, 1.0, 1.0, 2.0)
    return ScriptedExpert(panda_action, 21, low, high, noise, "panda-expert")


__all__ = [
    "ScriptedExpert",
    "panda_action",
    "panda_expert",
    "panda_goal_distance",
    "pusht_action",
    "pusht_expert",
]
