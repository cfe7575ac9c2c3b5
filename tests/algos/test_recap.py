"""RECAP's steps as functions (algos/recap/recap.py) on hand-worked inputs, and the one
training loop (anyskill.learn) against the plain loops it replaced, bit for bit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill import learn
from anyskill.algos.recap import recap as R
from anyskill.algos.recap.advantage import to_bins

# one successful episode of 4 frames [0, 4) and one failed episode of 3 frames [4, 7)
SPANS = R.EpisodeSpans(np.array([0, 4]), np.array([4, 7]), np.array([1, 0]))
VALUES = np.array([-0.5, -0.3, -0.25, -0.1, -0.8, -0.9, -0.95], np.float32)
FAMILY = np.array([0, 0, 0, 0, 1, 1, 1])


def test_nstep_advantages_threshold_per_family_and_corrections():
    iv = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    out = R.recap_advantages(VALUES, SPANS, 10, FAMILY, iv, 0.5, kind="nstep", n=2)
    # test_recap_advantage's hand-worked n = 2 advantages of the same episodes
    np.testing.assert_allclose(out.advantages, [0.05, 0, 0.05, 0, -0.35, -0.3, -0.15], atol=1e-6)
    # family 0: median 0.025 -> frames 0, 2; family 1: median -0.3 -> frames 5, 6; frame 4
    # was corrected
    np.testing.assert_array_equal(out.indicator, [1, 0, 1, 0, 1, 1, 1])
    assert out.q is None and out.values is VALUES and out.family is FAMILY


def test_chunk_advantages_are_q_minus_v():
    q = VALUES + np.array([0.1, -0.1, 0.2, 0, 0, 0.3, -0.2], np.float32)
    out = R.recap_advantages(VALUES, SPANS, 10, FAMILY, np.zeros(7, bool), 0.5, kind="chunk", q=q)
    np.testing.assert_allclose(out.advantages, q - VALUES)
    assert out.advantages.dtype == np.float32 and out.q is q
    np.testing.assert_array_equal(out.indicator, [1, 0, 1, 0, 1, 1, 0])
    with pytest.raises(ValueError, match="chunk advantages need q"):
        R.recap_advantages(VALUES, SPANS, 10, FAMILY, np.zeros(7, bool), 0.5, kind="chunk")


def test_centred_advantages_rank_actions_within_each_episode():
    """Two episodes of one family, the first better throughout: uncentred, the best half
    of the frames are all the first episode's; centred within each episode, each episode's
    own better frames are positive, and each episode's centred advantages sum to 0."""
    spans = R.EpisodeSpans(np.array([0, 4]), np.array([4, 8]), np.array([1, 0]))
    q = np.array([0.9, 0.5, 0.7, 0.6, 0.1, 0.3, -0.2, 0.0], np.float32)
    v, fam, iv = np.zeros(8, np.float32), np.zeros(8, int), np.zeros(8, bool)
    plain = R.recap_advantages(v, spans, 10, fam, iv, 0.5, kind="chunk", q=q)
    np.testing.assert_array_equal(plain.indicator, [1, 1, 1, 1, 0, 0, 0, 0])
    centred = R.recap_advantages(v, spans, 10, fam, iv, 0.5, kind="chunk", q=q, center=True)
    # episode 0: mean 0.675 -> 0.225, -0.175, 0.025, -0.075; episode 1: mean 0.05 -> 0.05,
    # 0.25, -0.25, -0.05; the median of the eight is -0.0125 -> the four above it
    want = [0.225, -0.175, 0.025, -0.075, 0.05, 0.25, -0.25, -0.05]
    np.testing.assert_allclose(centred.advantages, want, atol=1e-6)
    np.testing.assert_array_equal(centred.indicator, [1, 0, 1, 0, 1, 1, 0, 0])
    np.testing.assert_allclose(centred.advantages[:4].sum(), 0, atol=1e-6)
    np.testing.assert_allclose(centred.advantages[4:].sum(), 0, atol=1e-6)


