"""A trained CRL run (``anyskill train crl``) as a deployable
:class:`~anyskill.policies.base.Policy`: the goal-conditioned actor ``pi(a | s, g)``.

Inputs: ``observation/state`` float32 ``[obs_dim]`` (the env's observation vector) and
``observation/goal`` float32 ``[goal_dim]`` (the commanded goal). Chunks hold **one** action
(``action_horizon = 1``): the actor is reactive, trained and evaluated choosing every action
from the current observation, so repeating one decision open loop for k steps would deploy a
different (and worse) controller than the one trained. A client executes each reply and asks
again. By default the action is the actor's deterministic mean ``tanh(mu(s, g))``, as in
``anyskill eval``; ``deterministic=False`` samples the tanh-Gaussian as in training.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from anyskill.algos.crl.run import load_trained
from anyskill.policies.base import GOAL, STATE, Batch, ChunkPolicy, InputSpec, PolicySpec
from anyskill.policies.registry import read_config_json, register_loader


class CRLPolicy(ChunkPolicy):
    """``act(batch, key)`` -> ``[B, 1, action_dim]`` actions of a CRL run's actor."""

    def __init__(self, run_dir: Path | str, deterministic: bool = True, seed: int = 0):
        trainer, state, meta = load_trained(Path(run_dir))
        # keep the networks only: the training state also holds the replay buffer and envs
        self.trainer, self.params, self.meta = trainer, state.params, meta
        self.deterministic = bool(deterministic)
        env = trainer.eval_env
        self.spec = PolicySpec(
            (
                InputSpec(STATE, (env.obs_dim,), "float32", f"{env.name} observation"),
                InputSpec(GOAL, (env.goal_dim,), "float32", f"{env.name} goal"),
            ),
            action_dim=env.action_dim,
            action_horizon=1,
            control_hz=float(env.control_hz),
            name=f"anyskill-crl-{trainer.config.env}",
        )
        self.infer_seed = seed

        def act(params, key, obs, goal):
            action = trainer.act(params, key, obs, goal, deterministic=self.deterministic)
            return action[:, None]  # [B, 1, A]: a chunk of one action

        self._fn = jax.jit(act)

    def act(self, obs: Batch, key) -> np.ndarray:
        state = np.asarray(obs[STATE], np.float32)
        goal = np.asarray(obs[GOAL], np.float32)
        return np.asarray(self._fn(self.params, key, state, goal), np.float32)


def is_crl_run(path: Path) -> bool:
    """A run directory of ``anyskill train crl``: its ``config.json`` has CRL's networks."""
    d = read_config_json(path)
    return d is not None and {"env", "critic_depth", "actor_depth", "repr_dim"} <= set(d)


register_loader(
    "CRL run (anyskill train crl)", is_crl_run, CRLPolicy, options=("deterministic", "seed")
)
