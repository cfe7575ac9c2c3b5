"""Bad input gives typed errors naming file and field; nothing on disk is overwritten."""

from __future__ import annotations

import hashlib
import json

import pytest
from store_helpers import write_dataset

from anyskill.data import ops
from anyskill.data.format import (
    CorruptFileError,
    DatasetError,
    DatasetExistsError,
    MissingMetaError,
    SchemaMismatchError,
    VersionError,
)
from anyskill.data.lock import LOCK_NAME
from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def root(tmp_path):
    write_dataset(tmp_path / "ds", [4, 6, 3])
    return tmp_path / "ds"


def _snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME  # the writer lock notes who tried last
    }


def _all_fail(root, error, *patterns):
    """Reader, validator and writer-reopen all raise ``error``; no file changes."""
    before = _snapshot(root)
    for fn in (Dataset.open, lambda r: Dataset.open(r, mmap=False), validate, EpisodeWriter.open):
        with pytest.raises(error) as exc:
            fn(root)
        for p in patterns:
            assert p in str(exc.value), str(exc.value)
    assert _snapshot(root) == before


def _edit_info(root, fn):
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    fn(info)
    p.write_text(json.dumps(info))


def test_truncated_data_parquet(root):
    p = root / DATA
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _all_fail(root, CorruptFileError, DATA, "truncated or corrupt")


def test_corrupt_episodes_parquet(root):
    p = root / EPISODES
    b = bytearray(p.read_bytes())
    b[-12:-4] = b"\x00" * 8  # smash the footer length
    p.write_bytes(bytes(b))
    _all_fail(root, CorruptFileError, EPISODES)


def test_missing_meta(root):
    (root / "meta" / "info.json").unlink()
    _all_fail(root, MissingMetaError, "info.json")


def test_missing_tasks_and_missing_data_file(tmp_path, root):
    (root / "meta" / "tasks.parquet").unlink()
    with pytest.raises(MissingMetaError, match="tasks.parquet"):
        Dataset.open(root)
    write_dataset(tmp_path / "b", [2])
    (tmp_path / "b" / DATA).unlink()
    with pytest.raises(MissingMetaError, match="data file referenced by episode 0"):
        Dataset.open(tmp_path / "b", mmap=False)


def test_invalid_json(root):
    (root / "meta" / "info.json").write_text("{not json")
    _all_fail(root, CorruptFileError, "invalid JSON")


def test_shape_mismatch_with_info_json(root):
    _edit_info(root, lambda i: i["features"]["observation.state"].update(shape=[5]))
    before = _snapshot(root)
    with pytest.raises(SchemaMismatchError) as exc:
        Dataset.open(root)
    msg = str(exc.value)
    assert (
        DATA in msg and "'observation.state'" in msg and "float32[5]" in msg and "float[4]" in msg
    )
    assert _snapshot(root) == before


def test_dtype_mismatch_with_info_json(root):
    _edit_info(root, lambda i: i["features"]["action"].update(dtype="float64"))
    with pytest.raises(
        SchemaMismatchError, match=r"'action': expected float64\[3\].*got float\[3\]"
    ):
        validate(root)


def test_newer_and_older_codebase_version(root):
    _edit_info(root, lambda i: i.update(codebase_version="v3.1"))
    _all_fail(root, VersionError, "newer", "upgrade anyskill")
    _edit_info(root, lambda i: i.update(codebase_version="v2.1"))
    _all_fail(root, VersionError, "older", "convert")


def test_totals_disagree_with_episodes(root):
    _edit_info(root, lambda i: i.update(total_frames=99))
    _all_fail(root, SchemaMismatchError, "total_frames")


def test_missing_video_file(tmp_path):
    write_dataset(tmp_path / "v", [3, 2], images=True)
    (tmp_path / "v" / "videos" / "observation.images.cam" / "chunk-000" / "file-001.mp4").unlink()
    with pytest.raises(MissingMetaError, match="video of episode 1"):
        validate(tmp_path / "v")


def test_errors_are_value_errors_with_a_fix(root):
    (root / "meta" / "info.json").unlink()
    with pytest.raises(DatasetError) as exc:
        Dataset.open(root)
    assert isinstance(exc.value, ValueError)
    assert exc.value.fix


def test_merge_and_split_never_overwrite(tmp_path, root):
    other = tmp_path / "other"
    write_dataset(other, [2])
    before = _snapshot(other)
    with pytest.raises(DatasetExistsError):
        ops.merge([root], other)
    with pytest.raises(DatasetExistsError):
        ops.split(root, other)
    assert _snapshot(other) == before


def test_merge_rejects_different_features(tmp_path, root):
    from anyskill.data.format import vector_feature

    w = EpisodeWriter.create(tmp_path / "x", {"observation.state": vector_feature(2)}, fps=10)
    w.add_frame({"observation.state": [0.0, 1.0]}, task="t")
    w.end_episode()
    with pytest.raises(SchemaMismatchError, match="same features"):
        ops.merge([root, tmp_path / "x"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
