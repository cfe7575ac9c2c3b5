"""RECAP's label diagnostics (algos/recap/diagnostics.py) on data with a known answer: exact
ROC AUC against hand-worked cases, label predictability where the label is a function of the
action only or of the state only, the episode's share of the label variance, a flywheel run's
labels read back frame by frame, the paired held-out loss, and the oracle-label test."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from anyskill.algos.recap import diagnostics as D

# one hidden layer, few steps: seconds, and still far from chance where the answer is known
SMALL = D.ClassifierConfig(folds=4, steps=200, batch_size=128, width=64, depth=0)


# ---- ROC AUC ------------------------------------------------------------------------------------


def test_roc_auc_hand_worked():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of the 4 pairs ordered
    assert D.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a tie counts one half: pos 0.5 vs neg 0.5 -> 1/2; the other 3 pairs ordered
    assert D.roc_auc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875
    assert D.roc_auc([3.0, 3.0, 3.0], [1, 0, 1]) == 0.5  # all tied
    assert D.roc_auc([2.0, 1.0], [0, 1]) == 0.0  # perfectly wrong
    assert D.roc_auc([1.0, 2.0, 3.0], [False, True, True]) == 1.0
    with pytest.raises(ValueError, match="both classes.*0 positive and 3 negative"):
        D.roc_auc([1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="scores has 2 entries, labels 3"):
        D.roc_auc([1, 2], [0, 1, 1])


def test_roc_auc_equals_the_pair_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert D.roc_auc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)


# ---- the episode's share of the label variance ------------------------------------------------


def test_episode_variance_share_hand_built():
    episode = np.repeat([0, 1, 2, 3], 4)
    constant = np.repeat([1, 0, 0, 1], 4).astype(bool)
    assert D.episode_variance_share(constant, episode) == pytest.approx(1.0)
    same_mix = np.tile([1, 0, 1, 0], 4).astype(bool)  # every episode half positive
    assert D.episode_variance_share(same_mix, episode) == pytest.approx(0.0)
    # episode means 1, 0.5, 0.5, 0 around 0.5: between = (0.25 + 0 + 0 + 0.25)/4, total 0.25
    mixed = np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0], bool)
    assert D.episode_variance_share(mixed, episode) == pytest.approx(0.5)
    assert np.isnan(D.episode_variance_share(np.ones(16, bool), episode))


def test_episode_folds_keep_every_episode_whole():
    episode = np.repeat(np.arange(10), 3)
    fold = D.episode_folds(episode, 4, seed=0)
    for e in range(10):
        assert len(set(fold[episode == e])) == 1
    assert sorted(np.bincount(fold[::3])) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="3 episodes cannot be split into 4 folds"):
        D.episode_folds(np.arange(3), 4, seed=0)


# ---- label predictability ---------------------------------------------------------------------


def _frames(seed=0, episodes=40, length=25):
    rng = np.random.default_rng(seed)
    n = episodes * length
    return (
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.normal(size=(n, 4)).astype(np.float32),
        np.repeat(np.arange(episodes), length),
    )


def test_a_label_of_the_action_only_is_seen_from_the_chunk_only():
    state, chunk, episode = _frames()
    p = D.label_predictability(state, chunk, chunk[:, 0] > 0, episode, seed=0, cfg=SMALL)
    assert p.auc_state_chunk > 0.9
    assert 0.4 < p.auc_state < 0.6
    assert p.auc_gap > 0.3
    assert p.episodes == 40 and p.frames == 1000 and len(p.fold_auc_state) == 4
    assert "clear information" in D.reading(p)
    weak = dataclasses.replace(p, auc_state_chunk=0.58, auc_state=0.47, auc_gap=0.11)
    assert "adds a little" in D.reading(weak) and "below chance" in D.reading(weak)


def test_a_label_of_the_state_only_leaves_no_gap():
    state, chunk, episode = _frames(1)
    p = D.label_predictability(state, chunk, state[:, 1] > 0, episode, seed=0, cfg=SMALL)
    assert p.auc_state_chunk > 0.9 and p.auc_state > 0.9
    assert abs(p.auc_gap) < 0.05
    assert "adds (almost) nothing" in D.reading(p)


def test_label_predictability_refuses_bad_input():
    state, chunk, episode = _frames()
    with pytest.raises(ValueError, match="different lengths"):
        D.label_predictability(state[:-1], chunk, chunk[:, 0] > 0, episode)
    with pytest.raises(ValueError, match="nothing to predict"):
        D.label_predictability(state, chunk, np.ones(len(state), bool), episode)


# ---- a flywheel run's labels -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A flywheel run directory by hand: config.json, a store of 3 episodes (5, 3, 4 frames)
    and round 1's advantages covering the first two."""
    from anyskill import rundir
    from anyskill.algos.recap.recap import Advantages
    from anyskill.algos.vla.config import ModelConfig
    from anyskill.data.format import vector_feature
    from anyskill.data.writer import EpisodeWriter
    from anyskill.flywheel.config import FlywheelConfig

    root = tmp_path_factory.mktemp("run")
    model = ModelConfig(arch="mlp-flow", mlp_width=32, depth=1, width=16, horizon=3)
    rundir.write_json(
        root / "config.json",
        rundir.config_to_json(FlywheelConfig(run_dir=root, model=model, replan_every=3)),
    )
    features = {"observation.state": vector_feature(2), "action": vector_feature(2)}
    rng = np.random.default_rng(0)
    actions = []
    with EpisodeWriter.create(root / "data", features, fps=10, durable=False) as w:
        for t in (5, 3, 4):
            a = rng.normal(size=(t, 2)).astype(np.float32)
            actions.append(a)
            w.add_episode(
                {"observation.state": rng.normal(size=(t, 2)).astype(np.float32), "action": a},
                task="reach the red target",
                success=True,
            )
    label = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    z = np.zeros(8, np.float32)
    Advantages(z, z, label, np.zeros(8, int)).save(root / "advantage-r1.npz")
    return root, actions, label


