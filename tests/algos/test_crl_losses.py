"""InfoNCE, the logsumexp penalty and the energies against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.algos.crl import losses

# A 2x2 logits matrix small enough to compute by hand.
L = jnp.array([[1.0, 0.0], [2.0, 3.0]])


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_forward_info_nce_by_hand():
    expected = -((1.0 - lse(1.0, 0.0)) + (3.0 - lse(2.0, 3.0))) / 2
    assert float(losses.info_nce(L, "forward")) == pytest.approx(expected, rel=1e-6)


def test_backward_info_nce_by_hand():
    # columns: (1, 2) for the first positive, (0, 3) for the second
    expected = -((1.0 - lse(1.0, 2.0)) + (3.0 - lse(0.0, 3.0))) / 2
    assert float(losses.info_nce(L, "backward")) == pytest.approx(expected, rel=1e-6)


def test_symmetric_is_sum():
    s = losses.info_nce(L, "symmetric")
    assert float(s) == pytest.approx(
        float(losses.info_nce(L, "forward") + losses.info_nce(L, "backward")), rel=1e-6
    )


def test_unknown_direction_raises():
    with pytest.raises(ValueError, match="sideways"):
        losses.info_nce(L, "sideways")


def test_logsumexp_penalty_by_hand():
    expected = (lse(1.0, 0.0) ** 2 + lse(2.0, 3.0) ** 2) / 2
    assert float(losses.logsumexp_penalty(L)) == pytest.approx(expected, rel=1e-6)


def test_critic_objective_combines_terms():
    loss, m = losses.critic_objective(L, "forward", 0.1)
    expected = float(losses.info_nce(L, "forward")) + 0.1 * float(losses.logsumexp_penalty(L))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # argmax per row: row 0 -> col 0 (correct), row 1 -> col 1 (correct)
    assert float(m["categorical_accuracy"]) == 1.0
    assert float(m["logits_pos"]) == pytest.approx(2.0)
    assert float(m["logits_neg"]) == pytest.approx(1.0)


def test_l2_energy_matches_direct_distance():
    phi = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    psi = jnp.array([[0.0, 0.0], [0.0, 4.0], [6.0, 8.0]])
    e = np.asarray(losses.l2_energy(phi, psi))
    expected = -np.array([[0.0, 4.0, 10.0], [5.0, 3.0, 5.0]])
    np.testing.assert_allclose(e, expected, atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(losses.paired_energy("l2", phi, psi[:2])), [0.0, -3.0], atol=1e-3
    )


def test_l2_energy_gradient_finite_at_coincidence():
    phi = jnp.ones((3, 4))
    g = jax.grad(lambda p: losses.l2_energy(p, p).sum())(phi)
    assert np.all(np.isfinite(np.asarray(g)))


def test_dot_energy():
    phi = jnp.array([[1.0, 2.0]])
    psi = jnp.array([[3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(np.asarray(losses.dot_energy(phi, psi)), [[11.0, 2.0]])
    np.testing.assert_allclose(np.asarray(losses.paired_energy("dot", phi, psi[:1])), [11.0])


def test_alpha_objective_sign():
    # entropy (= -log_prob) below target -> loss decreases as log_alpha increases
    log_prob = jnp.array([2.0, 2.0])  # entropy -2
    grad = jax.grad(losses.alpha_objective)(jnp.asarray(0.0), log_prob, -1.0)
    assert float(grad) < 0  # gradient descent raises alpha
    log_prob = jnp.array([-3.0, -3.0])  # entropy 3 > target
    grad = jax.grad(losses.alpha_objective)(jnp.asarray(0.0), log_prob, -1.0)
    assert float(grad) > 0


def test_actor_objective_by_hand():
    q = jnp.array([1.0, -1.0])
    log_prob = jnp.array([0.5, 1.5])
    assert float(losses.actor_objective(q, log_prob, 2.0)) == pytest.approx(
        ((2 * 0.5 - 1.0) + (2 * 1.5 + 1.0)) / 2
    )
