"""Round trip of every field through EpisodeWriter -> parquet/MP4 -> Dataset."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from store_helpers import action_of, append, state_of, write_dataset

from anyskill.data.format import DatasetExistsError, SchemaMismatchError
from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

LENGTHS = [5, 3, 8, 1, 6, 4]


def _frames_hash(root) -> str:
    h = hashlib.sha1()
    for p in sorted((root / "data").rglob("*.parquet")) + sorted(
        (root / "meta" / "episodes").rglob("*")
    ):
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("mmap", [True, False])
def test_every_field_round_trips(tmp_path, mmap):
    write_dataset(tmp_path / "ds", LENGTHS)
    ds = Dataset.open(tmp_path / "ds", mmap=mmap)
    assert ds.num_episodes == len(LENGTHS) and ds.num_frames == sum(LENGTHS)
    g = 0
    for e, n in enumerate(LENGTHS):
        assert ds.episodes.length[e] == n
        assert ds.episodes.start[e] == g and ds.episodes.stop[e] == g + n
        assert ds.tasks[ds.episodes.task_index[e]] == f"task {e % 3}"
        assert ds.episodes.success[e] == (-1 if e % 5 == 4 else int(e % 2 == 0))
        assert ds.episodes.source[e] == ("demonstration", "autonomous", "corrected")[e % 3]
        assert ds.episodes.policy_version[e] == f"v{e // 2}"
        ep = ds.episode(e)
        for t in range(n):
            np.testing.assert_array_equal(ep["observation.state"][t], state_of(e, t))
            np.testing.assert_array_equal(ep["action"][t], action_of(e, t))
            assert ep["intervention"][t] == (t % 4 == 1)
            assert ep["frame_index"][t] == t and ep["episode_index"][t] == e
            assert ep["index"][t] == g + t
            assert ep["timestamp"][t] == pytest.approx(t / 10)
            assert ds.tasks[ep["task_index"][t]] == f"task {e % 3}"
        g += n
    assert ds.columns["observation.state"].dtype == np.float32
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["features"]["observation.state"] == {
        "dtype": "float32",
        "shape": [4],
        "names": None,
    }
    assert info["features"]["intervention"]["dtype"] == "bool"
    assert validate(tmp_path / "ds").warnings == ()


def test_images_round_trip_through_mp4(tmp_path):
    write_dataset(tmp_path / "ds", [4, 6], images=True)
    ds = Dataset.open(tmp_path / "ds")
    for e, n in enumerate([4, 6]):
        v = ds.episode_video(e, "observation.images.cam")
        assert v.shape == (n, 16, 16, 3) and v.dtype == np.uint8
        want = np.array([(e * 40 + t * 8) % 250 for t in range(n)])
        np.testing.assert_allclose(v[:, 8, 8].mean(-1), want, atol=4)  # lossy H.264
    assert validate(tmp_path / "ds", deep=True).video_files == 2


def test_reopen_continues_and_rolls_files(tmp_path):
    root = tmp_path / "ds"
    w = write_dataset(root, [50, 50], data_files_size_in_mb=0.004)
    w.close()
    w = EpisodeWriter.open(root)
    assert w.total_episodes == 2 and w.total_frames == 100
    append(w, [50, 50, 7])
    ds = Dataset.open(root)
    assert ds.num_episodes == 5 and ds.num_frames == 207
    assert len(list((root / "data").rglob("*.parquet"))) > 1  # rolled to new files
    np.testing.assert_array_equal(ds.episode(4)["observation.state"][6], state_of(4, 6))
    assert validate(root).warnings == ()


def test_annotations_never_touch_frame_data(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, LENGTHS)
    before = _frames_hash(root)
    ds = Dataset.open(root)
    ds.annotate_episodes("success", [0, 1], episodes=[0, 4])
    ds.annotate_episodes("rating", 0.5)
    adv = np.linspace(-1, 1, ds.num_frames - 3)
    ds.annotate_frames("advantage", adv)
    ds.annotate_frames("value", np.ones(ds.num_frames))
    assert _frames_hash(root) == before
    ds = Dataset.open(root)
    assert ds.episodes.success[0] == 0 and ds.episodes.success[4] == 1
    assert ds.episodes.success[2] == 1  # untouched label as recorded
    np.testing.assert_allclose(ds.episode_annotations()["rating"], 0.5)
    a = ds.frame_annotation("advantage")
    np.testing.assert_allclose(a[:-3], adv, rtol=1e-6)
    assert np.isnan(a[-3:]).all()
    assert ds.frame_annotation_names() == ["advantage", "value"]
    with pytest.raises(ValueError, match="success annotations"):
        ds.annotate_episodes("success", [2], episodes=[0])
    with pytest.raises(ValueError, match="cannot be annotated"):
        ds.annotate_episodes("length", [2], episodes=[0])
    # appending after annotating keeps annotations and leaves old files intact
    append(EpisodeWriter.open(root), [2])
    ds = Dataset.open(root)
    assert ds.episodes.success[0] == 0 and np.isnan(ds.frame_annotation("value")[-1])


def test_add_frame_rejects_wrong_shape_dtype_and_keys(tmp_path):
    w = write_dataset(tmp_path / "ds", [2])
    ok = {"observation.state": state_of(0, 0), "action": action_of(0, 0)}
    with pytest.raises(
        SchemaMismatchError, match=r"'action' expected shape \(3,\) float32, got shape \(2,\)"
    ):
        w.add_frame({**ok, "action": np.zeros(2, np.float32)}, task="t")
    with pytest.raises(SchemaMismatchError, match="missing"):
        w.add_frame({"action": action_of(0, 0)}, task="t")
    with pytest.raises(SchemaMismatchError, match="int64|complex"):
        w.add_frame({**ok, "action": np.zeros(3, np.complex64)}, task="t")
    w.add_frame(ok, task="t")
    with pytest.raises(ValueError, match="task changed"):
        w.add_frame(ok, task="other")
    with pytest.raises(ValueError, match="source"):
        w.end_episode(source="teleop")
    w.discard_episode()
    with pytest.raises(ValueError, match="no frames"):
        w.end_episode()


def test_create_refuses_existing_dataset(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [3])
    before = _frames_hash(root)
    with pytest.raises(DatasetExistsError, match="not empty"):
        write_dataset(root, [3])
    assert _frames_hash(root) == before


def test_episodes_table_rolls_and_reopens(tmp_path, monkeypatch):
    from anyskill.data import writer as writer_mod

    monkeypatch.setattr(writer_mod, "EPISODES_PER_META_FILE", 3)
    root = tmp_path / "ds"
    write_dataset(root, [2] * 7)
    assert len(list((root / "meta" / "episodes").rglob("*.parquet"))) == 3
    append(EpisodeWriter.open(root), [3, 1])
    ds = Dataset.open(root)
    assert ds.num_episodes == 9 and ds.episodes.length.tolist() == [2] * 7 + [3, 1]
    assert ds.episodes.policy_version[8] == "v4"
    assert validate(root).warnings == ()
