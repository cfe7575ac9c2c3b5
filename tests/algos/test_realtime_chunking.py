"""Real-time chunking (issue 25): the soft mask, guided inpainting of a flow sampler on a
committed prefix, delay-aware sampling, and the policy fields a robot sends."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.algos.vla.model import (
    Batch,
    PolicyModel,
    euler,
    guided_inpaint,
    prefix_euler,
    realtime_weights,
)
from anyskill.policies.base import (
    ACTION_DELAY,
    ACTION_PREFIX,
    PREFIX_LENGTH,
    ObservationError,
    stack_batch,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "policies"))
from policy_runs import ACTION_DIM, tiny_model, vla_batch, write_policy_run  # noqa: E402

H = 8


def gaussian_flow(mu: np.ndarray, cov: np.ndarray):
    """The exact flow-matching velocity E[noise - a | x_t] for chunks a ~ N(mu, cov) (one
    action dimension): a hand-built "trained policy" whose conditionals are known."""
    mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)
    h = len(mu)

    def vel(x, t):
        t = t[:, None]
        s = t[:, :, None] ** 2 * jnp.eye(h) + (1 - t[:, :, None]) ** 2 * cov
        r = jnp.linalg.solve(s, (x[..., 0] - (1 - t) * mu)[..., None])[..., 0]
        return (t * r - (mu + (1 - t) * (r @ cov)))[..., None]

    return vel


def smooth_gaussian():
    i = np.arange(H)
    cov = np.exp(-0.5 * ((i[:, None] - i[None]) / 3.0) ** 2) + 1e-3 * np.eye(H)
    return np.linspace(-1, 1, H), cov


def test_soft_mask_freezes_the_delay_then_decays_over_the_overlap():
    w = np.asarray(realtime_weights(H, jnp.array([6, 8, 0, 3]), jnp.array([2, 3, 1, 5])))
    np.testing.assert_allclose(w[0, :2], 1.0)
    c = (6 - 2) / (6 - 2 + 1)  # first decaying weight: c (e^c - 1) / (e - 1)
    np.testing.assert_allclose(w[0, 2], c * np.expm1(c) / (np.e - 1), rtol=1e-6)
    assert np.all(np.diff(w[0, 2:6]) < 0) and np.all(w[0, 6:] == 0)
    np.testing.assert_allclose(w[1, :3], 1.0)
    assert w[1, 7] > 0  # the overlap is the whole chunk
    assert np.all(w[2] == 0)  # nothing committed: no guidance
    np.testing.assert_allclose(w[3], [1, 1, 1, 0, 0, 0, 0, 0])  # delay beyond the plan: its length


def test_guided_inpainting_reproduces_the_committed_prefix_and_continues_it():
    mu, cov = smooth_gaussian()
    vel = gaussian_flow(mu, cov)
    b, d = 2000, 3
    x1 = jax.random.normal(jax.random.key(0), (b, H, 1))
    committed = np.array([1.5, 1.4, 1.2], np.float32)  # far from the prior mean (-1 .. -0.4)
    prefix = jnp.zeros((b, H, 1)).at[:, :d, 0].set(committed)
    w = jnp.broadcast_to(jnp.where(jnp.arange(H) < d, 1.0, 0.0), (b, H))
    out = np.asarray(jax.jit(lambda x: guided_inpaint(vel, x, prefix, w, 10, 5.0))(x1))[..., 0]
    plain = np.asarray(euler(vel, x1, 10))[..., 0]
    err = np.abs(out[:, :d] - committed).mean()
    err_plain = np.abs(plain[:, :d] - committed).mean()
    assert err < 0.3 and err < 0.15 * err_plain, (err, err_plain)
    # the free actions continue the prefix: the next one is near the last committed one
    # (the chunk's correlation), not at the prior's mean there
    assert abs(out[:, d].mean() - committed[-1]) < abs(mu[d] - committed[-1]) / 3
    # with nothing committed it is plain sampling
    zero = jax.jit(lambda x: guided_inpaint(vel, x, prefix, jnp.zeros((b, H)), 10, 5.0))(x1)
    np.testing.assert_allclose(np.asarray(zero)[..., 0], plain, atol=1e-5)


def test_prefix_euler_holds_the_committed_actions_exactly():
    times = []

    def vel(x, t):  # a per-action flow time: 0 on the committed actions
        times.append(t)
        return x - 0.5 * t[..., None]

    x1 = jax.random.normal(jax.random.key(1), (3, H, 1))
    prefix = jnp.arange(3 * H, dtype=jnp.float32).reshape(3, H, 1)
    out = np.asarray(prefix_euler(vel, x1, prefix, jnp.array([0, 2, 5]), 10))
    assert times[0].shape == (3, H)
    np.testing.assert_array_equal(out[1, :2], np.asarray(prefix)[1, :2])
    np.testing.assert_array_equal(out[2, :5], np.asarray(prefix)[2, :5])
    plain = euler(lambda x, t: x - 0.5 * t[:, None, None], x1, 10)
    np.testing.assert_allclose(out[0], np.asarray(plain)[0], atol=1e-5)
    np.testing.assert_allclose(out[1, 2:], np.asarray(plain)[1, 2:], atol=1e-5)


@pytest.mark.parametrize("arch", ["vla", "mlp-flow"])
def test_a_model_with_nothing_committed_samples_as_without_real_time_chunking(arch):
    from test_vla_model import random_obs  # noqa: PLC0415

    cfg = dataclasses.replace(tiny_model(arch), state_dim=5, action_dim=ACTION_DIM)
    model = PolicyModel(cfg)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), cfg, b=3)
    key = jax.random.key(2)
    plain = jax.jit(model.sample)(params, key, obs)
    prefix = jax.random.normal(key, plain.shape)
    realtime = jax.jit(model.sample_realtime)
    none = realtime(params, key, obs, prefix, jnp.zeros(3, int), jnp.full(3, 2))
    np.testing.assert_allclose(none, plain, atol=1e-5)
    some = realtime(params, key, obs, prefix, jnp.array([0, 3, 4]), jnp.full(3, 2))
    np.testing.assert_allclose(some[0], plain[0], atol=1e-5)  # rows are independent
    # the committed steps are pulled to the prefix: closer than the unguided chunk is
    assert (
        np.abs(some[1:, :2] - prefix[1:, :2]).mean() < np.abs(plain[1:, :2] - prefix[1:, :2]).mean()
    )


def test_delay_aware_training_leaves_the_committed_actions_out_of_the_loss():
    from test_vla_model import random_obs  # noqa: PLC0415

    cfg = dataclasses.replace(tiny_model("vla"), state_dim=5, max_delay=3)
    model = PolicyModel(cfg)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), cfg, b=64)
    acts = jax.random.normal(jax.random.key(2), (64, cfg.horizon, cfg.action_dim))
    mask = jnp.ones((64, cfg.horizon), bool)
    batch = Batch(obs=obs, actions=acts, action_mask=mask)
    key = jax.random.key(3)
    loss_fn = jax.jit(model.loss)
    loss, _ = loss_fn(params, key, batch)
    # a committed action is an input (time 0) but never a target: with every sample's delay
    # fixed by the key, changing the actions a zero-delay sample would not commit changes
    # the loss, and the loss stays finite
    assert np.isfinite(loss)
    moved = Batch(obs=obs, actions=acts.at[:, -1].add(5.0), action_mask=mask)
    assert loss_fn(params, key, moved)[0] != loss  # the last action is never committed
    with pytest.raises(ValueError, match="max_delay"):
        dataclasses.replace(tiny_model("mlp-flow"), max_delay=2)
    with pytest.raises(ValueError, match="max_delay"):
        dataclasses.replace(tiny_model("vla"), max_delay=4)  # horizon 4


# ---------------------------------------------------------------------------- the policy


@pytest.fixture(scope="module")
def vla_policy(tmp_path_factory):
    from anyskill.policies.registry import load_policy

    run = tmp_path_factory.mktemp("rtc") / "run"
    write_policy_run(run, tiny_model("vla"))
    return load_policy(run)


def test_a_flow_policy_announces_real_time_chunking_and_continues_a_prefix(vla_policy):
    p = vla_policy
    meta = p.spec.metadata()
    assert meta["realtime"] == {
        "method": "guided",
        "prefix_field": ACTION_PREFIX,
        "delay_field": ACTION_DELAY,
        "max_delay": None,
    }
    rows = [
        {k: v[i] for k, v in vla_batch(3).items()} for i in range(3)
    ]  # one plain row, two with committed plans of different lengths
    plan = np.full((3, ACTION_DIM), 0.7, np.float32)
    rows[1] = p.spec.validate({**rows[1], ACTION_PREFIX: plan, ACTION_DELAY: 2})
    rows[2] = p.spec.validate({**rows[2], ACTION_PREFIX: plan[:1].tolist(), ACTION_DELAY: 1})
    rows[0] = p.spec.validate(rows[0])
    batch = stack_batch(p.spec, rows)
    assert batch[ACTION_PREFIX].shape == (3, 4, ACTION_DIM)
    np.testing.assert_array_equal(batch[PREFIX_LENGTH], [0, 3, 1])
    out = p.infer(rows)
    assert out.shape == (3, 4, ACTION_DIM) and np.isfinite(out).all()


@pytest.mark.parametrize(
    "extra, field, message",
    [
        ({ACTION_PREFIX: np.zeros((5, ACTION_DIM))}, ACTION_DELAY, "missing"),
        ({ACTION_PREFIX: np.zeros((5, ACTION_DIM)), ACTION_DELAY: 1}, ACTION_PREFIX, "more than"),
        ({ACTION_PREFIX: np.zeros((2, 3)), ACTION_DELAY: 1}, ACTION_PREFIX, "shape"),
        ({ACTION_PREFIX: [[np.nan, 0.0]], ACTION_DELAY: 1}, ACTION_PREFIX, "NaN"),
        ({ACTION_PREFIX: np.zeros((2, ACTION_DIM)), ACTION_DELAY: -1}, ACTION_DELAY, "0..4"),
        ({ACTION_PREFIX: np.zeros((2, ACTION_DIM)), ACTION_DELAY: 1.5}, ACTION_DELAY, "integer"),
    ],
)
def test_a_bad_committed_plan_is_refused_naming_the_field(vla_policy, extra, field, message):
    row = {k: v[0] for k, v in vla_batch(1).items()}
    with pytest.raises(ObservationError, match=message) as e:
        vla_policy.spec.validate({**row, **extra})
    assert e.value.field == field


def test_a_delay_aware_policy_returns_the_committed_actions_it_was_sent(tmp_path):
    from anyskill.policies.registry import load_policy

    write_policy_run(tmp_path / "run", dataclasses.replace(tiny_model("vla"), max_delay=2))
    p = load_policy(tmp_path / "run")
    assert p.spec.metadata()["realtime"]["method"] == "trained"
    assert p.spec.metadata()["realtime"]["max_delay"] == 2
    row = {k: v[0] for k, v in vla_batch(1).items()}
    plan = np.array([[0.5, -0.25], [0.75, 0.1], [1.0, 0.2]], np.float32)
    sent = p.spec.validate({**row, ACTION_PREFIX: plan, ACTION_DELAY: 3})
    out = p.infer([sent, p.spec.validate(row)])
    np.testing.assert_allclose(out[0, :2], plan[:2], atol=1e-5)  # delay 3 > max_delay: 2 held
    assert np.abs(out[0, 2] - plan[2]).max() > 1e-3  # the rest is the model's own


class Counting:
    """A policy whose chunk k (its k-th call) is ``100 k + index``; it records what it was sent."""

    def __init__(self, horizon=10, execute=2, realtime="guided"):
        from anyskill.policies.base import InputSpec, PolicySpec

        self.spec = PolicySpec(
            (InputSpec("observation/state", (1,), "float32"),), 1, horizon, 10.0,
            execute_horizon=execute, realtime=realtime,
        )  # fmt: skip
        self.calls, self.sent = 0, []

    def act(self, obs, key):
        self.sent.append(obs)
        b = len(obs["observation/state"])
        out = 100.0 * self.calls + np.arange(self.spec.action_horizon, dtype=np.float32)
        self.calls += 1
        return np.broadcast_to(out[None, :, None], (b, self.spec.action_horizon, 1)).copy()

    def infer(self, rows):
        raise NotImplementedError


@pytest.mark.parametrize("delay, period", [(0, 2), (1, 1), (3, 3)])
def test_simulated_delay_executes_what_the_runtime_would(delay, period):
    from anyskill.policies.wrappers import SimulatedDelay

    inner = Counting()
    w = SimulatedDelay(inner, delay, realtime=True)
    assert w.period == period
    obs = {"observation/state": np.zeros((2, 1), np.float32)}
    first = w.act(obs, None)[0, :period, 0]
    second = w.act(obs, None)[0, :period, 0]
    np.testing.assert_array_equal(first, np.arange(period))  # the first chunk from index 0
    # the previous chunk's [period, period + delay), then the new one's from index `delay`
    want = [period + j for j in range(delay)] + [100 + j for j in range(delay, period)]
    np.testing.assert_array_equal(second, want[:period])
    if delay:
        sent = inner.sent[1]
        np.testing.assert_array_equal(
            sent[ACTION_PREFIX][0, : 10 - period, 0], np.arange(period, 10)
        )
        assert sent[PREFIX_LENGTH][0] == 10 - period and sent[ACTION_DELAY][0] == delay
    with pytest.raises(ValueError, match="run out"):
        SimulatedDelay(Counting(horizon=4), 3)