def test_before_takeovers_marks_the_autonomous_frames_leading_to_each_takeover():
    """Episode [0, 10): takeovers at 4-5 and 8; episode [10, 14): a takeover at its first
    frame (nothing before it in the episode) and none after."""
    from anyskill.algos.recap.advantage import before_takeovers

    iv = np.zeros(14, bool)
    iv[[4, 5, 8, 10]] = True
    start, stop = np.array([0, 10]), np.array([10, 14])
    got = before_takeovers(start, stop, iv, 3)
    # 1-3 lead to the first takeover; 6-7 to the second (not past the first one's end)
    np.testing.assert_array_equal(np.flatnonzero(got), [1, 2, 3, 6, 7])
    assert not before_takeovers(start, stop, iv, 0).any()
    np.testing.assert_array_equal(np.flatnonzero(before_takeovers(start, stop, iv, 1)), [3, 7])
    with pytest.raises(ValueError, match="takeover window must be >= 0"):
        before_takeovers(start, stop, iv, -1)


def test_the_takeover_split_labels_the_lead_up_negative_and_the_takeover_positive():
    """Failed episode [4, 7) with a takeover at frame 6: its advantages would make frame 5
    positive; split with a window of 1, frame 5 is the failure it was heading to."""
    iv = np.array([0, 0, 0, 0, 0, 0, 1], bool)
    plain = R.recap_advantages(VALUES, SPANS, 10, FAMILY, iv, 0.5, kind="nstep", n=2)
    assert plain.indicator[5] and plain.indicator[6]
    split = R.recap_advantages(
        VALUES, SPANS, 10, FAMILY, iv, 0.5, kind="nstep", n=2, before_takeover=1
    )
    np.testing.assert_array_equal(split.indicator, [1, 0, 1, 0, 0, 0, 1])
    assert split.advantages[5] == plain.advantages.min()
    np.testing.assert_array_equal(np.delete(split.advantages, 5), np.delete(plain.advantages, 5))


@pytest.mark.parametrize("with_q", [False, True])
def test_advantages_file_round_trips(tmp_path, with_q):
    adv = R.recap_advantages(VALUES, SPANS, 10, FAMILY, np.zeros(7, bool), 0.3, n=2)
    if with_q:
        adv = dataclasses.replace(adv, q=VALUES + 1)
    adv.save(tmp_path / "advantage-r1.npz")
    with np.load(tmp_path / "advantage-r1.npz") as f:  # the flywheel's file format
        assert set(f.files) == {"values", "advantages", "indicator", "family"} | (
            {"q"} if with_q else set()
        )
    back = R.Advantages.load(tmp_path / "advantage-r1.npz")
    for field in ("values", "advantages", "indicator", "family", "q"):
        a, b = getattr(adv, field), getattr(back, field)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp*"))
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match=r"other.npz: not an advantage file"):
        R.Advantages.load(tmp_path / "other.npz")


def test_held_out_detection_scores_only_unseen_uncorrected_episodes():
    # ep 0 [0, 3) success (seen in training), ep 1 [3, 6) failure, ep 2 [6, 9) failure but
    # corrected, ep 3 [9, 12) success
    spans = R.EpisodeSpans(np.array([0, 3, 6, 9]), np.array([3, 6, 9, 12]), np.array([1, 0, 0, 1]))
    iv = np.zeros(12, bool)
    iv[7] = True
    v = np.array([0, 0, 0, -0.5, -0.92, -1.0, 0, 0, 0, -0.2, -0.1, 0.0], np.float32)
    asked = []

    def values_of(frames):
        asked.append(np.asarray(frames))
        return v[frames]

    out = R.held_out_failure_detection(values_of, spans, np.arange(4), iv, seen=1)
    np.testing.assert_array_equal(asked[0], [3, 4, 5, 9, 10, 11])
    assert out["episode_ids"] == [1, 3] and out["episodes"] == 2 and out["failures"] == 1
    by_threshold = {r["threshold"]: r for r in out["rows"]}
    # episode 1 drops below -0.95 at its frame 2 (1 step before its end), below -0.9 at 1
    assert by_threshold[-0.95]["mean_lead_steps"] == 1
    assert by_threshold[-0.9]["mean_lead_steps"] == 2
    assert by_threshold[-0.9]["precision"] == 1.0 and by_threshold[-0.9]["recall"] == 1.0
    assert R.held_out_failure_detection(values_of, spans, np.arange(4), iv, seen=4) is None