def test_label_data_reads_the_rounds_frames_and_chunks(fake_run):
    root, actions, label = fake_run
    d = D.label_data(root)  # the last round with advantages: 1
    assert D.advantage_rounds(root) == [1]
    np.testing.assert_array_equal(d.label, label)
    np.testing.assert_array_equal(d.episode, [0, 0, 0, 0, 0, 1, 1, 1])
    assert d.state.shape == (8, 2) and d.chunk.shape == (8, 3 * 2)
    # the chunk of the second episode's frame 1 (global 6): its actions 1, 2, then the last
    # one repeated; normalized as the policy's batches are (the store's action statistics)
    from anyskill.algos.vla.data import Normalizer
    from anyskill.data.reader import Dataset

    norm = Normalizer.from_dataset(Dataset.open(root / "data"))
    raw = actions[1][[1, 2, 2]]
    want = (raw - np.asarray(norm.action_mean)) / np.asarray(norm.action_std)
    np.testing.assert_allclose(d.chunk[6].reshape(3, 2), want, rtol=1e-5, atol=1e-6)


def test_label_data_refuses_a_missing_round_and_foreign_labels(fake_run, tmp_path):
    import shutil

    from anyskill.algos.recap.recap import Advantages

    root, _, _ = fake_run
    with pytest.raises(ValueError, match=r"advantage-r4.npz does not exist; --round must be one"):
        D.label_data(root, 4)
    other = tmp_path / "run"
    shutil.copytree(root, other)
    z = np.zeros(7, np.float32)  # 7 frames: not an episode boundary of the store
    Advantages(z, z, np.ones(7, bool), np.zeros(7, int)).save(other / "advantage-r2.npz")
    with pytest.raises(ValueError, match="no episode ending at frame 7"):
        D.label_data(other, 2)


