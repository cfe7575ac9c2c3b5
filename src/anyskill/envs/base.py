"""The environment API every anyskill environment implements.

An environment object holds only static settings (layout, dt, thresholds); everything that
changes lives in a frozen pytree, :class:`State`. ``reset`` and ``step`` are pure functions of
their inputs, so they can be ``jax.jit``-ed, ``jax.vmap``-ed and ``lax.scan``-ed freely.

Goal-conditioning is part of the contract: every env says which slice of its observation the
goal lives in (``goal_indices``), how close counts as success (``success_threshold``), how long
an episode is (``episode_length``) and how fast it is controlled (``control_hz``).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class State:
    """One environment's full state.

    Shapes (unbatched; ``vmap`` adds a leading env axis):
      physics:     env-specific pytree (e.g. position and velocity of the robot)
      obs:         [obs_dim] float32, the observation after this step (after auto-reset, the
                   first observation of the new episode)
      goal:        [goal_dim] float32, the commanded goal, in the space ``obs[goal_indices]``
      reward:      [] float32, sparse goal reward: 1.0 when within the threshold, else 0.0
      terminated:  [] bool, the episode ended because of the task (never for the mazes)
      truncated:   [] bool, the episode ended because it hit ``episode_length``
      success:     [] bool, ``obs[goal_indices]`` is within ``success_threshold`` of ``goal``
      final_obs:   [obs_dim] float32, the last observation of the episode that just ended
                   (equals ``obs`` when no reset happened on this step)
      final_goal:  [goal_dim] float32, the goal of the episode that just ended
      t:           [] int32, steps taken in the current episode (0 right after reset)
      key:         PRNG key used to draw the next episode's start and goal on auto-reset
    """

    physics: Any
    obs: jax.Array
    goal: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    success: jax.Array
    final_obs: jax.Array
    final_goal: jax.Array
    t: jax.Array
    key: jax.Array

    @property
    def done(self) -> jax.Array:
        return jnp.logical_or(self.terminated, self.truncated)


class Env(abc.ABC):
    """Base class: subclasses implement ``_reset_physics``, ``_step_physics`` and ``observe``.

    ``reset`` and ``step`` below are the public, pure API; ``step`` auto-resets: when an
    episode ends, the returned state already belongs to the next episode, which starts from
    a fresh start and a fresh goal drawn with a fresh key, while ``final_obs``/``final_goal``
    and the ``terminated``/``truncated``/``success`` flags still describe the ended episode.
    """

    #: name in the registry (``anyskill.envs.make``)
    name: str
    obs_dim: int
    goal_dim: int
    action_dim: int
    #: indices of ``obs`` that live in goal space
    goal_indices: tuple[int, ...]
    success_threshold: float
    episode_length: int
    control_hz: float
    #: end the episode (``terminated``) as soon as ``success`` holds
    terminate_on_success: bool = False

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    # ---- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def _reset_physics(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Draw a start state and a goal: returns ``(physics, goal)``."""

    @abc.abstractmethod
    def _step_physics(self, physics: Any, action: jax.Array) -> Any:
        """Advance the physics by one control step. ``action`` is already clipped to [-1, 1]."""

    @abc.abstractmethod
    def observe(self, physics: Any) -> jax.Array:
        """Observation vector ``[obs_dim]`` of a physics state."""

    # ---- hooks with defaults -------------------------------------------------------------
    def task_success(self, physics: Any, obs: jax.Array, goal: jax.Array) -> jax.Array:
        """The success predicate reported in ``State.success``; by default goal reaching."""
        return self.is_success(obs, goal)

    def episode_limit(self, physics: Any) -> jax.Array | int:
        """Steps after which the current episode is truncated (may depend on the task)."""
        return self.episode_length

    def physics_ok(self, physics: Any) -> jax.Array | bool:
        """False when a physics state is broken (e.g. non-finite): the episode is then
        truncated and auto-reset, so a broken state never propagates."""
        return True

    def carry(self, old: Any, new: Any) -> Any:
        """What survives an auto-reset: returns the physics of the next step given the ended
        episode's ``old`` and the ``new`` one's physics (by default nothing carries over)."""
        return new

    def check_action(self, action: jax.Array) -> jax.Array:
        """Validate the action's shape (at trace time) before it reaches the physics."""
        if action.shape[-1:] != (self.action_dim,):
            raise ValueError(
                f"{self.name}: action must have shape ({self.action_dim},) per env, "
                f"got {tuple(action.shape)}"
            )
        return action

    # ---- public API ---------------------------------------------------------------------
    def achieved_goal(self, obs: jax.Array) -> jax.Array:
        """The part of an observation (any leading batch axes) that lives in goal space."""
        return obs[..., jnp.asarray(self.goal_indices)]

    def is_success(self, obs: jax.Array, goal: jax.Array) -> jax.Array:
        diff = self.achieved_goal(obs) - goal
        # ||diff|| with the sum over the (small, static) goal axis unrolled: XLA:CPU reduces a
        # tiny minor axis ~10x slower than it adds slices, and this runs on every step.
        dist = jnp.sqrt(sum(diff[..., i] ** 2 for i in range(diff.shape[-1])))
        return dist < self.success_threshold

    def reset(self, key: jax.Array) -> State:
        key_episode, key_next = jax.random.split(key)
        physics, goal = self._reset_physics(key_episode)
        obs = self.observe(physics)
        false = jnp.asarray(False)
        return State(
            physics=physics,
            obs=obs,
            goal=goal,
            reward=jnp.asarray(0.0, jnp.float32),
            terminated=false,
            truncated=false,
            success=self.task_success(physics, obs, goal),
            final_obs=obs,
            final_goal=goal,
            t=jnp.asarray(0, jnp.int32),
            key=key_next,
        )

    def step(self, state: State, action: jax.Array) -> State:
        action = jnp.clip(self.check_action(jnp.asarray(action)), -1.0, 1.0)
        physics = self._step_physics(state.physics, action)
        obs = self.observe(physics)
        success = self.task_success(physics, obs, state.goal)
        t = state.t + 1
        terminated = jnp.logical_and(success, self.terminate_on_success)
        truncated = jnp.logical_and(t >= self.episode_limit(state.physics), ~terminated)
        broken = ~jnp.asarray(self.physics_ok(physics))
        truncated = jnp.logical_or(truncated, broken)
        # Auto-reset with a fresh key: the next episode is ``reset(state.key)``, its own start,
        # goal and key. ``state.key`` is new on every step (``fresh.key`` is handed on either
        # way), so every episode draws from a key no other episode used. Under vmap the fresh
        # state is computed on every step (a select, not a branch): keep ``reset`` cheap.
        fresh = self.reset(state.key)
        done = jnp.logical_or(terminated, truncated)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(done, a, b), new, old)

        return State(
            physics=self.carry(physics, pick(fresh.physics, physics)),
            obs=pick(fresh.obs, obs),
            goal=pick(fresh.goal, state.goal),
            reward=success.astype(jnp.float32),
            terminated=terminated,
            truncated=truncated,
            success=success,
            final_obs=jnp.where(broken, jnp.nan_to_num(obs), obs),
            final_goal=state.goal,
            t=jnp.where(done, 0, t).astype(jnp.int32),
            key=fresh.key,
        )

    def random_actions(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        return jax.random.uniform(key, (*shape, self.action_dim), minval=-1.0, maxval=1.0)
