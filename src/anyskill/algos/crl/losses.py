"""The contrastive RL objective, written like the equations.

Critic: f(s, a, g) = energy(phi(s, a), psi(g)). For a batch of B (s_i, a_i, g_i) where g_i is a
future state of the trajectory of s_i, the logits matrix is L_ij = f(s_i, a_i, g_j); the
diagonal holds the positives, every other column a negative (Eysenbach et al., "Contrastive
Learning as Goal-Conditioned RL", NeurIPS 2022; Zheng et al., "Stabilizing Contrastive RL").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_energy(phi: jax.Array, psi: jax.Array) -> jax.Array:
    """-||phi_i - psi_j||_2 for all pairs: [B, d] x [B', d] -> [B, B']."""
    # |phi|^2 + |psi|^2 - 2 phi.psi: a matmul instead of a [B, B, d] difference tensor, which
    # is ~20x faster on CPU for B = 256, d = 64.
    sq = jnp.sum(phi**2, axis=-1)[:, None] + jnp.sum(psi**2, axis=-1)[None, :] - 2.0 * phi @ psi.T
    # sqrt has an infinite gradient at 0; the clamp only matters for exact coincidences.
    return -jnp.sqrt(jnp.maximum(sq, 1e-12))


def dot_energy(phi: jax.Array, psi: jax.Array) -> jax.Array:
    return phi @ psi.T


ENERGIES = {"l2": l2_energy, "dot": dot_energy}


def pairwise_energy(kind: str, phi: jax.Array, psi: jax.Array) -> jax.Array:
    return ENERGIES[kind](phi, psi)


def paired_energy(kind: str, phi: jax.Array, psi: jax.Array) -> jax.Array:
    """f for matched rows only: [B, d] x [B, d] -> [B]."""
    if kind == "l2":
        return -jnp.sqrt(jnp.maximum(jnp.sum((phi - psi) ** 2, axis=-1), 1e-12))
    return jnp.sum(phi * psi, axis=-1)


def info_nce(logits: jax.Array, direction: str) -> jax.Array:
    """InfoNCE with positives on the diagonal.

    forward:   -mean_i [L_ii - logsumexp_j L_ij]     (which goal came from s_i's future?)
    backward:  -mean_j [L_jj - logsumexp_i L_ij]     (which state-action led to g_j?)
    symmetric: forward + backward
    """
    diag = jnp.diagonal(logits)
    forward = -jnp.mean(diag - jax.nn.logsumexp(logits, axis=1))
    backward = -jnp.mean(diag - jax.nn.logsumexp(logits, axis=0))
    if direction == "forward":
        return forward
    if direction == "backward":
        return backward
    if direction == "symmetric":
        return forward + backward
    raise ValueError(f"unknown InfoNCE direction {direction!r}")


def logsumexp_penalty(logits: jax.Array) -> jax.Array:
    """mean_i (logsumexp_j L_ij)^2: pins the forward partition function near 1, which keeps
    the energies from drifting (Eysenbach et al. 2022, App. on stabilisation)."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) ** 2)


def critic_objective(
    logits: jax.Array, direction: str, penalty_coef: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    nce = info_nce(logits, direction)
    penalty = logsumexp_penalty(logits)
    loss = nce + penalty_coef * penalty
    b = logits.shape[0]
    correct = jnp.argmax(logits, axis=1) == jnp.arange(b)
    metrics = {
        "critic_loss": loss,
        "info_nce": nce,
        "logsumexp_sq": penalty,
        "categorical_accuracy": jnp.mean(correct),
        "logits_pos": jnp.mean(jnp.diagonal(logits)),
        "logits_neg": (jnp.sum(logits) - jnp.sum(jnp.diagonal(logits))) / (b * (b - 1)),
    }
    return loss, metrics


def actor_objective(q: jax.Array, log_prob: jax.Array, alpha: jax.Array) -> jax.Array:
    """Maximise the critic at the relabeled goal with an entropy bonus (SAC-style):
    mean[alpha * log pi(a|s,g) - f(s, a, g)], a ~ pi(.|s,g)."""
    return jnp.mean(alpha * log_prob - q)


def alpha_objective(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """Temperature loss: alpha grows when entropy falls below the target, shrinks above it."""
    return jnp.exp(log_alpha) * jnp.mean(jax.lax.stop_gradient(-log_prob - target_entropy))
