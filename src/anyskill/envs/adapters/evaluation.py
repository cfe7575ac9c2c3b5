"""One evaluation loop for every host-side (numpy) adapter.

The contract an adapter env follows (all of ``anyskill.envs.adapters`` do):

* Gymnasium's API: ``reset(seed=..., options=...) -> (obs, info)``,
  ``step(action) -> (obs, reward, terminated, truncated, info)``, an ``action_space`` (a
  ``Box``: actions are checked against its shape and clipped to its bounds).
* Observations are dicts named like LeRobot features: ``"observation.state"`` (float32
  vector), optionally ``"observation.goal"`` (float32, goal-conditioned tasks),
  ``"observation.environment_state"`` (float32, object state when the env exposes it
  separately) and ``"observation.images.<camera>"`` (uint8 ``[H, W, 3]``).
* ``info["is_success"]`` (bool) on every step; ``info["task"]`` (str) when the task has a
  language instruction. The instruction travels in ``info`` rather than the observation
  space because Gymnasium's vector envs and checkers handle numeric spaces only; the policy
  still sees it as ``obs["task"]`` (:func:`policy_observation`).

A host policy is any callable ``policy(obs) -> action`` for one env and one step; any
:class:`~anyskill.policies.base.Policy` works too (its fields are mapped from the LeRobot
names, see :mod:`anyskill.rollout.envs`). :func:`evaluate` runs either through
:func:`anyskill.rollout.rollout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from anyskill.policies.base import GOAL, IMAGE, PROMPT, STATE, Batch, ChunkPolicy, PolicySpec

#: What a host policy receives: LeRobot-named arrays, plus ``"task"`` when there is one.
HostObs = dict[str, np.ndarray | str]
#: A policy for one env: ``policy(obs) -> action`` (a numpy array of the env's action shape).
HostPolicy = Callable[[HostObs], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """One evaluation episode."""

    #: ``info["is_success"]`` on the episode's last step
    success: bool
    #: sum of the env's rewards over the episode
    episode_return: float
    #: number of steps taken
    length: int


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Episodes of one evaluation and their averages."""

    #: every episode, in the order they ran
    episodes: tuple[EpisodeResult, ...]

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes]))

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.episode_return for e in self.episodes]))

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes]))

    def as_dict(self) -> dict[str, Any]:
        """Averages and the per-episode list, JSON-serialisable."""
        return {
            "success_rate": self.success_rate,
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
            "num_episodes": len(self.episodes),
            "episodes": [dataclasses.asdict(e) for e in self.episodes],
        }


def policy_observation(obs: Mapping[str, Any], info: Mapping[str, Any]) -> HostObs:
    """The dict a host policy sees: the env's observation plus ``"task"`` from ``info``."""
    out: HostObs = dict(obs)
    if "task" in info:
        out["task"] = str(info["task"])
    return out


def check_action(action: Any, action_space: Any) -> np.ndarray:
    """``action`` as an array of ``action_space``'s shape and dtype, clipped to its bounds.

    Clipping follows OGBench's evaluation protocol (policies may overshoot [-1, 1]); a wrong
    shape or a non-finite value is a bug in the policy and raises.
    """
    shape = tuple(action_space.shape)
    arr = np.asarray(action)
    if arr.shape != shape:
        raise ValueError(f"policy returned an action of shape {arr.shape}; the env expects {shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError(f"policy returned a non-finite or non-numeric action: {arr!r}")
    dtype = getattr(action_space, "dtype", np.float32)
    if hasattr(action_space, "low") and hasattr(action_space, "high"):
        arr = np.clip(arr, action_space.low, action_space.high)
    return arr.astype(dtype, copy=False)


class HostFnPolicy(ChunkPolicy):
    """A host policy ``fn(obs) -> action`` (one env, one step) as a
    :class:`~anyskill.policies.base.Policy` that reads the env's own fields — its
    LeRobot-named observation and ``"task"`` when the env gives one (``offered``: the
    fields a :class:`~anyskill.rollout.HostBatchEnv` offers) — and returns chunks of one
    action."""

    pad_batches = False

    def __init__(self, fn: HostPolicy, offered: Mapping[str, Any], action_shape: tuple[int, ...]):
        aliases = (STATE, GOAL, IMAGE, PROMPT)
        inputs = tuple(spec for name, spec in offered.items() if name not in aliases)
        self.fn = fn
        self.spec = PolicySpec(
            inputs,
            action_dim=int(np.prod(action_shape)),
            action_horizon=1,
            control_hz=10.0,
            name=getattr(fn, "__name__", type(fn).__name__),
        )

    def act(self, obs: Batch, key: Any = None) -> np.ndarray:
        n = len(next(iter(obs.values())))
        rows = [{k: v[i] for k, v in obs.items()} for i in range(n)]
        return np.stack([np.asarray(self.fn(row)) for row in rows])[:, None]


def evaluate(
    policy: HostPolicy | Any,
    env: Any,
    episodes: int,
    seed: int = 0,
    *,
    reset_options: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
) -> EvalResult:
    """Run ``policy`` for ``episodes`` episodes of an adapter env and collect the results.

    Args:
      policy: ``policy(obs) -> action`` for one env (see :data:`HostPolicy`), or a
        :class:`~anyskill.policies.base.Policy` (acting with keys drawn from ``seed``).
      env: an adapter env (see the module docstring), e.g.
        :class:`~anyskill.envs.adapters.gymnasium.GymnasiumEnv`.
      episodes: number of episodes (>= 1).
      seed: episode ``i`` starts with ``env.reset(seed=seed + i)``, so each episode is
        reproducible on its own, whatever the length of the others.
      reset_options: passed to every ``reset`` (e.g. OGBench's ``task_id``).
      max_steps: end an episode after this many steps even if the env has not (``None``: the
        env's own time limit decides).

    Returns:
      An :class:`EvalResult`; an episode's success is ``info["is_success"]`` on its last step,
      the convention of OGBench's and LeRobot's evaluations.
    """
    import jax

    from anyskill.policies.base import Policy
    from anyskill.rollout import HostBatchEnv, rollout

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    benv = HostBatchEnv(env, seed, reset_options, max_steps)
    if not (isinstance(policy, Policy) and isinstance(getattr(policy, "spec", None), PolicySpec)):
        policy = HostFnPolicy(policy, benv.offered(), tuple(env.action_space.shape))
    ep = rollout(benv, policy, jax.random.key(seed), num_envs=episodes)
    results = []
    for i in range(episodes):
        n = int(ep.length[i])
        episode_return = 0.0
        for r in ep.reward[i, :n]:  # summed in order, as the env reported them
            episode_return += float(r)
        results.append(EpisodeResult(bool(ep.success[i]), episode_return, n))
    return EvalResult(tuple(results))
