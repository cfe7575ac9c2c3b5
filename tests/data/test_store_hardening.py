"""Issue 22, episode store: fault and abuse trials. Two writers, stale frame caches, settings
that silently change a recording, full disks, read-only places, NaNs, corrupt videos and
nonsense arguments each get one clear line, and nothing already saved is lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from store_helpers import FEATURES, action_of, append, state_of, write_dataset

from anyskill.cli import main
from anyskill.data import ops, record
from anyskill.data.format import (
    CorruptFileError,
    DatasetError,
    SchemaMismatchError,
)
from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

HERE = Path(__file__).parent
CAM = "observation.images.cam"


def _video(root: Path, n: int) -> Path:
    return root / "videos" / CAM / "chunk-000" / f"file-{n:03d}.mp4"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("anyskill: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- 5: one writer


def test_a_second_writer_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    root = tmp_path / "ds"
    first = write_dataset(root, [3, 2])
    with pytest.raises(DatasetError) as exc:
        EpisodeWriter.open(root)
    msg = str(exc.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "since" in msg
    assert "\n" not in msg
    append(first, [4])  # the holder is unaffected
    first.close()
    w = EpisodeWriter.open(root)  # closing released the lock
    append(w, [1])
    assert Dataset.open(root).episodes.length.tolist() == [3, 2, 4, 1]


def test_create_holds_the_lock_from_the_first_moment(tmp_path):
    w = EpisodeWriter.create(tmp_path / "ds", FEATURES, fps=10)
    with pytest.raises(DatasetError, match="another writer"):
        EpisodeWriter.open(tmp_path / "ds")
    w.close()


HOLDER = """
import sys, time
from anyskill.data.writer import EpisodeWriter
w = EpisodeWriter.open(sys.argv[1])
print("READY", flush=True)
time.sleep(600)
"""


def test_a_writer_in_another_process_blocks_until_it_dies(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [3]).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        with pytest.raises(DatasetError) as exc:
            EpisodeWriter.open(root)
        msg = str(exc.value)
        assert f"pid {proc.pid}" in msg and "-c" in msg and str(root) in msg
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # a SIGKILLed writer leaves no stale lock
    w = EpisodeWriter.open(root)
    append(w, [2])
    assert Dataset.open(root).num_episodes == 2


# --------------------------------------------------------------------------- 6: videos


def test_frame_cache_is_keyed_on_the_dataset_and_its_videos(tmp_path):
    from anyskill.algos.vla.data import decode_cameras

    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, [3, 2], images=True).close()
    frames = decode_cameras(Dataset.open(a), 16)
    assert frames.shape == (5, 1, 16, 16, 3)
    # a copy with the same data files (cp -a keeps mtimes) but a corrupted video
    shutil.copytree(a, b)
    v = _video(b, 1)
    st = v.stat()
    v.write_bytes(b"\0" * st.st_size)
    os.utime(v, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorruptFileError, match="file-001.mp4"):
        decode_cameras(Dataset.open(b), 16)
    # the same dataset after one of its videos changed
    _video(a, 0).write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="file-000.mp4"):
        decode_cameras(Dataset.open(a), 16)


def test_plain_validate_catches_an_undecodable_video(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [3, 2, 4], images=True).close()
    good = _video(root, 2).read_bytes()
    _video(root, 2).write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError) as exc:
        validate(root)
    assert "file-002.mp4" in str(exc.value) and "\n" not in str(exc.value)
    _video(root, 2).write_bytes(b"x" * 500)
    with pytest.raises(CorruptFileError, match="file-002.mp4"):
        validate(root)


def test_plain_validate_checks_the_frame_count_in_the_container(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, [3, 2], images=True).close()
    shutil.copy(_video(root, 1), _video(root, 0))  # 2 frames where episode 0 needs 3
    with pytest.raises(CorruptFileError, match=r"file-000.mp4.*2 frames.*3"):
        validate(root)


def test_a_corrupt_video_is_one_line_without_ffmpegs_banner(tmp_path):
    from anyskill.data.video import decode_mp4

    p = tmp_path / "bad.mp4"
    p.write_bytes(b"garbage" * 100)
    with pytest.raises(CorruptFileError) as exc:
        decode_mp4(p)
    msg = str(exc.value)
    assert str(p) in msg and "\n" not in msg and "configuration" not in msg
    assert len(msg) < 400, msg


FFMPEG_LOG = """Could not load meta information
=== stderr ===

ffmpeg version n9.0.2 Copyright (c) 2000-2026 the FFmpeg developers
  built with gcc 16.2.0 (crosstool-NG 1.29.0.7_b1a94f6)
  configuration: --prefix=/ffbuild/prefix --enable-gpl
  libavutil      61.  1.102 / 61.  1.102
