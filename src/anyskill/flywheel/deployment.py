"""Every place the flywheel runs a policy: the run's env, its policies and the one rollout.

* The env is looked up by name (:func:`anyskill.envs.adapters.make_env`): a tabletop task mix
  (pure JAX, :class:`~anyskill.rollout.JaxBatchEnv`, compiled once per process) or an adapter
  env such as gym-pusht (host, :class:`~anyskill.rollout.HostBatchEnv`, one episode at a
  time; episode ``i`` of a purpose ``p`` starts from ``reset(seed=crc32("seed/p") + i)``, so
  every method of a round meets the same episodes).
* A method's policy is the run's VLA with that method's weights
  (:meth:`~anyskill.algos.vla.policy.VLAPolicy.with_weights`); RECAP's is wrapped in
  :class:`~anyskill.policies.wrappers.IndicatorConditioned` (the run's ``--indicator`` and
  guidance β), and test-time selection in :class:`~anyskill.policies.wrappers.BestOfN` with
  RECAP's value function as the scorer.
* Evaluation is :func:`anyskill.rollout.rollout` without a corrector; deployment is
  :func:`anyskill.flywheel.deploy.deploy` with the corrector on call — the env's scripted
  expert (the tabletop's, or the adapter env's as a policy of its observations) or a person.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anyskill.algos.recap.policy import ValueScorer
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.policy import VLAPolicy
from anyskill.envs.adapters import ADAPTER_ENVS, make_env
from anyskill.envs.teleop import Teleop, box_teleop, pusher_teleop
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.deploy import CorrectorConfig, deploy
from anyskill.policies.base import Batch, Policy
from anyskill.policies.wrappers import BestOfN, IndicatorConditioned
from anyskill.rollout import Episodes, HostBatchEnv, JaxBatchEnv, rollout

# ---- the run's env ----------------------------------------------------------------------------


def purpose_seed(seed: int, purpose: str) -> int:
    """The first reset seed of an adapter env's episodes of ``purpose`` in a run of ``seed``
    (episode ``i`` resets with this plus ``i``)."""
    return zlib.crc32(f"{seed}/{purpose}".encode())


def method_policy(
    cfg: FlywheelConfig, base: VLAPolicy, params: Any, recap: bool, beta: float | None = None
) -> Policy:
    """The run's VLA ``base`` with weights ``params``; ``recap``: asked for "advantage:
    positive" (the run's ``--indicator``) with guidance ``beta`` (default ``--beta``). What
    a simulated deployment runs and what a fleet's robot worker serves."""
    policy: Policy = base.with_weights(params)
    if recap:
        kind = "prompt" if cfg.indicator == "prompt" else "input"
        policy = IndicatorConditioned(policy, kind, cfg.beta if beta is None else beta)
    return policy