def test_family_ids_of_the_tabletop_instructions():
    """A tabletop instruction's group is its family; any other instruction (an adapter
    env's task) is a group of its own, past the families."""
    from anyskill.envs.tabletop import tasks as T

    rows, _ = T.task_table(T.FAMILIES, "all")
    first, last = rows[0], rows[-1]
    tasks = [T.instruction(first), "sing a song", T.instruction(last), "push the T"]
    fam = R.family_ids(tasks, np.array([0, 1, 2, 3, 1, -1]))
    f, n = int(first[T.FAMILY]), len(T.FAMILIES)
    np.testing.assert_array_equal(fam, [f, n + 1, int(last[T.FAMILY]), n + 3, n + 1, f])
    assert int(first[T.FAMILY]) != int(last[T.FAMILY])  # the table spans several families


@dataclasses.dataclass(frozen=True)
class LinearValue:
    """A stand-in value function: ``V = w . state`` (+ sum of the chunk for ``Q``)."""

    def expected(self, params, obs, chunk=None):
        v = obs @ params
        return v if chunk is None else v + chunk.sum(-1)


class Frames:
    """A stand-in dataset: frame ``i``'s observation is ``[i, 1]``, its chunk ``[i, i]``."""

    def __init__(self, n):
        self.ds = type("DS", (), {"num_frames": n})()

    def obs_at(self, idx):
        idx = np.asarray(idx, np.float32)
        return np.stack([idx, np.ones_like(idx)], -1)

    def chunk_at(self, idx):
        idx = np.asarray(idx, np.float32)
        return np.stack([idx, idx], -1)


def test_predict_values_batches_in_one_shape_and_keeps_frame_order():
    vf, w, data = LinearValue(), jnp.array([2.0, -1.0]), Frames(7)
    np.testing.assert_allclose(R.predict_values(vf, w, data, batch=3), 2 * np.arange(7) - 1)
    frames = np.array([6, 0, 3])
    np.testing.assert_allclose(R.predict_values(vf, w, data, frames, batch=2), [11, -1, 5])
    q = R.predict_values(vf, w, data, frames, batch=2, q=True)
    np.testing.assert_allclose(q, [11 + 12, -1, 5 + 6])


def test_train_steps_counts_from_start_and_reports_progress():
    calls = []

    def step_fn(state, batch):
        return state + batch, {"loss": state}

    seen = list(learn.train_steps(step_fn, 10, lambda: 1, 5, start=2, progress=calls.append))
    assert [s for s, _, _ in seen] == [3, 4, 5] and [st for _, st, _ in seen] == [11, 12, 13]
    assert calls == [1, 1, 1]
    assert list(learn.train_steps(step_fn, 0, lambda: 1, 5, start=5)) == []
    state, history = learn.fit(step_fn, 0, iter(range(10)).__next__, 4)
    assert state == 0 + 1 + 2 + 3 and [m["loss"] for m in history] == [0, 0, 1, 3]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from anyskill.algos.vla.config import ModelConfig
    from anyskill.data.reader import Dataset
    from anyskill.data.record import record_expert

    path = tmp_path_factory.mktemp("recap") / "reach"
    record_expert(path, "tabletop-reach", episodes=4, images=False, seed=1, batch=4)
    ds = Dataset.open(path)
    cfg = ModelConfig(
        arch="mlp-flow",
        horizon=4,
        num_steps=2,
        width=16,
        depth=1,
        mlp_width=32,
        max_text_len=12,
        state_dim=int(np.prod(ds.info.features["observation.state"].shape)),
        action_dim=int(np.prod(ds.info.features["action"].shape)),
        num_cameras=0,
    )
    return ds, cfg


