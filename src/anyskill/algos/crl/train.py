"""Contrastive RL training: collection and updates jitted together, sharded over devices.

``make_train(config)`` builds a :class:`CRLTrainer` whose pieces are pure functions of a
:class:`CRLState` pytree:

- ``init(key)``: networks, optimisers, envs and an empty buffer, then a prefill;
- ``train_epoch(state)``: ``iterations_per_epoch`` iterations of (collect ``unroll_length``
  steps from ``num_envs`` envs -> insert -> ``updates_per_unroll`` gradient steps), one
  ``lax.scan`` inside one ``jit``;
- ``evaluate(params, key)``: success-any and time-at-goal on fresh goals;
- ``train(key)``: the whole run as one pure function, so seeds can be ``vmap``-ed.

The env axis (env states, replay columns) and the batch axis are sharded over all devices
with ``jax.sharding``; parameters are replicated and XLA inserts the collectives. After
:func:`anyskill.distributed.initialize` "all devices" are those of every process, so the same
code is one SPMD program across hosts: every process runs the same jitted functions on the
same global arrays, and values that enter from the host (keys) are the same on every process
and put on the mesh replicated (:meth:`CRLTrainer.replicated`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from anyskill import envs
from anyskill.algos.crl import losses
from anyskill.algos.crl.config import CRLConfig
from anyskill.algos.crl.networks import Actor, Critic, sample_tanh_gaussian
from anyskill.data.replay import ReplayBuffer, Transitions
from anyskill.envs.base import State as EnvState

DATA_AXIS = "data"


@struct.dataclass
class CRLParams:
    actor: Any
    critic: Any
    log_alpha: jax.Array


@struct.dataclass
class OptStates:
    actor: Any
    critic: Any
    alpha: Any


@struct.dataclass
class CRLState:
    """Everything a run needs to continue exactly where it stopped."""

    params: CRLParams
    opt: OptStates
    env_state: EnvState  # leading axis num_envs
    buffer: ReplayBuffer  # [capacity, num_envs, ...]
    key: jax.Array
    env_steps: jax.Array
    grad_steps: jax.Array


@struct.dataclass
class Batch:
    """A relabeled contrastive batch: obs [B, obs_dim], action [B, A], goal [B, goal_dim]."""

    obs: jax.Array
    action: jax.Array
    goal: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class CRLTrainer:
    config: CRLConfig
    env: envs.Env
    eval_env: envs.Env
    actor: Actor
    critic: Critic
    optimizer: optax.GradientTransformation
    mesh: Mesh

    # ---- construction -----------------------------------------------------------------
    @property
    def target_entropy(self) -> float:
        return -self.config.entropy_scale * self.env.action_dim

    def init_params(self, key: jax.Array) -> CRLParams:
        k_actor, k_critic = jax.random.split(key)
        obs = jnp.zeros((1, self.env.obs_dim))
        goal = jnp.zeros((1, self.env.goal_dim))
        action = jnp.zeros((1, self.env.action_dim))
        return CRLParams(
            actor=self.actor.init(k_actor, obs, goal)["params"],
            critic=self.critic.init(k_critic, obs, action, goal)["params"],
            log_alpha=jnp.asarray(0.0, jnp.float32),
        )

    def init_state(self, key: jax.Array) -> CRLState:
        """A fresh state with an empty buffer (no prefill)."""
        c = self.config
        k_params, k_env, k_run = jax.random.split(key, 3)
        params = self.init_params(k_params)
        opt = OptStates(
            actor=self.optimizer.init(params.actor),
            critic=self.optimizer.init(params.critic),
            alpha=self.optimizer.init(params.log_alpha),
        )
        env_state = jax.vmap(self.env.reset)(jax.random.split(k_env, c.num_envs))
        buffer = ReplayBuffer.empty(
            c.replay_capacity, c.num_envs, self.env.obs_dim, self.env.action_dim
        )
        zero = jnp.asarray(0, jnp.int32)
        return CRLState(params, opt, env_state, buffer, k_run, zero, zero)

    # ---- acting -------------------------------------------------------------------------
    def act(self, params: CRLParams, key: jax.Array, obs, goal, deterministic: bool = False):
        mean, log_std = self.actor.apply({"params": params.actor}, obs, goal)
        if deterministic:
            return jnp.tanh(mean)
        return sample_tanh_gaussian(key, mean, log_std)[0]

    def collect(self, state: CRLState, length: int) -> CRLState:
        """Run the stochastic actor in all envs for ``length`` steps and store the rows."""
        key, k_collect = jax.random.split(state.key)

        def step(env_state: EnvState, k):
            action = self.act(state.params, k, env_state.obs, env_state.goal)
            row = Transitions(obs=env_state.obs, action=action, t=env_state.t)
            return jax.vmap(self.env.step)(env_state, action), row

        env_state, rows = jax.lax.scan(step, state.env_state, jax.random.split(k_collect, length))
        env_state = self._shard(env_state, P(DATA_AXIS))
        return state.replace(
            env_state=env_state,
            buffer=state.buffer.insert(rows),
            key=key,
            env_steps=state.env_steps + length * self.config.num_envs,
        )

    # ---- learning -----------------------------------------------------------------------
    def sample_batch(self, buffer: ReplayBuffer, key: jax.Array) -> Batch:
        c = self.config
        rows, future, _ = buffer.sample_with_future(
            key, c.batch_size, self.env.episode_length, c.discount
        )
        batch = Batch(obs=rows.obs, action=rows.action, goal=self.env.achieved_goal(future.obs))
        return self._shard(batch, P(DATA_AXIS))

    def critic_loss(self, critic_params, batch: Batch):
        phi, psi = self.critic.apply({"params": critic_params}, batch.obs, batch.action, batch.goal)
        logits = losses.pairwise_energy(self.config.energy, phi, psi)
        return losses.critic_objective(
            logits, self.config.contrastive_loss, self.config.logsumexp_penalty
        )

    def actor_loss(self, actor_params, critic_params, log_alpha, batch: Batch, key):
        mean, log_std = self.actor.apply({"params": actor_params}, batch.obs, batch.goal)
        action, log_prob = sample_tanh_gaussian(key, mean, log_std)
        critic = self.critic.bind({"params": critic_params})
        q = losses.paired_energy(
            self.config.energy, critic.phi(batch.obs, action), critic.psi(batch.goal)
        )
        loss = losses.actor_objective(q, log_prob, jnp.exp(log_alpha))
        return loss, log_prob

    def update(self, state: CRLState, key: jax.Array) -> tuple[CRLState, dict]:
        """One gradient step on critic, then actor and temperature, on a fresh batch."""
        k_batch, k_actor = jax.random.split(key)
        batch = self.sample_batch(state.buffer, k_batch)
        p, o = state.params, state.opt

        (_, critic_metrics), g_critic = jax.value_and_grad(self.critic_loss, has_aux=True)(
            p.critic, batch
        )
        upd, opt_critic = self.optimizer.update(g_critic, o.critic, p.critic)
        critic_params = optax.apply_updates(p.critic, upd)

        (actor_loss, log_prob), g_actor = jax.value_and_grad(self.actor_loss, has_aux=True)(
            p.actor, critic_params, p.log_alpha, batch, k_actor
        )
        upd, opt_actor = self.optimizer.update(g_actor, o.actor, p.actor)
        actor_params = optax.apply_updates(p.actor, upd)

        alpha_loss, g_alpha = jax.value_and_grad(losses.alpha_objective)(
            p.log_alpha, log_prob, self.target_entropy
        )
        upd, opt_alpha = self.optimizer.update(g_alpha, o.alpha, p.log_alpha)
        log_alpha = optax.apply_updates(p.log_alpha, upd)

        metrics = {
            **critic_metrics,
            "actor_loss": actor_loss,
            "alpha_loss": alpha_loss,
            "alpha": jnp.exp(log_alpha),
            "entropy": -jnp.mean(log_prob),
        }
        new = state.replace(
            params=CRLParams(actor_params, critic_params, log_alpha),
            opt=OptStates(opt_actor, opt_critic, opt_alpha),
            grad_steps=state.grad_steps + 1,
        )
        return new, metrics

    def iteration(self, state: CRLState, _=None) -> tuple[CRLState, dict]:
        state = self.collect(state, self.config.unroll_length)
        key, k_updates = jax.random.split(state.key)
        state = state.replace(key=key)
        state, metrics = jax.lax.scan(
            self.update, state, jax.random.split(k_updates, self.config.updates_per_unroll)
        )
        return state, jax.tree.map(jnp.mean, metrics)

    def prefill(self, state: CRLState) -> CRLState:
        return self.collect(state, self.config.min_replay_steps)

    def train_epoch(self, state: CRLState) -> tuple[CRLState, dict]:
        state, metrics = jax.lax.scan(
            self.iteration, state, None, length=self.config.iterations_per_epoch
        )
        return state, jax.tree.map(jnp.mean, metrics)

    # ---- evaluation ---------------------------------------------------------------------
    def rollout(self, params: CRLParams, key: jax.Array, num_episodes: int):
        """Deterministic episodes on fresh goals in the eval env. Returns per-step arrays
        ``[T, num_episodes]``: success, and positions ``[T+1, N, goal_dim]`` and goals."""
        env = self.eval_env
        start = jax.vmap(env.reset)(jax.random.split(key, num_episodes))
        start = self._shard(start, P(DATA_AXIS))

        def step(s: EnvState, _):
            action = self.act(params, key, s.obs, s.goal, deterministic=True)
            nxt = jax.vmap(env.step)(s, action)
            return nxt, (nxt.success, env.achieved_goal(nxt.final_obs))

        _, (success, achieved) = jax.lax.scan(step, start, None, length=env.episode_length)
        positions = jnp.concatenate([env.achieved_goal(start.obs)[None], achieved], axis=0)
        return success, positions, start.goal

    def evaluate(self, params: CRLParams, key: jax.Array) -> dict[str, jax.Array]:
        success, _, _ = self.rollout(params, key, self.config.num_eval_envs)
        return {
            "success_any": jnp.mean(jnp.any(success, axis=0)),
            "time_at_goal": jnp.mean(jnp.sum(success, axis=0)),
        }

    # ---- whole run as one pure function -------------------------------------------------
    def train(self, key: jax.Array) -> tuple[CRLState, dict]:
        """init -> prefill -> num_epochs x (train_epoch, evaluate). Pure, so
        ``jax.jit(jax.vmap(trainer.train))(keys)`` trains several seeds at once."""
        k_init, k_eval = jax.random.split(key)
        state = self.prefill(self.init_state(k_init))

        def epoch(state, k):
            state, train_metrics = self.train_epoch(state)
            return state, {**train_metrics, **self.evaluate(state.params, k)}

        return jax.lax.scan(epoch, state, jax.random.split(k_eval, self.config.num_epochs))

    # ---- sharding -----------------------------------------------------------------------
    def replicated(self, x) -> jax.Array:
        """A host value that is the same on every process (a key derived from the seed) as
        one global array replicated on every device of the mesh: a valid input of the
        jitted functions when the mesh spans processes, where a process-local array is not
        one operand of a cross-process program."""
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P()), np.asarray(x))

    def _shard(self, tree, spec: P):
        """Constrain every leaf's leading axis (env or batch) to be split over devices."""
        if self.mesh.size == 1:
            return tree
        sharding = NamedSharding(self.mesh, spec)
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def state_sharding(self, state: CRLState):
        """NamedShardings for a CRLState: env axis split, everything else replicated."""
        rep = NamedSharding(self.mesh, P())
        env_axis = NamedSharding(self.mesh, P(DATA_AXIS))
        buf_axis = NamedSharding(self.mesh, P(None, DATA_AXIS))
        shard = jax.tree.map(lambda _: rep, state)
        return shard.replace(
            env_state=jax.tree.map(lambda _: env_axis, state.env_state),
            buffer=shard.buffer.replace(
                data=jax.tree.map(lambda _: buf_axis, state.buffer.data),
            ),
        )


def make_train(config: CRLConfig, devices=None) -> CRLTrainer:
    """Build the trainer for ``config`` on ``devices`` (default: ``jax.devices()``, every
    device of every process — the local ones in a single-process run)."""
    devices = list(devices if devices is not None else jax.devices())
    config.check_devices(len(devices))
    env = envs.make(config.env)
    eval_env = envs.make(config.eval_env_name)
    if (env.obs_dim, env.goal_dim, env.action_dim) != (
        eval_env.obs_dim,
        eval_env.goal_dim,
        eval_env.action_dim,
    ):
        raise ValueError(f"eval env {eval_env.name} has different spaces than {env.name}")
    return CRLTrainer(
        config=config,
        env=env,
        eval_env=eval_env,
        actor=Actor(config.actor_width, config.actor_depth, env.action_dim),
        critic=Critic(config.critic_width, config.critic_depth, config.repr_dim),
        optimizer=optax.adam(config.learning_rate),
        mesh=Mesh(devices, (DATA_AXIS,)),
    )
