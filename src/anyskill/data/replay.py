"""A trajectory replay buffer in device memory with future-state goal relabeling.

Layout: every field is ``[capacity, num_envs, ...]``; row ``c`` holds what all envs saw at one
collection step, so each env's column is its own time series. Writes go round-robin along
the first axis; the env axis is the one sharded over devices.

Relabeling (Eysenbach et al. 2022): for a sampled (s_t, a_t), the goal is the achieved goal of
s_{t+Δ} from the same episode, with P(Δ = k) ∝ γ^k for k = 1..n, where n is the number of
later steps of that episode already in the buffer. Δ is drawn exactly by inverting the CDF of
the truncated geometric distribution: P(Δ <= k) = (1 - γ^k) / (1 - γ^n). The last stored step
of an episode (n = 0) uses its own state as the goal.

Assumes episodes end only by truncation (fixed length), as in goal-reaching tasks without
early termination: then the episode of a row ends ``episode_length - 1 - t`` rows later.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Transitions:
    """A batch of rows. obs [..., obs_dim], action [..., action_dim], t [...] int32 (step within
    the episode of ``obs``)."""

    obs: jax.Array
    action: jax.Array
    t: jax.Array


@struct.dataclass
class ReplayBuffer:
    """data: Transitions with leading axes [capacity, num_envs]; insert_pos: next row to write;
    size: rows holding data (<= capacity)."""

    data: Transitions
    insert_pos: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return self.data.t.shape[0]

    @staticmethod
    def empty(capacity: int, num_envs: int, obs_dim: int, action_dim: int) -> ReplayBuffer:
        return ReplayBuffer(
            data=Transitions(
                obs=jnp.zeros((capacity, num_envs, obs_dim), jnp.float32),
                action=jnp.zeros((capacity, num_envs, action_dim), jnp.float32),
                t=jnp.zeros((capacity, num_envs), jnp.int32),
            ),
            insert_pos=jnp.asarray(0, jnp.int32),
            size=jnp.asarray(0, jnp.int32),
        )

    def insert(self, rows: Transitions) -> ReplayBuffer:
        """Append ``[L, num_envs, ...]`` rows (L <= capacity), overwriting the oldest."""
        length = rows.t.shape[0]
        idx = (self.insert_pos + jnp.arange(length)) % self.capacity
        data = jax.tree.map(lambda buf, new: buf.at[idx].set(new), self.data, rows)
        return ReplayBuffer(
            data=data,
            insert_pos=(self.insert_pos + length) % self.capacity,
            size=jnp.minimum(self.size + length, self.capacity),
        )

    def sample_with_future(
        self, key: jax.Array, batch_size: int, episode_length: int, discount: float
    ) -> tuple[Transitions, Transitions, jax.Array]:
        """Sample ``batch_size`` rows uniformly and a relabeled future row for each.

        Returns (rows, future_rows, delta) with delta the number of steps between them.
        """
        key_row, key_env, key_delta = jax.random.split(key, 3)
        num_envs = self.data.t.shape[1]
        # Logical index i in [0, size): 0 = oldest row still stored.
        i = jax.random.randint(key_row, (batch_size,), 0, self.size)
        env = jax.random.randint(key_env, (batch_size,), 0, num_envs)
        oldest = (self.insert_pos - self.size) % self.capacity
        row = (oldest + i) % self.capacity
        t = self.data.t[row, env]
        n = jnp.minimum(episode_length - 1 - t, self.size - 1 - i)
        delta = truncated_geometric(key_delta, n, discount)
        future = (row + delta) % self.capacity
        pick = lambda r: jax.tree.map(lambda x: x[r, env], self.data)  # noqa: E731
        return pick(row), pick(future), delta


def truncated_geometric(key: jax.Array, n: jax.Array, discount: float) -> jax.Array:
    """Δ in {1..n} with P(Δ = k) ∝ discount^k (Δ = 0 where n <= 0), by inverse CDF."""
    u = jax.random.uniform(key, jnp.shape(n))
    n_safe = jnp.maximum(n, 1).astype(jnp.float32)
    mass = 1.0 - discount**n_safe
    k = jnp.ceil(jnp.log1p(-u * mass) / jnp.log(discount))
    k = jnp.clip(k, 1, n_safe).astype(jnp.int32)
    return jnp.where(n >= 1, k, 0)
