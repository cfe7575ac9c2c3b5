"""Configuration of contrastive RL (CRL) and its named presets."""

from __future__ import annotations

import dataclasses
from typing import Literal

from anyskill.distributed import DistributedConfig
from anyskill.envs import REGISTRY as ENV_REGISTRY
from anyskill.envs import eval_env_name
from anyskill.names import unknown_name
from anyskill.nets.residual import check_depth
from anyskill.rundir import ADDED_LATER


@dataclasses.dataclass(frozen=True)
class CRLConfig:
    """Contrastive RL with scalable residual networks (Eysenbach et al. 2022; Wang et al. 2025)."""

    env: str = "pointmaze-u"
    """Training environment (see `anyskill envs`)."""
    eval_env: str = ""
    """Evaluation environment; empty = the far-goal '-eval' variant of --env when there is one."""
    seed: int = 0
    """Random seed."""

    # ---- scale -------------------------------------------------------------------------
    total_env_steps: int = 2_000_000
    """Environment steps to train for (across all parallel envs)."""
    num_envs: int = 256
    """Parallel environments collecting experience (sharded over devices)."""
    unroll_length: int = 20
    """Steps each env takes per collection; one iteration collects num_envs * unroll_length."""
    updates_per_unroll: int = 8
    """Gradient steps per collection (the update-to-data ratio knob)."""
    batch_size: int = 256
    """Contrastive batch: every other row's goal is a negative (sharded over devices)."""
    replay_capacity: int = 500
    """Replay buffer length in steps per env (total transitions = this * num_envs)."""
    min_replay_steps: int = 100
    """Steps per env collected with the initial policy before learning starts."""
    num_epochs: int = 20
    """Evaluations (and checkpoints) during training; training is split evenly between them."""

    # ---- networks ----------------------------------------------------------------------
    critic_depth: int = 4
    """Dense layers inside residual blocks of each critic encoder (multiple of 4)."""
    actor_depth: int = 4
    """Dense layers inside residual blocks of the actor (multiple of 4)."""
    critic_width: int = 256
    """Hidden width of the critic encoders."""
    actor_width: int = 256
    """Hidden width of the actor."""
    repr_dim: int = 64
    """Dimension of phi(s, a) and psi(g)."""

    # ---- objective ---------------------------------------------------------------------
    energy: Literal["l2", "dot"] = "l2"
    """Critic f(s,a,g): 'l2' = -||phi(s,a) - psi(g)||_2, 'dot' = phi(s,a) . psi(g)."""
    contrastive_loss: Literal["forward", "backward", "symmetric"] = "forward"
    """InfoNCE direction: softmax over goals (forward), over state-actions (backward), or both."""
    logsumexp_penalty: float = 0.1
    """Coefficient of the logsumexp^2 regulariser on the forward logits."""
    discount: float = 0.99
    """gamma: relabeled goals are future states Δt steps ahead with probability ∝ gamma^Δt."""
    entropy_scale: float = 0.5
    """Target entropy = -entropy_scale * action_dim."""
    learning_rate: float = 3e-4
    """Adam learning rate for actor, critic and temperature."""

    # ---- evaluation --------------------------------------------------------------------
    num_eval_envs: int = 128
    """Episodes per evaluation, each with a fresh goal."""

    # ---- deployment --------------------------------------------------------------------
    distributed: DistributedConfig = dataclasses.field(
        default=DistributedConfig(), metadata={ADDED_LATER: "issue 26"}
    )
    """Train as one program over several processes (hosts): start the same command on every
    host with its own --process-id. Not part of the experiment: a resumed run takes this
    launch's setting, not the saved one."""

    def __post_init__(self):
        _check_env(self.env, "env")
        if self.eval_env:
            _check_env(self.eval_env, "eval_env")
        check_depth(self.critic_depth, "critic_depth")
        check_depth(self.actor_depth, "actor_depth")
        for name in (
            "num_envs",
            "unroll_length",
            "batch_size",
            "replay_capacity",
            "num_epochs",
            "critic_width",
            "actor_width",
            "repr_dim",
            "num_eval_envs",
            "updates_per_unroll",
            "total_env_steps",
            "learning_rate",
        ):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("logsumexp_penalty", "entropy_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"{name} must be >= 0, got {getattr(self, name)} (0 turns the term off)"
                )
        if not 0.0 < self.discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {self.discount}")
        if self.min_replay_steps < 2:
            raise ValueError(f"min_replay_steps must be >= 2, got {self.min_replay_steps}")
        if self.min_replay_steps > self.replay_capacity:
            raise ValueError(
                f"min_replay_steps ({self.min_replay_steps}) cannot exceed replay_capacity "
                f"({self.replay_capacity}); raise --replay-capacity or lower --min-replay-steps"
            )
        if self.iterations_per_epoch < 1:
            raise ValueError(
                f"total_env_steps={self.total_env_steps} is too small for num_epochs="
                f"{self.num_epochs} with num_envs*unroll_length={self.steps_per_iteration} "
                f"env steps per iteration; raise --total-env-steps or lower --num-epochs"
            )

    # ---- derived -----------------------------------------------------------------------
    @property
    def eval_env_name(self) -> str:
        return self.eval_env or eval_env_name(self.env)

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def prefill_steps(self) -> int:
        return self.num_envs * self.min_replay_steps

    @property
    def iterations_per_epoch(self) -> int:
        learn_steps = self.total_env_steps - self.prefill_steps
        return learn_steps // (self.num_epochs * self.steps_per_iteration)

    @property
    def env_steps_per_epoch(self) -> int:
        return self.iterations_per_epoch * self.steps_per_iteration

    def check_devices(self, num_devices: int) -> None:
        """Env and batch axes are sharded over devices: both must divide evenly."""
        for name in ("num_envs", "batch_size", "num_eval_envs"):
            value = getattr(self, name)
            if value % num_devices:
                raise ValueError(
                    f"{name}={value} must be divisible by the number of devices "
                    f"({num_devices}); use a multiple of {num_devices}"
                )


