"""CRL's networks: critic encoders phi(s, a), psi(g) and a tanh-Gaussian actor pi(a | s, g)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from anyskill.nets.residual import ResidualMLP

# log-std range of the actor, mapped from tanh (SpinUp / Yarats), as in the reference code.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Critic(nn.Module):
    """phi(s, a) and psi(g), each a residual MLP to ``repr_dim``."""

    width: int
    depth: int
    repr_dim: int

    def setup(self):
        self.sa_encoder = ResidualMLP(self.width, self.depth, self.repr_dim)
        self.g_encoder = ResidualMLP(self.width, self.depth, self.repr_dim)

    def phi(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.sa_encoder(jnp.concatenate([obs, action], axis=-1))

    def psi(self, goal: jax.Array) -> jax.Array:
        return self.g_encoder(goal)

    def __call__(self, obs, action, goal):
        return self.phi(obs, action), self.psi(goal)


class Actor(nn.Module):
    """Gaussian in pre-tanh space: returns (mean, log_std), each ``[..., action_dim]``."""

    width: int
    depth: int
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = ResidualMLP(self.width, self.depth, 2 * self.action_dim, name="trunk")(
            jnp.concatenate([obs, goal], axis=-1)
        )
        mean, log_std = jnp.split(out, 2, axis=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1.0)
        return mean, log_std


def sample_tanh_gaussian(
    key: jax.Array, mean: jax.Array, log_std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """a = tanh(mean + std * eps) and log pi(a) with the tanh change of variables."""
    std = jnp.exp(log_std)
    x = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    action = jnp.tanh(x)
    log_prob = jax.scipy.stats.norm.logpdf(x, mean, std)
    # log|d tanh(x)/dx| = log(1 - tanh(x)^2), written stably as 2(log2 - x - softplus(-2x)).
    log_prob -= 2.0 * (jnp.log(2.0) - x - jax.nn.softplus(-2.0 * x))
    return action, log_prob.sum(-1)
