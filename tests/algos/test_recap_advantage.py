"""RECAP's math against hand-worked numbers: value targets, n-step advantages, thresholds,
the indicator (corrections positive, dropout), failure detection."""

from __future__ import annotations

import numpy as np
import pytest

from anyskill.algos.recap import advantage as A

# one successful episode of 4 frames [0, 4) and one failed episode of 3 frames [4, 7)
START, STOP, SUCCESS, HORIZON = np.array([0, 4]), np.array([4, 7]), np.array([1, 0]), 10


def test_value_targets_success_and_failure():
    v = A.value_targets(START, STOP, SUCCESS, HORIZON)
    # success: -(T - t)/horizon with T = 4: 4, 3, 2, 1 steps to go; failure: -1 throughout
    np.testing.assert_allclose(v, [-0.4, -0.3, -0.2, -0.1, -1, -1, -1], atol=1e-6)


def test_value_targets_need_labels():
    with pytest.raises(ValueError, match="episodes \\[1\\].*label"):
        A.value_targets(START, STOP, np.array([1, -1]), HORIZON)


def test_nstep_advantages_hand_worked():
    values = np.array([-0.5, -0.3, -0.25, -0.1, -0.8, -0.9, -0.95])
    adv = A.nstep_advantages(values, START, STOP, SUCCESS, HORIZON, n=2)
    # success episode (terminal value 0), r = -0.1 per step:
    #   t=0: -0.2 + V(2) - V(0) = -0.2 - 0.25 + 0.5 = 0.05
    #   t=1: -0.2 + V(3) - V(1) = -0.2 - 0.1 + 0.3 = 0.0
    #   t=2: reaches the end: -0.2 + 0 - (-0.25) = 0.05
    #   t=3: one step left: -0.1 + 0 - (-0.1) = 0.0
    # failure episode (terminal value -1):
    #   t=4: -0.2 + V(6) - V(4) = -0.2 - 0.95 + 0.8 = -0.35
    #   t=5: -0.2 - 1 + 0.9 = -0.3
    #   t=6: -0.1 - 1 + 0.95 = -0.15
    np.testing.assert_allclose(adv, [0.05, 0.0, 0.05, 0.0, -0.35, -0.3, -0.15], atol=1e-6)


def test_nstep_targets_hand_worked():
    """Success [0, 4) and failure [4, 7), n = 2, horizon 10: the targets of Q(s, chunk) are
    two step costs plus V two frames on, or the terminal value near the end."""
    v = np.array([-0.5, -0.3, -0.25, -0.1, -0.8, -0.9, -0.95])
    got = A.nstep_targets(v, [0, 4], [4, 7], [1, 0], 10, 2)
    want = [-0.2 - 0.25, -0.2 - 0.1, -0.2 + 0.0, -0.1 + 0.0, -0.2 - 0.95, -0.2 - 1, -0.1 - 1]
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(
        A.nstep_advantages(v, [0, 4], [4, 7], [1, 0], 10, 2), got - v, atol=1e-6
    )


def test_perfect_values_give_zero_advantage_on_success():
    v = A.value_targets(START, STOP, SUCCESS, HORIZON)
    adv = A.nstep_advantages(v, START, STOP, SUCCESS, HORIZON, n=3)
    np.testing.assert_allclose(adv[:4], 0.0, atol=1e-6)
    assert (adv[4:] < 0).all()


def test_threshold_gives_the_requested_positive_fraction_per_task():
    rng = np.random.default_rng(0)
    adv = np.concatenate([rng.normal(0, 1, 1000), rng.normal(5, 0.01, 3000)])
    task = np.concatenate([np.zeros(1000, int), np.ones(3000, int)])
    thr = A.positive_threshold(adv, task, 0.3)
    pos = A.indicator(adv, task, thr)
    assert pos[task == 0].mean() == pytest.approx(0.3, abs=0.002)
    assert pos[task == 1].mean() == pytest.approx(0.3, abs=0.002)


def test_corrected_frames_are_positive():
    adv = np.array([-5.0, -5.0, 1.0, 0.0])
    task = np.zeros(4, int)
    iv = np.array([True, False, False, False])
    pos = A.indicator(adv, task, {0: 0.5}, iv)
    np.testing.assert_array_equal(pos, [True, False, True, False])


def test_indicator_dropout_rate():
    drop = A.drop_indicator(np.random.default_rng(1), 20_000, 0.3)
    # binomial std at n = 20000: 0.0032; 4 sigma
    assert abs(drop.mean() - 0.3) < 0.013


def test_prompt_with_indicator():
    assert A.prompt_with_indicator("go", None) == "go"
    assert A.prompt_with_indicator("go", True) == "go, advantage: positive"
    assert A.prompt_with_indicator("go", False) == "go, advantage: negative"


def test_bins_round_trip():
    c = A.bin_centers()
    assert c[0] == -1 and c[-1] == 0 and len(c) == A.NUM_BINS
    np.testing.assert_array_equal(A.to_bins(c), np.arange(A.NUM_BINS))
    assert A.to_bins([-2.0, 0.5])[0] == 0 and A.to_bins([0.5])[0] == A.NUM_BINS - 1