def _check_env(name: str, field: str) -> None:
    if name not in ENV_REGISTRY:
        raise unknown_name(field, name, ENV_REGISTRY)


#: Named presets. ``anyskill train crl --preset NAME`` starts from one; flags override fields.
PRESETS: dict[str, CRLConfig] = {
    # The README's main job: solves the U-maze on a 2-core laptop CPU in about 3 minutes
    # (see BENCHMARKS.md). CPU-friendly width; high update-to-data ratio (20 env steps per
    # gradient step) because gradient steps, not env steps, are the scarce resource on a CPU.
    "pointmaze-u": CRLConfig(
        env="pointmaze-u",
        total_env_steps=500_000,
        num_envs=64,
        unroll_length=10,
        updates_per_unroll=32,
        replay_capacity=500,
        min_replay_steps=100,
        num_epochs=10,
        critic_width=64,
        actor_width=64,
    ),
    # A tiny, fast run in the open arena (the end-to-end test).
    "arena-smoke": CRLConfig(
        env="pointmaze-arena",
        total_env_steps=40_000,
        num_envs=32,
        unroll_length=10,
        updates_per_unroll=16,
        batch_size=128,
        replay_capacity=200,
        min_replay_steps=50,
        num_epochs=4,
        critic_width=32,
        actor_width=32,
        num_eval_envs=64,
    ),
    "pointmaze-big": CRLConfig(
        env="pointmaze-big",
        total_env_steps=2_000_000,
        num_envs=64,
        unroll_length=10,
        updates_per_unroll=32,
        replay_capacity=1000,
        min_replay_steps=200,
        num_epochs=20,
        critic_width=64,
        actor_width=64,
    ),
    "pointmaze-hardest": CRLConfig(
        env="pointmaze-hardest",
        total_env_steps=4_000_000,
        num_envs=64,
        unroll_length=10,
        updates_per_unroll=32,
        replay_capacity=1000,
        min_replay_steps=300,
        num_epochs=20,
        critic_width=64,
        actor_width=64,
    ),
    # The paper's setting (JaxGCRL scale: width 256, 512 envs, 62-step unrolls); for a GPU.
    "paper": CRLConfig(
        env="pointmaze-hardest",
        total_env_steps=100_000_000,
        num_envs=512,
        unroll_length=62,
        updates_per_unroll=800,
        batch_size=256,
        replay_capacity=10_000,
        min_replay_steps=1000,
        num_epochs=50,
        critic_depth=64,
        actor_depth=64,
        num_eval_envs=256,
    ),
}


def get_preset(name: str) -> CRLConfig:
    if name not in PRESETS:
        raise unknown_name("preset", name, PRESETS)
    return PRESETS[name]
