"""Bring your own environment: adapters between anyskill and other simulators' APIs.

* :mod:`~anyskill.envs.adapters.gymnasium` — anyskill envs as ``gymnasium.Env`` /
  ``gymnasium.vector.VectorEnv``, registrable as ``anyskill/<name>-v0``.
* :mod:`~anyskill.envs.adapters.ogbench` — OGBench's goal-conditioned tasks under OGBench's
  own evaluation protocol (5 evaluation tasks per env).
* :mod:`~anyskill.envs.adapters.lerobot_sim` — LeRobot's simulators gym-pusht (PushT) and
  gym-hil (Panda pick-cube).
* :mod:`~anyskill.envs.adapters.evaluation` — the observation convention (LeRobot feature
  names), the host policy type and one :func:`evaluate` shared by all of them.

* :mod:`~anyskill.envs.adapters.experts` — scripted experts of adapter envs, as policies.

Adapter envs are looked up by name in :data:`ADAPTER_ENVS` (``gym-pusht``, ``gym-hil-panda``);
:func:`make_env` builds any env by name — a registered pure-JAX env (``anyskill.envs.REGISTRY``)
or an adapter env — so ``--env`` of the flywheel and of ``anyskill eval policy`` takes both.

The simulators are optional (``pip install 'anyskill[sim]'``) and imported only when an
adapter module is (or an adapter env is built): ``import anyskill.envs.adapters`` itself
needs nothing but numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from anyskill.envs.adapters.evaluation import (
    EpisodeResult,
    EvalResult,
    HostObs,
    HostPolicy,
    evaluate,
    policy_observation,
)


@dataclasses.dataclass(frozen=True)
class AdapterEnv:
    """A host (Gymnasium) env in the adapters' convention (LeRobot feature names,
    ``info["is_success"]``, ``info["task"]``), by name."""

    name: str
    make: Callable[[], Any]
    """Builds the env (imports its simulator; a missing one raises ImportError naming the
    package to install)."""
    summary: str
    """One line for listings."""
    max_steps: int
    """Steps per episode (the env's own time limit): the horizon of rollouts and of the
    value targets."""
    expert: Callable[[float], Any] | None = None
    """``expert(noise)`` -> the scripted expert as a Policy of the env's observations, when
    the env has one (it records demonstrations and corrects)."""
    control_hz: float = 10.0
    """Control steps per second (PushT and gym-hil step at 10 Hz)."""
    teleop: Callable[[], Any] | None = None
    """``teleop()`` -> how a person's keys drive the env (an
    :class:`anyskill.envs.teleop.Teleop`); None: the generic teleop over the action box."""


#: adapter env name -> :class:`AdapterEnv`; names are what ``--env`` accepts
ADAPTER_ENVS: dict[str, AdapterEnv] = {}


def register_adapter_env(entry: AdapterEnv) -> AdapterEnv:
    """Add ``entry`` to :data:`ADAPTER_ENVS` (a name taken by a JAX env or another adapter
    is refused)."""
    from anyskill import envs

    if entry.name in ADAPTER_ENVS or entry.name in envs.REGISTRY:
        raise ValueError(f"env name {entry.name!r} is already registered")
    ADAPTER_ENVS[entry.name] = entry
    return entry


def env_names() -> list[str]:
    """Every env name ``--env`` accepts: the pure-JAX registry and the adapter envs."""
    from anyskill import envs

    return sorted([*envs.REGISTRY, *ADAPTER_ENVS])


def is_adapter_env(name: str) -> bool:
    return name in ADAPTER_ENVS


def make_env(name: str, **jax_overrides: Any) -> Any:
    """The env called ``name``: a pure-JAX :class:`~anyskill.envs.base.Env` (built with
    ``jax_overrides``, e.g. ``image_size``) or an adapter env (host, Gymnasium API). An
    unknown name is refused naming the known ones."""
    from anyskill import envs
    from anyskill.names import unknown_name

    if name in ADAPTER_ENVS:
        return ADAPTER_ENVS[name].make()
    if name not in envs.REGISTRY:
        raise unknown_name("env", name, env_names())
    return envs.make(name, **jax_overrides)


class _Wrapped:
    """An adapter env with its observations and ``info`` rewritten on the host: ``obs_fn``
    maps each observation, ``info_fn(obs, info)`` adds entries to each step's ``info`` (``obs``:
    the mapped observation)."""

    def __init__(self, env: Any, obs_fn: Callable | None = None, info_fn: Callable | None = None):
        self.env, self._obs, self._info = env, obs_fn, info_fn
        self.action_space = env.action_space
        self.metadata = getattr(env, "metadata", {})

    def __getattr__(self, name: str) -> Any:  # the wrapped env's other attributes
        if name == "env":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    def _out(self, obs: dict, info: dict) -> tuple[dict, dict]:
        obs = self._obs(obs) if self._obs else obs
        return obs, ({**info, **self._info(obs, info)} if self._info else info)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._out(*self.env.reset(seed=seed, options=options))

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._out(obs, info)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


def _state_with_environment(obs: dict) -> dict:
    """``observation.state`` followed by ``observation.environment_state`` (gym-hil's state
    mode keeps the cube's position apart; a policy reading the state alone would not see
    the cube)."""
    import numpy as np

    out = {k: v for k, v in obs.items() if k != "observation.environment_state"}
    parts = [obs["observation.state"], obs["observation.environment_state"]]
    out["observation.state"] = np.concatenate(parts).astype(np.float32)
    return out


def pusht_goal_distance(info: dict) -> dict:
    """``info["goal_distance"]``: how far PushT's T is from the target pose — its position
    error in units of the 512-pixel workspace plus its angle error over π (what the stall
    trigger watches: the scripted expert takes over a policy that stops making progress)."""
    import numpy as np

    if "block_pose" not in info or "goal_pose" not in info:
        return {}
    block, goal = np.asarray(info["block_pose"], float), np.asarray(info["goal_pose"], float)
    angle = (block[2] - goal[2] + np.pi) % (2 * np.pi) - np.pi
    return {"goal_distance": float(np.linalg.norm(block[:2] - goal[:2]) / 512 + abs(angle) / np.pi)}


def _pusht() -> Any:
    from anyskill.envs.adapters.lerobot_sim import make_pusht

    return _Wrapped(make_pusht("state"), info_fn=lambda obs, info: pusht_goal_distance(info))


def _pusht_expert(noise: float) -> Any:
    from anyskill.envs.adapters.experts import pusht_expert

    return pusht_expert(noise)


def _panda() -> Any:
    from anyskill.envs.adapters.lerobot_sim import make_gym_hil

    return _Wrapped(
        make_gym_hil(image_obs=False), obs_fn=_state_with_environment, info_fn=_panda_distance
    )


def _panda_distance(obs: dict, info: dict) -> dict:
    """``info["goal_distance"]``: the pinch point's distance to the cube plus the lift still
    missing, in metres (the stall trigger hands a policy that stops closing in to the expert)."""
    from anyskill.envs.adapters.experts import panda_goal_distance

    return {"goal_distance": panda_goal_distance(obs["observation.state"])}


def _panda_expert(noise: float) -> Any:
    from anyskill.envs.adapters.experts import panda_expert

    return panda_expert(noise)


def _pusht_teleop() -> Any:
    """PushT's action is the agent's target in pixels (y down on the screen): the keys move
    the target 25 pixels from where the agent is."""
    from anyskill.envs.teleop import TargetTeleop

    up, down, left, right = (0.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0)
    keys = {"w": up, "up": up, "s": down, "down": down}
    keys.update({"a": left, "left": left, "d": right, "right": right})
    return TargetTeleop((0, 1), (0.0, 0.0), (512.0, 512.0), 25.0, keys)


def _panda_teleop() -> Any:
    """gym-hil's Panda: end-effector steps ``[dx, dy, dz]`` in ``[-1, 1]`` at half speed
    (W/S, A/D or the arrows in the plane, R/F up and down) and the gripper command (2 closes,
    0 opens, 1 holds: it holds until G is pressed, which closes, and G again opens)."""
    from anyskill.envs.teleop import Axis, AxisTeleop, Toggle

    return AxisTeleop(
        (-1.0, -1.0, -1.0, 0.0),
        (1.0, 1.0, 1.0, 2.0),
        (
            Axis(0, ("d", "right"), ("a", "left"), "x"),
            Axis(1, ("w", "up"), ("s", "down"), "y"),
            Axis(2, ("r",), ("f",), "z"),
        ),
        (Toggle("g", 3, (0.0, 2.0), ("opening", "closing"), "gripper"),),
        speed=0.5,
        rest=(0.0, 0.0, 0.0, 1.0),
    )


register_adapter_env(
    AdapterEnv(
        "gym-pusht",
        _pusht,
        "gym-pusht's PushT (state: agent xy, T xy and angle; actions: agent target in pixels)",
        300,
        _pusht_expert,
        teleop=_pusht_teleop,
    )
)
register_adapter_env(
    AdapterEnv(
        "gym-hil-panda",
        _panda,
        "gym-hil's Panda pick-cube, state only (robot state + cube position; end-effector "
        "steps and gripper)",
        100,
        _panda_expert,  # gym-hil steps at 10 Hz (control_dt 0.1 s): the default control_hz
        teleop=_panda_teleop,
    )
)

__all__ = [
    "ADAPTER_ENVS",
    "AdapterEnv",
    "env_names",
    "is_adapter_env",
    "make_env",
    "register_adapter_env",
    "EpisodeResult",
    "EvalResult",
    "HostObs",
    "HostPolicy",
    "evaluate",
    "policy_observation",
]
