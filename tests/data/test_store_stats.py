"""Normalization statistics against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from store_helpers import write_dataset

from anyskill.data import ops
from anyskill.data.reader import Dataset
from anyskill.data.stats import Normalizer, aggregate, compute_stats, image_stats


def test_compute_stats_matches_numpy():
    x = np.random.default_rng(0).normal(size=(1000, 5)).astype(np.float32) * [1, 2, 3, 4, 5]
    s = compute_stats(x)
    np.testing.assert_allclose(s.mean, x.mean(0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(s.std, x.astype(np.float64).std(0), rtol=1e-6)
    np.testing.assert_array_equal(s.min, x.min(0))
    np.testing.assert_array_equal(s.max, x.max(0))
    np.testing.assert_allclose(s.q01, np.quantile(x.astype(np.float64), 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(x.astype(np.float64), 0.99, axis=0))
    assert s.count.tolist() == [1000]


def test_aggregate_is_exact_for_moments():
    rng = np.random.default_rng(1)
    parts = [rng.normal(loc=i, scale=i + 1, size=(n, 3)) for i, n in enumerate([5, 50, 1, 300])]
    pooled = aggregate([compute_stats(p) for p in parts])
    allx = np.concatenate(parts)
    np.testing.assert_allclose(pooled.mean, allx.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled.std, allx.std(0), rtol=1e-10)
    np.testing.assert_array_equal(pooled.min, allx.min(0))
    np.testing.assert_array_equal(pooled.max, allx.max(0))
    assert pooled.count.tolist() == [len(allx)]


def test_image_stats_are_per_channel_in_unit_range():
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    frames[..., 1] = 255
    s = image_stats(frames)
    assert s.mean.shape == (3, 1, 1)
    np.testing.assert_allclose(s.mean.ravel(), [0, 1, 0])


def test_written_stats_json_matches_numpy_and_exact_recompute(tmp_path):
    write_dataset(tmp_path / "ds", [5, 9, 2, 13])
    ds = Dataset.open(tmp_path / "ds")
    raw = json.loads((tmp_path / "ds" / "meta" / "stats.json").read_text())
    x = np.asarray(ds.columns["observation.state"], np.float64)
    np.testing.assert_allclose(raw["observation.state"]["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(raw["observation.state"]["std"], x.std(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(raw["observation.state"]["min"], x.min(0))
    np.testing.assert_allclose(raw["observation.state"]["max"], x.max(0))
    assert raw["observation.state"]["count"] == [29]
    exact = ops.exact_stats(ds)
    np.testing.assert_allclose(
        exact["action"].q99, np.quantile(np.asarray(ds.columns["action"], np.float64), 0.99, axis=0)
    )
    ops.write_stats(ds, exact)
    np.testing.assert_allclose(ds.stats["action"].q01, exact["action"].q01)


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_normalizer_round_trips(mode):
    x = np.random.default_rng(2).uniform(-3, 7, size=(500, 2))
    n = Normalizer.from_stats(compute_stats(x), mode)
    y = n.normalize(x)
    np.testing.assert_allclose(n.unnormalize(y), x, rtol=1e-5, atol=1e-5)
    if mode == "quantile":
        assert np.quantile(y, 0.01, axis=0) == pytest.approx([-1, -1], abs=1e-3)
