"""Acting things that read the simulator's privileged state, as policies.

A scripted expert, a random or a zero controller act from the env's :class:`State` (the
expert needs object poses and the task row no camera or instruction gives): they are
:class:`StatePolicy` objects whose spec declares the privileged field
:data:`~anyskill.rollout.envs.ENV_STATE`, which only a pure-JAX env (``JaxBatchEnv``)
offers. They plan one action at a time (``action_horizon`` 1), and because their
``step_fn`` is a small pure JAX function, the rollout runs it *inside* the jitted scan that
executes the steps, as one program per wave of envs — the same actions, drawn from the same
keys, as calling ``act`` step by step, at the cost of one compiled scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.policies.base import Batch, ChunkPolicy, PolicySpec
from anyskill.rollout.envs import ENV_STATE, ENV_STATE_SPEC

#: ``fn(state, key) -> action`` for one env
StepFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class StatePolicy(ChunkPolicy):
    """A policy of the simulator's state: ``step_fn(state, key) -> [action_dim]`` for one env.

    ``act(obs, key)`` -> ``[B, 1, action_dim]``: env ``i`` acts with ``split(key, B)[i]``, or
    with ``key[i]`` when ``key`` holds one key per env."""

    step_fn: StepFn
    """A pure JAX function of one env's ``State`` and a PRNG key (vmapped and jitted)."""
    action_dim: int
    control_hz: float
    name: str = "state-policy"

    pad_batches = False

    def __post_init__(self):
        spec = PolicySpec(
            inputs=(ENV_STATE_SPEC,),
            action_dim=int(self.action_dim),
            action_horizon=1,
            control_hz=float(self.control_hz),
            name=self.name,
        )
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "_act", jax.jit(jax.vmap(self.step_fn)))

    def act(self, obs: Batch, key: Any) -> np.ndarray:
        state = obs[ENV_STATE]
        n = jax.tree.leaves(state)[0].shape[0]
        keys = key if jnp.ndim(key) == 1 and len(key) == n else jax.random.split(key, n)
        return np.asarray(self._act(state, keys), np.float32)[:, None]


def expert_policy(env: Any, noise: float = 0.1) -> StatePolicy:
    """The tabletop scripted expert (:class:`~anyskill.envs.tabletop.ScriptedExpert`)."""
    from anyskill.envs.tabletop import ScriptedExpert, Tabletop

    if not isinstance(env, Tabletop):
        raise ValueError(
            f"{getattr(env, 'name', env)} has no scripted expert (only tabletop tasks do)"
        )
    return StatePolicy(
        ScriptedExpert(env, noise=noise),
        env.action_dim,
        env.control_hz,
        f"scripted-expert(noise={noise})",
    )


def random_policy(env: Any) -> StatePolicy:
    """Uniform random actions in [-1, 1]."""
    return StatePolicy(
        lambda state, key: env.random_actions(key), env.action_dim, env.control_hz, "random"
    )


def zero_policy(env: Any) -> StatePolicy:
    """Zero actions (the robot holds still)."""
    return StatePolicy(
        lambda state, key: jnp.zeros(env.action_dim), env.action_dim, env.control_hz, "zero"
    )
