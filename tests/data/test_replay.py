"""Goal relabeling: goals come from the same trajectory's future, with P(Δ=k) ∝ γ^k."""

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.data.replay import ReplayBuffer, Transitions, truncated_geometric


def test_truncated_geometric_distribution():
    gamma, n = 0.8, 6
    deltas = np.asarray(truncated_geometric(jax.random.PRNGKey(0), jnp.full((200_000,), n), gamma))
    assert deltas.min() >= 1 and deltas.max() <= n
    probs = gamma ** np.arange(1, n + 1)
    probs /= probs.sum()
    freq = np.bincount(deltas, minlength=n + 1)[1:] / len(deltas)
    np.testing.assert_allclose(freq, probs, atol=0.005)


def test_truncated_geometric_edges():
    d = np.asarray(truncated_geometric(jax.random.PRNGKey(1), jnp.array([0, -3, 1, 1]), 0.99))
    np.testing.assert_array_equal(d, [0, 0, 1, 1])


def _fill(capacity, num_envs, episode_length, steps):
    """Rows whose obs encodes (env, global step, episode, t) so relabels can be traced."""
    buf = ReplayBuffer.empty(capacity, num_envs, obs_dim=4, action_dim=1)
    rows = []
    for step in range(steps):
        t = step % episode_length
        episode = step // episode_length
        obs = np.stack(
            [
                np.arange(num_envs),
                np.full(num_envs, step),
                np.full(num_envs, episode),
                np.full(num_envs, t),
            ],
            axis=-1,
        ).astype(np.float32)
        rows.append(
            Transitions(
                obs=obs,
                action=np.zeros((num_envs, 1), np.float32),
                t=np.full(num_envs, t, np.int32),
            )
        )
    for chunk in range(0, steps, 7):  # inserts of uneven sizes, wrapping around
        part = rows[chunk : chunk + 7]
        buf = buf.insert(jax.tree.map(lambda *x: jnp.stack(x), *part))
    return buf


def test_relabeled_goal_is_same_trajectory_future():
    capacity, num_envs, T, steps = 50, 3, 12, 83  # wrapped: rows 33..82 are stored
    buf = _fill(capacity, num_envs, T, steps)
    assert int(buf.size) == capacity
    rows, future, delta = buf.sample_with_future(jax.random.PRNGKey(0), 4096, T, 0.9)
    r, f, d = np.asarray(rows.obs), np.asarray(future.obs), np.asarray(delta)
    assert r[:, 1].min() >= steps - capacity  # only stored rows are sampled
    np.testing.assert_array_equal(r[:, 0], f[:, 0])  # same env
    np.testing.assert_array_equal(r[:, 2], f[:, 2])  # same episode
    np.testing.assert_array_equal(f[:, 1] - r[:, 1], d)  # Δ steps later
    last_of_episode = (r[:, 3] == T - 1) | (r[:, 1] == steps - 1)
    assert np.all(d[last_of_episode] == 0)
    assert np.all(d[~last_of_episode] >= 1)


def test_relabel_distribution_matches_discount():
    capacity, num_envs, T = 400, 8, 400
    buf = _fill(capacity, num_envs, T, 400)
    rows, _, delta = buf.sample_with_future(jax.random.PRNGKey(1), 100_000, T, 0.95)
    t, d = np.asarray(rows.t), np.asarray(delta)
    sel = t < 100  # at least 299 future steps: the truncation is negligible (0.95^299)
    freq = np.bincount(d[sel], minlength=12)[1:11] / sel.sum()
    expected = 0.05 * 0.95 ** np.arange(0, 10)
    np.testing.assert_allclose(freq, expected, atol=0.006)