[in#0 @ 0x5645b59f9040] Format mov,mp4 detected only with low score of 1, misdetection possible!
[in#0 @ 0x5645b59f9040] moov atom not found
[in#0 @ 0x5645b59f8cc0] Error opening input: Invalid data found when processing input
Error opening input file /tmp/bad.mp4.
Error opening input files: Invalid data found when processing input"""


def test_ffmpeg_log_is_reduced_to_its_diagnosis():
    from anyskill.data.video import ffmpeg_reason

    assert ffmpeg_reason(RuntimeError(FFMPEG_LOG)) == "moov atom not found"
    assert ffmpeg_reason(RuntimeError("no log at all")) == "no log at all"


# --------------------------------------------------------------------------- 7: continue


def _fake_recording(out: Path, env="tabletop-reach", images=False, image_size=64, dart=False):
    """What ``record_expert`` creates, without running the (slow to compile) expert."""
    spec = record.recording_spec(env, images, image_size, dart, noise=0.1, seed=0)
    w = EpisodeWriter.create(
        out, spec.features, fps=spec.fps, robot_type=env, source_env=spec.source
    )
    frame = {
        k: np.zeros(f.shape, np.uint8 if f.is_video else f.dtype) for k, f in spec.features.items()
    }
    w.add_frame(frame, task="t")
    w.end_episode()
    w.close()


@pytest.mark.parametrize(
    "made, given, flag, have, got",
    [
        ({}, {"env_name": "tabletop-push"}, "--env", "tabletop-reach", "tabletop-push"),
        ({}, {"images": True}, "--images", "False", "True"),
        ({"images": True}, {"images": False}, "--images", "True", "False"),
        ({"images": True}, {"images": True, "image_size": 32}, "--image-size", "64", "32"),
        ({}, {"dart": True}, "--dart", "False", "True"),
        ({"dart": True}, {}, "--dart", "True", "False"),
    ],
)
def test_continuing_a_recording_refuses_other_settings(tmp_path, made, given, flag, have, got):
    out = tmp_path / "rec"
    _fake_recording(out, **made)
    before = _snapshot(out)
    kw = {"env_name": "tabletop-reach", "episodes": 1, **given}
    with pytest.raises(ValueError) as exc:
        record.record_expert(out, **kw)
    msg = str(exc.value)
    assert flag in msg and have in msg and got in msg and "\n" not in msg, msg
    assert _snapshot(out) == before


# --------------------------------------------------------------------------- 13: one line


def test_record_onto_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("precious")
    assert main(["data", "record", "--env", "tabletop-reach", "--out", str(f)]) == 2
    assert str(f) in _one_line_error(capsys)
    assert f.read_text() == "precious"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_record_into_a_read_only_place_is_one_line(tmp_path, capsys, monkeypatch, code):
    import tempfile

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "new"
    assert main(["data", "record", "--env", "tabletop-reach", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert str(out) in err and os.strerror(code) in err
    assert not out.exists()


def test_continuing_in_a_read_only_place_is_one_line(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_dataset(root, [3]).close()
    (root / ".anyskill-writer.lock").unlink(missing_ok=True)
    before = _snapshot(root)
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    with pytest.raises(DatasetError) as exc:
        EpisodeWriter.open(root)
    assert str(root) in str(exc.value) and "read-only" in str(exc.value).lower()
    monkeypatch.undo()
    assert _snapshot(root) == before


@pytest.mark.parametrize("what", ["parquet", "video", "info"])
def test_a_full_disk_loses_only_the_episode_being_written(tmp_path, monkeypatch, what):
    import pyarrow.parquet as pq

    from anyskill.data import format as fmt
    from anyskill.data import video

    root = tmp_path / "ds"
    w = write_dataset(root, [3, 2], images=True)
    before = _snapshot(root)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = {"parquet": (pq, "write_table"), "video": (video, "encode_mp4")}
    if what == "info":
        real = fmt.atomic_write_bytes

        def info_full(path, data, durable=True):
            if Path(path).name == "info.json":
                full()
            return real(path, data, durable)

        monkeypatch.setattr(fmt, "atomic_write_bytes", info_full)
    else:
        monkeypatch.setattr(*target[what], full)
    with pytest.raises(DatasetError) as exc:
        append(w, [4], images=True)
    msg = str(exc.value)
    assert "No space left on device" in msg and "episode 2" in msg and "\n" not in msg, msg
    monkeypatch.undo()
    w.close()
    ds = Dataset.open(root)
    assert ds.episodes.length.tolist() == [3, 2]
    assert not [p for p in root.rglob("*.tmp")]
    w = EpisodeWriter.open(root)
    append(w, [4], images=True)
    w.close()
    assert validate(root, deep=True).warnings == ()
    assert {k: v for k, v in _snapshot(root).items() if k.endswith(".mp4")}.items() >= {
        k: v for k, v in before.items() if k.endswith(".mp4")
    }.items()


def test_a_full_disk_after_the_commit_says_the_episode_was_saved(tmp_path, monkeypatch):
    from anyskill.data import meta

    root = tmp_path / "ds"
    w = write_dataset(root, [3, 2])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(meta, "write_stats", full)
    with pytest.raises(DatasetError, match=r"stats.json: episode 2 was saved.*No space left"):
        append(w, [4])
    monkeypatch.undo()
    append(w, [1])  # the writer goes on from the committed episode
    w.close()
    assert Dataset.open(root).episodes.length.tolist() == [3, 2, 4, 1]
    EpisodeWriter.open(root).close()
    assert validate(root).warnings == ()


def test_record_an_env_without_expert_lists_those_with_one(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["data", "record", "--env", "pointmaze-u", "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "pointmaze-u" in err and "tabletop-push" in err
    assert not out.exists()


def _nan_dataset(root: Path) -> None:
    w = EpisodeWriter.create(root, FEATURES, fps=10)
    for e, n in enumerate([3, 4]):
        for t in range(n):
            a = action_of(e, t)
            if (e, t) == (1, 2):
                a[1] = np.nan
            w.add_frame({"observation.state": state_of(e, t), "action": a}, task="t")
        w.end_episode()
    w.close()


def test_validate_reports_non_finite_values_naming_episode_and_feature(tmp_path, capsys):
    root = tmp_path / "ds"
    _nan_dataset(root)
    with pytest.raises(DatasetError) as exc:
        validate(root)
    msg = str(exc.value)
    assert "'action'" in msg and "episode 1" in msg and "frame 2" in msg, msg
    assert main(["data", "validate", str(root)]) == 2
    assert "'action'" in _one_line_error(capsys)


def test_sampler_refuses_non_finite_values_naming_the_feature(tmp_path):
    from anyskill.data.sampler import Sampler, SamplerConfig

    root = tmp_path / "ds"
    _nan_dataset(root)
    with pytest.raises(DatasetError, match=r"'action'.*episode 1"):
        Sampler(Dataset.open(root), SamplerConfig(batch_size=2, chunk=2))


def test_json_errors_in_meta_files_name_the_file_and_line(tmp_path):
    root = tmp_path / "ds"
    EpisodeWriter.create(root, FEATURES, fps=10, source_env={"env": "tabletop-reach"}).close()
    src = root / "meta" / "anyskill" / "source.json"
    src.write_text('{\n  "env": "tabletop-reach",\n  oops\n}\n')
    from anyskill.data.writer import load_source_env

    with pytest.raises(CorruptFileError, match=r"source.json.*line 3 column 3"):
        load_source_env(root)
    stats = root / "meta" / "stats.json"
    stats.write_text("{\n")
    with pytest.raises(CorruptFileError, match=r"stats.json.*line 2"):
        meta_stats(root)
    info = root / "meta" / "info.json"
    info.write_text('{"fps": 10,\n "features": }')
    with pytest.raises(CorruptFileError, match=r"info.json.*line 2 column 14"):
        Dataset.open(root)


def meta_stats(root):
    from anyskill.data import meta

    return meta.read_stats(root)


# --------------------------------------------------------------------------- 14: nonsense


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--episodes", "0"], "--episodes"),
        (["--episodes", "-3"], "--episodes"),
        (["--noise", "-0.1"], "--noise"),
        (["--image-size", "0"], "--image-size"),
        (["--image-size", "-64"], "--image-size"),
    ],
)
def test_record_refuses_nonsense_arguments(tmp_path, capsys, args, flag):
    out = tmp_path / "x"
    assert main(["data", "record", "--env", "tabletop-reach", "--out", str(out), *args]) == 2
    err = _one_line_error(capsys)
    assert flag in err and args[1] in err, err
    assert not out.exists()


@pytest.mark.parametrize("fps", [0, -10, None, "ten"])
def test_opening_a_dataset_with_nonsense_fps_names_the_field(tmp_path, fps):
    root = tmp_path / "ds"
    write_dataset(root, [3]).close()
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    if fps is None:
        del info["fps"]
    else:
        info["fps"] = fps
    p.write_text(json.dumps(info))
    for fn in (Dataset.open, validate, EpisodeWriter.open):
        with pytest.raises(SchemaMismatchError) as exc:
            fn(root)
        assert "info.json" in str(exc.value) and "fps" in str(exc.value)


@pytest.mark.parametrize("frac", ["0", "1", "1.5", "-0.2"])
def test_split_refuses_a_val_fraction_outside_0_1(tmp_path, capsys, frac):
    write_dataset(tmp_path / "ds", [3, 3, 3]).close()
    out = tmp_path / "split"
    assert (
        main(["data", "split", str(tmp_path / "ds"), "--out", str(out), "--val-fraction", frac])
        == 2
    )
    assert "--val-fraction" in _one_line_error(capsys)
    assert not out.exists()


def test_ops_close_their_writers(tmp_path):
    write_dataset(tmp_path / "a", [2, 3]).close()
    ops.merge([tmp_path / "a"], tmp_path / "m")
    EpisodeWriter.open(tmp_path / "m").close()  # not still locked by merge
