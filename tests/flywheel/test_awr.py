"""Advantage-weighted regression as a flywheel baseline: the weights, the weighted flow loss,
the fine-tuning with weights, and a round that trains, evaluates and reports AWR."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_loop import tiny  # tests/flywheel is on sys.path (no __init__.py)

from anyskill.algos.recap import recap as R
from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.model import Batch, PolicyModel, sample_time
from anyskill.flywheel import loop, phases
from anyskill.flywheel.artifacts import FlywheelState, methods
from anyskill.flywheel.context import RunContext
from anyskill.flywheel.report import outcome_table

B, H, A = 4, 3, 2
CFG = ModelConfig(
    arch="mlp-flow",
    horizon=H,
    action_dim=A,
    state_dim=5,
    num_cameras=0,
    width=8,
    mlp_width=16,
    depth=1,
    max_text_len=6,
)


def test_awr_weights_hand_worked():
    a = np.array([0.0, 1.0, -1.0, 100.0, 1e6], np.float32)
    w = R.awr_weights(a, beta=0.5, max_weight=20.0)
    np.testing.assert_allclose(w, [1.0, np.exp(2.0), np.exp(-2.0), 20.0, 20.0], rtol=1e-6)
    assert w.dtype == np.float32 and np.isfinite(w).all()  # no overflow before the clip
    with pytest.raises(ValueError, match="beta > 0"):
        R.awr_weights(a, beta=0.0, max_weight=20.0)


def _batch(mask=None, weight=None) -> Batch:
    model = PolicyModel(CFG)
    obs = model.fake_obs(B).replace(state=jax.random.normal(jax.random.key(1), (B, CFG.state_dim)))
    actions = jax.random.normal(jax.random.key(2), (B, H, A))
    mask = jnp.ones((B, H), bool) if mask is None else jnp.asarray(mask)
    return Batch(obs, actions, mask, None if weight is None else jnp.asarray(weight))


def _per_frame_errors(model, params, key, batch) -> np.ndarray:
    """``[B, H]`` squared velocity errors, drawn as the flow loss draws noise and time."""
    k_noise, k_t = jax.random.split(key)
    noise = jax.random.normal(k_noise, batch.actions.shape)
    t = sample_time(k_t, (B,))
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * batch.actions
    v = model.net.apply(params, batch.obs, x_t, t)
    return np.asarray(jnp.mean((v - (noise - batch.actions)) ** 2, axis=-1), np.float64)


def test_weighted_flow_loss_is_the_weighted_mean_of_per_sample_losses():
    model = PolicyModel(CFG)
    params = model.init(jax.random.key(0))
    key = jax.random.key(3)
    w = np.array([0.5, 4.0, 1.0, 0.01], np.float32)
    err = _per_frame_errors(model, params, key, _batch())
    per_sample = err.mean(1)
    assert per_sample.std() > 1e-3  # the weights have something to choose between

    loss = float(model.loss(params, key, _batch(weight=w))[0])
    assert loss == pytest.approx(np.sum(w * per_sample) / np.sum(w), rel=1e-5)
    assert loss != pytest.approx(per_sample.mean(), rel=1e-3)  # the weights changed it
    # self-normalised over the batch: the weights' common scale does not matter
    assert float(model.loss(params, key, _batch(weight=w * 37.0))[0]) == pytest.approx(loss, 1e-6)
    # with an episode's end in the batch, each valid frame carries its sample's weight
    mask = np.ones((B, H), bool)
    mask[1, 1:] = False
    m = mask.astype(np.float64)
    want = np.sum(w[:, None] * m * err) / np.sum(w[:, None] * m)
    got = float(model.loss(params, key, _batch(mask, w))[0])
    assert got == pytest.approx(want, rel=1e-5)


def test_unit_weights_give_the_unweighted_loss_and_gradients_bit_for_bit():
    model = PolicyModel(CFG)
    params = model.init(jax.random.key(0))
    grad = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
    key = jax.random.key(4)
    (l0, _), g0 = grad(params, key, _batch())
    (l1, _), g1 = grad(params, key, _batch(weight=np.ones(B, np.float32)))
    assert np.asarray(l0).tobytes() == np.asarray(l1).tobytes()
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_steps_with_unit_weights_equal_unweighted_ones_bit_for_bit():
    """The train step finetune_policy runs: three updates with ``weight = 1`` give the
    unweighted run's parameters exactly; unequal weights give others."""
    import optax

    from anyskill.algos.vla.train import TrainState, make_train_step

    model = PolicyModel(CFG)
    start = model.init(jax.random.key(0))
    opt = optax.adamw(1e-2)
    step = make_train_step(model, opt, 0.99)

    def run(weight):
        ts = TrainState(start, start, opt.init(start), jnp.int32(0), jax.random.PRNGKey(5))
        for _ in range(3):
            ts, _ = step(ts, _batch(weight=weight))
        return jax.tree.leaves(ts.params)

    plain = run(None)
    for a, b in zip(plain, run(np.ones(B, np.float32)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = run(np.array([0.1, 5.0, 1.0, 1.0], np.float32))
    assert any(not np.array_equal(a, b) for a, b in zip(plain, other, strict=True))


def test_finetune_policy_refuses_weights_of_another_store():
    data = SimpleNamespace(ds=SimpleNamespace(num_frames=10, root="runs/x/data"))
    with pytest.raises(ValueError, match="weights has 3 entries, the dataset 10 frames"):
        R.finetune_policy(PolicyModel(CFG), {}, data, 1, 1e-3, 0, weights=np.ones(3))


def test_awr_is_trained_only_when_asked(tmp_path):
    assert methods(tiny(tmp_path)) == ("recap", "bc", "filtered")
    assert methods(tiny(tmp_path, awr_beta=1.0)) == ("recap", "bc", "filtered", "awr")
    assert methods(tiny(tmp_path, awr_beta=1.0, baselines=False)) == ("recap", "awr")
    with pytest.raises(ValueError, match="awr_beta must be > 0"):
        tiny(tmp_path, awr_beta=0.0)
    with pytest.raises(ValueError, match="awr_max_weight must be > 0"):
        tiny(tmp_path, awr_beta=1.0, awr_max_weight=-1.0)
    with pytest.raises(ValueError, match="--deploy-with awr needs AWR trained: give --awr-beta"):
        tiny(tmp_path, deploy_with="awr")
    assert tiny(tmp_path, deploy_with="awr", awr_beta=0.05).deploy_with == "awr"
    with pytest.raises(ValueError, match="split_takeovers must be >= 0"):
        tiny(tmp_path, split_takeovers=-1)


@pytest.mark.slow  # a tiny flywheel round, then AWR's fine-tuning and evaluation (~45 s)
def test_a_round_trains_evaluates_and_reports_awr_beside_the_others(tmp_path, monkeypatch):
    """A default run has no AWR anywhere; the same run's round with --awr-beta trains AWR
    with the round's advantages as weights, evaluates it and reports it."""
    cfg = tiny(tmp_path, baselines=False, eval_interventions=False)
    out = loop.run_flywheel(cfg)
    root = cfg.run_dir
    assert {r["method"] for r in out.rows} == {"start", "recap", "deployment (start)"}
    assert not (root / "policies" / "awr.msgpack").exists()
    for f in ("report.md", "results.json", "state.json"):
        assert "awr" not in (root / f).read_text().lower(), f
    assert json.loads((root / "config.json").read_text())["awr_beta"] is None

    seen = {}
    real = R.finetune_policy

    def spy(*args, weights=None, **kw):
        seen["weights"] = weights
        return real(*args, weights=weights, **kw)

    monkeypatch.setattr(phases.R, "finetune_policy", spy)
    awr = dataclasses.replace(cfg, awr_beta=0.5, awr_max_weight=5.0)
    ctx = RunContext.open(dataclasses.replace(awr, resume=True))
    st = FlywheelState(round=1, rows=out.rows)
    phases.policy(ctx, st)  # RECAP was trained this round: only AWR is
    adv = np.load(root / "advantage-r1.npz")["advantages"]
    np.testing.assert_array_equal(seen["weights"], R.awr_weights(adv, 0.5, 5.0))
    assert seen["weights"].min() < seen["weights"].max()  # the frames are weighted unequally
    trained = ctx.policy_params("awr")
    start = ctx.start_params
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(start), strict=True)
    )
    rows = phases.evaluate(ctx, st).rows
    row = [r for r in rows if r["method"] == "awr"]
    assert len(row) == 1 and row[0]["round"] == 1 and 0 <= row[0]["success"] <= 1
    assert "| 1 | AWR |" in outcome_table(list(rows))

    # --diagnose: the advantage phase also measures what its labels carry; the report uses it
    ctx = RunContext.open(dataclasses.replace(awr, resume=True, diagnose=True))
    phases.advantage(ctx, st)
    d = json.loads((root / "diagnosis-r1.json").read_text())
    assert d["round"] == 1 and 0 <= d["auc_state_chunk"] <= 1 and 0 <= d["auc_state"] <= 1
    assert d["frames"] == len(np.load(root / "advantage-r1.npz")["indicator"])
    src = d["sources"]  # where the labels and AWR's weights fall
    assert sum(src[k]["frames"] for k in ("demonstration", "corrected", "success", "failure")) == (
        pytest.approx(1.0)
    )
    assert src["demonstration"]["frames"] > 0 and 0 < src["effective_sample_fraction"] <= 1
    FlywheelState(round=2, rows=tuple(rows)).write(root / "state.json")
    phases.report(ctx, st)  # the report reads the artifacts only
    report = (root / "report.md").read_text()
    assert "## What the labels carry" in report and f"| 1 | {d['auc_state_chunk']:.3f} |" in report
    assert "RECAP (" in report and "AWR (" in report and "| demonstrations |" in report
    # --awr-data successes: the diagnostic weighs only the frames AWR can sample
    ctx = RunContext.open(
        dataclasses.replace(awr, resume=True, diagnose=True, awr_data="successes")
    )
    phases.advantage(ctx, st)
    d2 = json.loads((root / "diagnosis-r1.json").read_text())
    assert d2["awr_data"] == "successes" and d2["sources"]["failure"]["weight"] == 0.0
    if src["failure"]["frames"] > 0:
        assert src["failure"]["weight"] > 0  # with all data, failed episodes carry weight