@dataclasses.dataclass
class RunEnv:
    """The run's env as the rollouts run it, its horizon, rate and scripted expert."""

    cfg: FlywheelConfig
    env: Any
    """A pure-JAX env (the tabletop), an adapter env (host, Gymnasium API), or with
    ``--env robot`` the run's demonstrations (a :class:`~anyskill.data.reader.Dataset`:
    no simulator, only what the robots' data say)."""

    def __post_init__(self):
        self.adapter = ADAPTER_ENVS.get(self.cfg.env)
        self.robot = not self.cfg.simulated
        # one batch env for the process: its compiled programs serve every rollout
        jax_env = self.adapter is None and not self.robot
        self._jax_env = JaxBatchEnv(self.env, self.cfg.max_steps) if jax_env else None
        self._robot_horizon = None
        if self.robot:  # the demonstrations' alone: the same whether or not the run resumed
            ep = self.env.episodes
            demos = ep.length[ep.source == "demonstration"]
            self._robot_horizon = int(
                self.cfg.max_steps or np.max(demos if len(demos) else ep.length)
            )

    @classmethod
    def open(cls, cfg: FlywheelConfig, image_size: int, data: Path | None = None) -> RunEnv:
        """The env ``cfg.env`` names (a tabletop task mix renders at ``image_size``); with
        ``--env robot`` the dataset at ``data`` (the run's demonstrations) stands in."""
        if not cfg.simulated:
            from anyskill.data.reader import Dataset

            return cls(cfg, Dataset.open(data if data is not None else cfg.demo_data))
        if cfg.env in ADAPTER_ENVS:
            return cls(cfg, make_env(cfg.env))
        return cls(cfg, make_env(cfg.env, image_size=image_size))

    @property
    def horizon(self) -> int:
        """Steps per episode: the rollouts' time limit and the value targets' time scale
        (``--env robot``: ``--max-steps``, else the longest demonstration)."""
        if self.robot:
            return self._robot_horizon
        if self.adapter is None:
            return self._jax_env.horizon
        return int(self.cfg.max_steps or self.adapter.max_steps)

    @property
    def control_hz(self) -> float:
        """Control steps per second (``--env robot``: the demonstrations' fps)."""
        if self.robot:
            return float(self.env.info.fps)
        if self.adapter is None:
            return float(self.env.control_hz)
        return float(self.adapter.control_hz)

    @property
    def has_camera(self) -> bool:
        """The env draws frames for videos (the tabletop renders at any size)."""
        if self.robot or self.adapter is not None:
            return False
        return callable(getattr(self.env, "render_image", None))

    def batch_env(self, purpose: str) -> JaxBatchEnv | HostBatchEnv:
        """The env as the rollout runs it; an adapter env's episodes start from seeds of
        ``purpose`` (e.g. ``"collect-r2"``), the same for every method asked with it."""
        if self.robot:
            raise ValueError(
                f"--env robot has no simulator to run {purpose!r} in: its episodes come from "
                "the robots (--deploy robots)"
            )
        if self.adapter is None:
            return self._jax_env
        seed = purpose_seed(self.cfg.seed, purpose)
        benv = HostBatchEnv(self.env, seed=seed, max_steps=self.horizon)
        benv.name = self.cfg.env
        return benv

    def expert(self, noise: float) -> Policy:
        """The env's scripted expert as a policy (it records the demonstrations)."""
        if self.robot:
            raise ValueError("--env robot has no scripted expert")
        if self.adapter is None:
            from anyskill.rollout import expert_policy

            return expert_policy(self.env, noise)
        if self.adapter.expert is None:
            raise ValueError(f"--env {self.cfg.env} has no scripted expert")
        return self.adapter.expert(noise)

    def teleop(self) -> Teleop:
        """How a person's keys drive this env (``--corrector.kind human``): the tabletop's
        pusher, the adapter env's declared teleop, or the generic one over its action box."""
        if self.robot:
            raise ValueError("--env robot: people take over on the robots, not here")
        if self.adapter is None:
            return pusher_teleop()
        if self.adapter.teleop is not None:
            return self.adapter.teleop()
        space = self.env.action_space
        return box_teleop(tuple(np.ravel(space.low)), tuple(np.ravel(space.high)))

    def corrector_actor(self, corrector: CorrectorConfig) -> Any:
        """Who takes over with ``--corrector.kind expert``: None for the tabletop (the
        deployment's own ScriptedExpert of the simulator state), the adapter env's expert (a
        policy of its observations) otherwise."""
        if self.adapter is None or corrector.kind != "expert":
            return None
        return self.expert(corrector.noise)


# ---- rollouts of the run's policies ---------------------------------------------------------------


