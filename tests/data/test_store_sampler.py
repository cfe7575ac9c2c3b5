"""Windows and chunks at episode boundaries, goal relabeling, filtering and weighting."""

from __future__ import annotations

import numpy as np
import pytest
from store_helpers import write_dataset

from anyskill.data.reader import Dataset
from anyskill.data.sampler import Sampler, SamplerConfig, future_offsets

LENGTHS = [5, 1, 7, 3, 6]


@pytest.fixture
def ds(tmp_path):
    write_dataset(tmp_path / "ds", LENGTHS)
    return Dataset.open(tmp_path / "ds")


def _naive(ds, t, w, h):
    """Plain-Python reference for one sample's window and chunk."""
    e = int(ds.columns["episode_index"][t])
    start, stop = int(ds.episodes.start[e]), int(ds.episodes.stop[e])
    state = ds.columns["observation.state"]
    action = ds.columns["action"]
    win, wmask, ch, cmask = [], [], [], []
    for k in range(t - w + 1, t + 1):
        win.append(state[max(k, start)])
        wmask.append(k >= start)
    for k in range(t, t + h):
        ch.append(action[min(k, stop - 1)])
        cmask.append(k < stop)
    return np.stack(win), np.array(wmask), np.stack(ch), np.array(cmask)


def test_windows_and_chunks_match_a_python_loop_at_every_frame(ds):
    s = Sampler(ds, SamplerConfig(batch_size=4, obs_window=3, chunk=4))
    t = np.arange(ds.num_frames)
    b = s.batch_at(t)
    for i in t:
        win, wmask, ch, cmask = _naive(ds, i, 3, 4)
        np.testing.assert_array_equal(b.state[i], win)
        np.testing.assert_array_equal(b.state_mask[i], wmask)
        np.testing.assert_array_equal(b.action[i], ch)
        np.testing.assert_array_equal(b.action_mask[i], cmask)
        e = b.episode_index[i]
        assert ds.episodes.start[e] <= i + b.goal_offset[i] < ds.episodes.stop[e]
        np.testing.assert_array_equal(
            b.goal[i], ds.columns["observation.state"][i + b.goal_offset[i]]
        )
    # the one-frame episode: everything past it is padding, its goal is itself
    one = int(ds.episodes.start[1])
    assert b.action_mask[one].tolist() == [True, False, False, False]
    assert b.goal_offset[one] == 0
    # the last frame of an episode never looks into the next one
    last = int(ds.episodes.stop[0]) - 1
    np.testing.assert_array_equal(b.action[last, 1:], np.repeat(b.action[last, :1], 3, 0))


def test_batch_shapes(ds):
    b = Sampler(ds, SamplerConfig(batch_size=16, obs_window=2, chunk=50)).sample()
    assert b.state.shape == (16, 2, 4) and b.action.shape == (16, 50, 3)
    assert b.action_mask.shape == (16, 50) and b.goal.shape == (16, 4)
    assert b.intervention.shape == (16, 50) and b.intervention.dtype == bool


def test_geometric_offsets_follow_truncated_geometric():
    rng = np.random.default_rng(0)
    gamma, n = 0.7, 6
    d = future_offsets(rng, np.full(200_000, n), "geometric", gamma)
    p = gamma ** np.arange(1, n + 1)
    p /= p.sum()
    freq = np.bincount(d, minlength=n + 1)[1:] / len(d)
    np.testing.assert_allclose(freq, p, atol=0.005)
    assert (future_offsets(rng, np.zeros(5, int), "geometric", gamma) == 0).all()
    assert future_offsets(rng, np.array([4]), "final", gamma).tolist() == [4]
    u = future_offsets(rng, np.full(10000, 3), "uniform", gamma)
    assert set(u.tolist()) == {1, 2, 3}


def test_frames_are_uniform_by_default_and_episodes_equal_with_episode_weighting(ds):
    s = Sampler(ds, SamplerConfig(seed=1))
    counts = np.bincount(s.sample_indices(200_000), minlength=ds.num_frames) / 200_000
    np.testing.assert_allclose(counts, 1 / ds.num_frames, atol=0.005)
    s = Sampler(ds, SamplerConfig(weighting="episode", seed=2))
    e = ds.columns["episode_index"][s.sample_indices(100_000)]
    np.testing.assert_allclose(np.bincount(e) / 1e5, 1 / len(LENGTHS), atol=0.01)


def test_filters_by_source_task_and_success(ds):
    ep = ds.episodes
    s = Sampler(ds, SamplerConfig(sources=("autonomous",)))
    e = np.unique(ds.columns["episode_index"][s.sample_indices(2000)])
    assert set(e.tolist()) == set(np.flatnonzero(ep.source == "autonomous").tolist())
    s = Sampler(ds, SamplerConfig(success=True))
    e = np.unique(ds.columns["episode_index"][s.sample_indices(2000)])
    assert set(e.tolist()) == set(np.flatnonzero(ep.success == 1).tolist())
    s = Sampler(ds, SamplerConfig(tasks=("task 1",)))
    assert (ds.columns["task_index"][s.sample_indices(500)] == ds.tasks.index("task 1")).all()
    with pytest.raises(ValueError, match="no frames left"):
        Sampler(ds, SamplerConfig(sources=("corrected",), success=False, tasks=("task 0",)))
    with pytest.raises(ValueError, match="unknown sources"):
        SamplerConfig(sources=("teleop",))


def test_advantage_filter_and_weighting(ds):
    adv = np.linspace(-2, 2, ds.num_frames)
    ds.annotate_frames("advantage", adv)
    s = Sampler(ds, SamplerConfig(min_advantage=0.0))
    assert (adv[s.sample_indices(5000)] >= 0).all()
    s = Sampler(ds, SamplerConfig(weighting="advantage", temperature=1.0, max_weight=100, seed=3))
    counts = np.bincount(s.sample_indices(400_000), minlength=ds.num_frames)
    w = np.exp(adv)
    np.testing.assert_allclose(counts / counts.sum(), w / w.sum(), atol=0.004)


def test_source_weights(ds):
    s = Sampler(ds, SamplerConfig(source_weights=(("corrected", 0.0),)))
    e = ds.columns["episode_index"][s.sample_indices(3000)]
    assert not (ds.episodes.source[e] == "corrected").any()