def test_awr_on_successes_trains_on_filtered_bcs_data_with_its_weights(tmp_path, monkeypatch):
    """--awr-data successes: AWR samples what filtered BC samples (success=True) and still
    weights it by the advantages; the default samples every episode."""
    asked, got = [], {}

    class Ctx:
        def __init__(self, cfg):
            self.cfg, self.model = cfg, None

        def training_data(self, seed, **kw):
            asked.append(kw)
            return SimpleNamespace(ds=SimpleNamespace(num_frames=4))

    def stub(model, params, data, steps, lr, seed, progress=None, weights=None):
        got["weights"] = weights
        return params

    monkeypatch.setattr(phases.R, "finetune_policy", stub)
    labels = SimpleNamespace(advantages=np.array([0.0, 0.1, -0.1, 0.2], np.float32))
    for data, want in (("all", {}), ("successes", {"success": True})):
        cfg = tiny(tmp_path, awr_beta=0.5, awr_data=data, progress=False)
        phases.finetune(Ctx(cfg), "awr", {}, labels, 1, 0)
        assert asked[-1] == want
        np.testing.assert_array_equal(got["weights"], R.awr_weights(labels.advantages, 0.5, 20.0))
    with pytest.raises(ValueError, match="awr_data must be 'all' or 'successes'"):
        tiny(tmp_path, awr_data="failures")