@dataclasses.dataclass
class Deployment:
    """The run's policies and every rollout of them."""

    cfg: FlywheelConfig
    env: RunEnv
    base: VLAPolicy
    """The run's policy architecture and normaliser (with the starting policy's weights):
    every method's policy is this one with its weights."""
    vf: ValueFunction
    human: Any = None
    """With ``--corrector.kind human``: the person (a ``flywheel.human.HumanCorrector``);
    None: the terminal's keyboard."""

    def __post_init__(self):
        vf, norm = self.vf, self.base.normalizer
        self._value = jax.jit(lambda vp, o: vf.expected(vp, o.replace(state=norm.state(o.state))))

    # ---- the policies ---------------------------------------------------------------------

    def policy(
        self,
        params: Any,
        recap: bool,
        beta: float | None = None,
        best_of: int = 1,
        value_params: Any = None,
    ) -> Policy:
        """The run's VLA with weights ``params``; ``recap``: asked for "advantage:
        positive" with guidance ``beta`` (default ``--beta``); ``best_of > 1``: the chunk
        the value function ``value_params`` ranks highest of that many."""
        policy = method_policy(self.cfg, self.base, params, recap, beta)
        if best_of > 1:
            policy = BestOfN(policy, ValueScorer(self.vf, value_params, self.base), best_of)
        return policy

    def state_value(self, value_params: Any):
        """``value(obs) -> [B]``: ``V(s)`` of a batch of observations (the value trigger),
        read as the policy reads them with the plain instruction, as the value function was
        trained."""

        def value(obs: Batch) -> np.ndarray:
            return np.asarray(self._value(value_params, self.base.to_obs(obs)))

        return value

    # ---- rollouts -------------------------------------------------------------------------

    def evaluate(self, policy: Policy, key: jax.Array, episodes: int, purpose: str) -> Episodes:
        """``episodes`` closed-loop episodes of ``policy``, no corrector."""
        return rollout(
            self.env.batch_env(purpose),
            policy,
            key,
            num_envs=episodes,
            replan_every=self.cfg.replan_every,
        )

    def deploy(
        self,
        policy: Policy,
        key: jax.Array,
        num_envs: int,
        corrector: CorrectorConfig,
        purpose: str,
        value_params: Any = None,
        record_images: int = 0,
        skip: int = 0,
        on_episode=None,
    ) -> Episodes | None:
        """``num_envs`` episodes of ``policy`` with ``corrector`` on call (see
        :func:`anyskill.flywheel.deploy.deploy`); ``value_params`` enable the value trigger."""
        value = None
        if corrector.trigger == "value" and value_params is not None:
            value = self.state_value(value_params)
        return deploy(
            self.env.batch_env(purpose),
            policy,
            key,
            num_envs=num_envs,
            replan_every=self.cfg.replan_every,
            corrector=corrector,
            value=value,
            record_images=record_images,
            person=self.human,
            teleop=self.env.teleop() if corrector.kind == "human" else None,
            expert=self.env.corrector_actor(corrector),
            skip=skip,
            on_episode=on_episode,
        )

    def rollout_video(self, policy: Policy, path: Path, episodes: int = 4, size: int = 96) -> str:
        """Write a GIF of ``episodes`` rollouts of ``policy`` side by side to ``path``;
        returns its caption (each episode's instruction and outcome, left to right)."""
        from anyskill.envs.render import save_video

        key = jax.random.fold_in(jax.random.key(self.cfg.seed), 777)
        # a corrector that watches no env: the episodes a watched deployment would start
        ep = self.deploy(policy, key, episodes, CorrectorConfig(kind="none"), "video", None, size)
        frames = ep.images  # [B, T, S, S, 3]
        t = int(ep.length.max())
        for i in range(episodes):  # hold each episode's last frame
            frames[i, ep.length[i] :] = frames[i, max(ep.length[i] - 1, 0)]
            if ep.success[i]:  # a green border once it succeeded
                frames[i, ep.length[i] :, :3] = (40, 200, 60)
                frames[i, ep.length[i] :, -3:] = (40, 200, 60)
        tiled = np.concatenate(list(frames[:, : t + 5]), axis=2)
        save_video(tiled, path, fps=self.env.control_hz)
        return "Left to right: " + "; ".join(
            f"“{text}” — {'success' if ok else 'failure'} after {n} steps"
            for text, ok, n in zip(ep.task, ep.success, ep.length, strict=True)
        )