def test_cli_diagnose_labels_prints_json_and_a_reading(fake_run, capsys):
    from anyskill.cli import main

    root, _, _ = fake_run
    args = ["--classifier.folds", "2", "--classifier.steps", "5", "--classifier.depth", "0"]
    assert main(["diagnose", "labels", str(root), "--round", "1", *args]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["frames"] == 8 and result["episodes"] == 2
    assert "held-out episodes" in out.splitlines()[-1]
    assert main(["diagnose", "label", str(root)]) == 2
    assert "did you mean 'labels'" in capsys.readouterr().err.lower()


# ---- the paired loss and the oracle test --------------------------------------------------------


def test_paired_losses_share_noise_and_time_per_frame(fake_run):
    """Told all-positive and then all-negative, a frame's "true" loss of one is the
    "flipped" loss of the other, bit for bit: each frame draws the same noise and flow time
    whatever label it is told."""
    import jax

    from anyskill.algos.vla.data import TrainingData, model_for_dataset
    from anyskill.algos.vla.model import PolicyModel
    from anyskill.data.reader import Dataset

    root, _, _ = fake_run
    ds = Dataset.open(root / "data")
    from anyskill.algos.vla.config import ModelConfig

    cfg = model_for_dataset(ModelConfig(arch="mlp-flow", mlp_width=32, depth=1, width=16), ds)
    model = PolicyModel(cfg)
    params = model.init(jax.random.key(0))
    data = TrainingData.build(ds, cfg, 4, 0)
    frames = np.arange(ds.num_frames)
    pos = D.paired_label_losses(model, params, data, np.ones(12, bool), frames, True, 3, batch=8)
    neg = D.paired_label_losses(model, params, data, np.zeros(12, bool), frames, True, 3, batch=8)
    np.testing.assert_array_equal(pos["true"], neg["flipped"])
    np.testing.assert_array_equal(pos["none"], neg["none"])
    assert pos["true"].shape == (12,) and not np.array_equal(pos["true"], pos["flipped"])


def _tiny_oracle(**kw) -> D.OracleConfig:
    from anyskill.algos.vla.config import ModelConfig

    return D.OracleConfig(
        model=ModelConfig(arch="mlp-flow", mlp_width=128, depth=2, width=16, horizon=4),
        classifier=SMALL,
        **kw,
    )


def test_oracle_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="need 0 < slow_speed < fast_speed"):
        _tiny_oracle(slow_speed=1.0)
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        _tiny_oracle(episodes=0)


@pytest.mark.slow  # records two controllers and trains a policy (~30 s of CPU)
def test_oracle_label_gap_is_positive_where_the_label_sets_the_action(tmp_path):
    cfg = _tiny_oracle(
        episodes=24, heldout_episodes=8, pretrain_steps=50, steps=400, lr=3e-3, work_dir=tmp_path
    )
    r = D.oracle_label_gap(cfg)
    assert r.slow_steps > r.fast_steps  # the controllers differ
    assert r.loss_gap > 3 * r.loss_gap_se and r.loss_gap > 0
    # 24 start states: the label is seen from (state, chunk), and better than from the state
    assert r.predictability.auc_state_chunk > 0.7 and r.predictability.auc_gap > 0.05
    assert "reads the indicator" in D.oracle_reading(r)
    assert (tmp_path / "train" / "meta").is_dir() and (tmp_path / "heldout" / "meta").is_dir()


def test_paired_episodes_are_folded_together():
    """Two episodes per start state with opposite labels, the start state visible in the
    state: split by episode, a classifier remembers the partner's label and scores far below
    chance; with the pair as the group it is at chance, as it should be."""
    rng = np.random.default_rng(2)
    pairs, length = 40, 10
    start = np.repeat(rng.normal(size=(pairs, 3)), 2 * length, axis=0)
    state = (start + 0.01 * rng.normal(size=start.shape)).astype(np.float32)
    chunk = rng.normal(size=(len(state), 2)).astype(np.float32)
    episode = np.repeat(np.arange(2 * pairs), length)
    label = episode % 2 == 0
    split_pairs = D.label_predictability(state, chunk, label, episode, seed=0, cfg=SMALL)
    together = D.label_predictability(
        state, chunk, label, episode, seed=0, cfg=SMALL, groups=episode // 2
    )
    assert split_pairs.auc_state < 0.3
    assert 0.35 < together.auc_state < 0.65


def test_label_sources_split_labels_and_weights_by_where_frames_come_from():
    sources = np.array(["demonstration"] * 2 + ["success"] * 4 + ["failure"] * 3 + ["corrected"])
    ind = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 1], bool)
    w = np.array([2, 0, 4, 2, 0, 0, 1, 1, 0, 0], float)
    out = D.label_sources(ind, sources, w)
    assert out["frames"] == 10
    assert out["demonstration"] == {"frames": 0.2, "positive": 0.5, "weight": 0.2}
    assert out["success"] == {"frames": 0.4, "positive": 0.5, "weight": 0.6}
    assert out["failure"]["positive"] == 0.0 and out["failure"]["weight"] == 0.2
    assert out["corrected"] == {"frames": 0.1, "positive": 1.0, "weight": 0.0}
    # (sum w)^2 / sum w^2 / N = 100 / 26 / 10
    assert out["effective_sample_fraction"] == pytest.approx(100 / 26 / 10)
    assert "effective_sample_fraction" not in D.label_sources(ind, sources)
    with pytest.raises(ValueError, match="must cover the same frames"):
        D.label_sources(ind[:3], sources)