def test_failure_detection_precision_recall_lead():
    values = [
        np.array([-0.5, -0.6, -0.95, -0.99]),  # failure, flagged at t=2: lead 2
        np.array([-0.5, -0.4, -0.3]),  # success, not flagged
        np.array([-0.5, -0.92, -0.3]),  # success, flagged (false alarm)
        np.array([-0.5, -0.5, -0.5, -0.5, -0.5]),  # failure, missed
    ]
    d = A.failure_detection(values, np.array([0, 1, 1, 0], bool), threshold=-0.9)
    assert d["precision"] == 0.5 and d["recall"] == 0.5
    assert d["mean_lead_steps"] == 2 and d["flagged"] == 2


def _four_episodes(tmp_path, arch: str):
    """Training data over a 4-episode store (one task), 4,000 samples per batch."""
    from anyskill.algos.vla.config import ModelConfig
    from anyskill.algos.vla.data import TrainingData
    from anyskill.data.format import vector_feature
    from anyskill.data.reader import Dataset
    from anyskill.data.writer import EpisodeWriter

    feats = {"observation.state": vector_feature(2), "action": vector_feature(2)}
    w = EpisodeWriter.create(tmp_path / "d", feats, fps=10)
    for e in range(4):
        frames = {
            k: np.random.default_rng(e).normal(size=(20, 2)).astype(np.float32) for k in feats
        }
        w.add_episode(frames, task="go to the red zone", success=True)
    ds = Dataset.open(tmp_path / "d")
    cfg = ModelConfig(
        arch=arch, horizon=4, max_text_len=12, state_dim=2, action_dim=2, num_cameras=0
    )
    return TrainingData.build(ds, cfg, batch_size=4000, seed=0)


def test_training_batches_carry_the_indicator_with_dropout(tmp_path):
    """The policy's batches: positive frames get "advantage: positive", negative frames
    "advantage: negative", and ~30 % of samples the plain instruction."""
    from anyskill.nets.transformer import tokenize

    data = _four_episodes(tmp_path, "mlp-flow")
    positive = np.arange(data.ds.num_frames) % 2 == 0
    data.set_indicator(positive, A.prompt_with_indicator, lambda r, n: A.drop_indicator(r, n, 0.3))
    b = data.batch()
    tok = np.asarray(b.obs.tokens)
    plain = tokenize("go to the red zone", 12)[0]
    pos = tokenize("go to the red zone, advantage: positive", 12)[0]
    neg = tokenize("go to the red zone, advantage: negative", 12)[0]
    is_plain = (tok == plain).all(1)
    assert abs(is_plain.mean() - 0.3) < 0.03  # binomial std at n = 4000: 0.007
    want = np.where(positive[data.last_index][:, None], pos, neg)
    assert ((tok == want).all(1) | is_plain).all()


def test_negatives_unconditioned_show_negative_frames_without_the_indicator(tmp_path):
    """Classifier-free style: no sample says "advantage: negative"; negative frames carry the
    plain instruction, positive ones "advantage: positive" except the ~30 % dropped."""
    from anyskill.nets.transformer import tokenize

    data = _four_episodes(tmp_path, "mlp-flow")
    positive = np.arange(data.ds.num_frames) % 2 == 0
    data.set_indicator(
        positive,
        A.prompt_with_indicator,
        lambda r, n: A.drop_indicator(r, n, 0.3),
        negatives_unconditioned=True,
    )
    tok = np.asarray(data.batch().obs.tokens)
    plain = (tok == tokenize("go to the red zone", 12)[0]).all(1)
    said_pos = (tok == tokenize("go to the red zone, advantage: positive", 12)[0]).all(1)
    pos = positive[data.last_index]
    assert (plain | said_pos).all() and not said_pos[~pos].any()
    assert plain[~pos].all() and abs(plain[pos].mean() - 0.3) < 0.04


def test_training_batches_carry_the_indicator_as_an_input_with_dropout(tmp_path):
    """``--indicator embedding``: the instruction stays plain; ``Obs.indicator`` is 1 on
    positive frames, 2 on negative ones and 0 (none) on ~30 % of samples."""
    from anyskill.nets.transformer import tokenize

    data = _four_episodes(tmp_path, "vla")
    positive = np.arange(data.ds.num_frames) % 2 == 0
    data.set_indicator(positive, None, lambda r, n: A.drop_indicator(r, n, 0.3))
    b = data.batch()
    assert (np.asarray(b.obs.tokens) == tokenize("go to the red zone", 12)[0]).all()
    ind = np.asarray(b.obs.indicator)
    assert abs((ind == 0).mean() - 0.3) < 0.03  # binomial std at n = 4000: 0.007
    want = np.where(positive[data.last_index], 1, 2)
    assert ((ind == want) | (ind == 0)).all()
    assert set(np.unique(ind)) == {0, 1, 2}


def test_chunk_at_gives_the_batch_action_chunks(tmp_path):
    """``--advantage chunk`` scores each frame with the chunk that followed it: the same
    normalized chunks (last action repeated past the episode's end) the batches train on."""
    data = _four_episodes(tmp_path, "vla")
    b = data.batch()
    np.testing.assert_allclose(data.chunk_at(data.last_index), b.actions, atol=1e-6)
    last = data.ds.episodes.stop - 1  # each episode's last frame: its action, 4 times
    ch = data.chunk_at(last)
    assert (ch == ch[:, :1]).all()
