"""Compatibility with LeRobot v3.0: a fixture written by LeRobot's own writer
(``LeRobotDataset.create`` + ``add_frame`` + ``save_episode``, lerobot 0.4.4; regenerate with
``benchmarks/lerobot_compat.py --fixture-out``) opens, validates and samples in anyskill."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from anyskill.data.format import SchemaMismatchError
from anyskill.data.reader import Dataset
from anyskill.data.sampler import Sampler, SamplerConfig
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v30_tiny"
LENGTHS = [4, 3]


def test_lerobot_written_dataset_loads():
    ds = Dataset.open(FIXTURE)
    assert ds.num_episodes == 2 and ds.num_frames == 7
    assert ds.info.robot_type == "lerobot-fixture"
    g = 0
    for e, n in enumerate(LENGTHS):
        assert ds.tasks[ds.episodes.task_index[e]] == f"lerobot task {e}"
        assert ds.episodes.source[e] == "demonstration" and ds.episodes.success[e] == -1
        for t in range(n):
            np.testing.assert_allclose(
                ds.columns["observation.state"][g], [e, t, e * 0.5 + t * 0.25]
            )
            np.testing.assert_allclose(ds.columns["action"][g], [t * 0.1, -e])
            g += 1
    assert not ds.intervention.any()  # LeRobot datasets have no intervention column


def test_lerobot_video_with_two_episodes_in_one_file_decodes():
    ds = Dataset.open(FIXTURE, mmap=False)
    for e, n in enumerate(LENGTHS):
        v = ds.episode_video(e, "observation.images.top")  # AV1, from_timestamp > 0 for e = 1
        assert v.shape == (n, 32, 32, 3)
        np.testing.assert_allclose(
            v[:, 16, 16].mean(-1), [20 + 10 * t + 60 * e for t in range(n)], atol=4
        )


def test_lerobot_fixture_validates_and_samples():
    report = validate(FIXTURE, deep=True)
    assert report.warnings == () and report.video_files == 1
    b = Sampler(Dataset.open(FIXTURE), SamplerConfig(batch_size=8, chunk=5)).sample()
    assert b.action.shape == (8, 5, 2)


def test_anyskill_can_append_to_a_lerobot_dataset(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(FIXTURE, root)
    w = EpisodeWriter.open(root)
    frame = {
        "observation.state": np.full(3, 9, np.float32),
        "action": np.ones(2, np.float32),
        "observation.images.top": np.zeros((32, 32, 3), np.uint8),
    }
    with pytest.raises(SchemaMismatchError, match="no 'intervention' feature"):
        w.add_frame(frame, task="lerobot task 1", intervention=True)
    for _ in range(2):
        w.add_frame(frame, task="lerobot task 1")
    w.end_episode(success=True, source="autonomous")
    assert validate(root, deep=True).warnings == ()
    ds = Dataset.open(root)
    assert ds.num_episodes == 3 and ds.episodes.source.tolist()[-1] == "autonomous"
    np.testing.assert_array_equal(ds.episode(2)["observation.state"][1], [9, 9, 9])
    np.testing.assert_allclose(ds.episode(0)["action"][3], [0.3, 0.0], rtol=1e-6)  # untouched


def test_anyskill_dataset_loads_in_lerobot(tmp_path):
    pytest.importorskip("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from store_helpers import write_dataset

    write_dataset(tmp_path / "ds", [3, 2])
    ds = LeRobotDataset("anyskill/test", root=tmp_path / "ds")
    assert len(ds) == 5