@pytest.mark.slow  # records episodes and compiles two networks (~15 s of CPU)
def test_value_fit_and_policy_finetune_equal_the_loops_they_replaced(tiny_data):
    """ValueFunction.train and finetune_policy run through anyskill.learn; the plain loops
    they replaced (the flywheel's own copies) give the same weights, bit for bit."""
    from anyskill.algos.recap.value import ValueConfig, ValueFunction
    from anyskill.algos.vla.config import TrainConfig
    from anyskill.algos.vla.data import TrainingData
    from anyskill.algos.vla.model import PolicyModel
    from anyskill.algos.vla.train import TrainState, make_optimizer, make_train_step

    ds, cfg = tiny_data
    vf = ValueFunction(cfg, ValueConfig(steps=6, batch_size=8, hidden=16))
    targets = np.linspace(-1, 0, ds.num_frames).astype(np.float32)
    init = vf.init(jax.random.key(3))
    got, losses = vf.train(init, TrainingData.build(ds, cfg, 8, 5), targets, 6, seed=2)
    opt, step = vf.make_train_step()
    params, opt_state, data = init, opt.init(init), TrainingData.build(ds, cfg, 8, 5)
    bins, key, want_losses = to_bins(targets), jax.random.key(2), []
    for i in range(6):
        b = data.batch()
        params, opt_state, loss = step(
            params,
            opt_state,
            jax.random.fold_in(key, i),
            b.obs,
            b.actions,
            bins[data.last_index],
            bins[data.last_index],  # Q's targets: the same Monte-Carlo returns
        )
        want_losses.append(float(loss))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(losses, np.array(want_losses, np.float32))

    model = PolicyModel(cfg)
    start = model.init(jax.random.key(0))
    got = R.finetune_policy(model, start, TrainingData.build(ds, cfg, 8, 7), 5, 1e-3, seed=4)
    opt = make_optimizer(TrainConfig(steps=5, lr=1e-3, warmup_steps=2))
    step_fn = make_train_step(model, opt, 0.99)
    ts = TrainState(start, start, opt.init(start), jnp.int32(0), jax.random.PRNGKey(4))
    data = TrainingData.build(ds, cfg, 8, 7)
    for _ in range(5):
        ts, _ = step_fn(ts, data.batch())
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ts.ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(start), strict=True)
    )  # it trained


@pytest.mark.slow  # compiles the value network (~10 s of CPU)
def test_q_targets_train_q_where_the_chunk_is_shown_and_v_where_it_is_hidden(tiny_data):
    """With every chunk shown (chunk_dropout 0) training on (targets, q_targets) is training
    on q_targets alone; with every chunk hidden (1) it is training on targets alone."""
    from anyskill.algos.recap.value import ValueConfig, ValueFunction
    from anyskill.algos.vla.data import TrainingData

    ds, cfg = tiny_data
    v_t = np.linspace(-1, 0, ds.num_frames).astype(np.float32)
    q_t = np.linspace(0, -1, ds.num_frames).astype(np.float32)

    def fit(dropout, targets, q_targets=None):
        vf = ValueFunction(cfg, ValueConfig(batch_size=8, hidden=16, chunk_dropout=dropout))
        data = TrainingData.build(ds, cfg, 8, 5)
        got, _ = vf.train(vf.init(jax.random.key(3)), data, targets, 3, 2, q_targets=q_targets)
        return jax.tree.leaves(got)

    def same(a, b):
        return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))

    assert same(fit(0.0, v_t, q_t), fit(0.0, q_t)) and not same(fit(0.0, v_t, q_t), fit(0.0, v_t))
    assert same(fit(1.0, v_t, q_t), fit(1.0, v_t))
    with pytest.raises(ValueError, match="q_targets has shape"):
        fit(0.5, v_t, q_t[:3])
