"""On-disk layout of an episode store: LeRobot dataset format v3.0 plus anyskill's experience
fields, the typed ``info.json`` schema, and the typed errors every reader and writer raises.

Layout (paths relative to the dataset root; ``C``/``F`` are chunk and file indices)::

    meta/info.json                         codebase_version "v3.0", fps, features, totals, paths
    meta/stats.json                        per feature: mean std min max q01 q10 q50 q90 q99 count
    meta/tasks.parquet                     index "task" (the instruction), column task_index
    meta/episodes/chunk-CCC/file-FFF.parquet   one row per episode (ranges, tasks, file indices,
                                           per-episode stats, anyskill's success/source/...)
    data/chunk-CCC/file-FFF.parquet        one row per frame, many episodes per file
    videos/<camera key>/chunk-CCC/file-FFF.mp4   camera streams (one episode per file here)
    meta/anyskill/episode_annotations.parquet    labels written after the fact (sidecar)
    meta/anyskill/frame_annotations/<name>.parquet  per-frame values/advantages (sidecar)
    meta/anyskill/subtasks.parquet         per-frame subtask labels + their texts (sidecar,
                                           anyskill.data.subtasks)
    meta/anyskill/source.json              which built-in env recorded the data (for render)

Experience fields (anyskill's additions; LeRobot readers see them as ordinary columns):
per frame ``intervention`` (bool: a human was in control); per episode ``success`` (1 success,
0 failure, -1 unknown), ``source`` (demonstration | autonomous | corrected) and
``policy_version`` (free text). Annotations never touch frame data: they live in the sidecar
files above and override the per-episode values recorded at ``end_episode``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
ANYSKILL_DIR = "meta/anyskill"
EPISODE_ANNOTATIONS_PATH = ANYSKILL_DIR + "/episode_annotations.parquet"
FRAME_ANNOTATIONS_DIR = ANYSKILL_DIR + "/frame_annotations"
SOURCE_PATH = ANYSKILL_DIR + "/source.json"
SUBTASKS_PATH = ANYSKILL_DIR + "/subtasks.parquet"
DEFAULT_CHUNKS_SIZE = 1000
#: Smaller than LeRobot's 100 MB: every commit rewrites the open data file (see writer.py).
DEFAULT_DATA_FILE_MB = 4
DEFAULT_VIDEO_FILE_MB = 200

#: Columns every LeRobot frame carries, filled in by the writer.
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
#: Per-frame experience column anyskill adds to every dataset it writes.
INTERVENTION = "intervention"
SOURCES = ("demonstration", "autonomous", "corrected")
UNKNOWN_SUCCESS = -1
#: Numeric dtypes a feature may have (``video`` is the camera-stream dtype).
NUMERIC_DTYPES = ("float32", "float64", "int32", "int64", "int16", "int8", "uint8", "bool")
STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")


# --------------------------------------------------------------------------- errors


class DatasetError(ValueError):
    """Something about a dataset on disk is wrong; the message names file, field, expected,
    actual and what to do. A ``ValueError`` so the CLI reports it without a traceback."""

    def __init__(self, path: Path | str, problem: str, fix: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)


class MissingMetaError(DatasetError):
    """A required metadata file (info.json, tasks, episodes) is absent."""


class CorruptFileError(DatasetError):
    """A file exists but cannot be parsed (truncated parquet, invalid JSON, ...)."""


class SchemaMismatchError(DatasetError):
    """Columns, shapes or dtypes differ from what ``meta/info.json`` declares, or totals and
    index ranges disagree."""


class VersionError(DatasetError):
    """The dataset's codebase_version is one this reader does not understand."""


class DatasetExistsError(DatasetError):
    """Refusing to write over an existing dataset."""


class DatasetLockedError(DatasetError):
    """Another writer holds the dataset (see ``anyskill.data.lock``)."""


class WriteFailedError(DatasetError):
    """The file system refused a write (disk full, read-only, permissions); what was already
    saved is intact."""


class NonFiniteError(DatasetError):
    """A float feature holds NaN or infinity."""


def write_failed(path: Path | str, e: OSError, what: str) -> WriteFailedError:
    """An ``OSError`` from writing ``path`` as one line: what failed, why, and what to do."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = e.strerror or (lines[-1] if lines else type(e).__name__)
    fix = {
        errno.ENOSPC: "free disk space and run again",
        errno.EDQUOT: "free space within your quota and run again",
        errno.EROFS: "the file system is read-only; choose a writable path",
        errno.EACCES: "fix the permissions or choose a writable path",
        errno.EPERM: "fix the permissions or choose a writable path",
    }.get(e.errno, "fix the cause and run again")
    return WriteFailedError(path, f"{what}: {why}", fix)


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class Feature:
    """One column of ``info.json``'s ``features``: dtype, shape and optional names."""

    dtype: str
    """A numpy dtype name, or ``video`` for a camera stream stored as MP4."""
    shape: tuple[int, ...]
    """Per-frame shape: ``(1,)`` for scalars, ``(D,)`` for vectors, ``(H, W, 3)`` for video."""
    names: Any = None
    """Names of the entries (a list, or a dict of lists as LeRobot allows), or None."""
    info: dict | None = None
    """Video stream details (``video.fps``, ``video.codec``, ...) for ``video`` features."""

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    @property
    def is_scalar(self) -> bool:
        return self.shape == (1,)

    def to_json(self) -> dict:
        d: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}
        if self.info is not None:
            d["info"] = self.info
        return d

    @staticmethod
    def from_json(path: Path, key: str, d: Any) -> Feature:
        if not isinstance(d, dict) or "dtype" not in d or "shape" not in d:
            raise SchemaMismatchError(
                path,
                f"features[{key!r}] must be an object with 'dtype' and 'shape', got {d!r}",
                "fix or regenerate meta/info.json",
            )
        dtype, shape = d["dtype"], tuple(int(s) for s in d["shape"])
        if dtype not in NUMERIC_DTYPES + ("video", "image", "string"):
            raise SchemaMismatchError(
                path,
                f"features[{key!r}].dtype: expected one of {NUMERIC_DTYPES + ('video',)}, "
                f"got {dtype!r}",
            )
        return Feature(dtype=dtype, shape=shape, names=d.get("names"), info=d.get("info"))


def vector_feature(dim: int, dtype: str = "float32", names: list[str] | None = None) -> Feature:
    """A per-frame vector ``[dim]`` (``dim == 1`` is stored as a scalar column, like LeRobot)."""
    if names is not None and len(names) != dim:
        raise ValueError(f"names has {len(names)} entries, expected {dim}")
    return Feature(dtype=dtype, shape=(dim,), names=names)


def video_feature(height: int, width: int, fps: int) -> Feature:
    """An RGB camera stream ``[height, width, 3]`` uint8, stored as H.264 MP4."""
    return Feature(
        dtype="video",
        shape=(height, width, 3),
        names=["height", "width", "channels"],
        info={
            "video.height": height,
            "video.width": width,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    )


def index_features() -> dict[str, Feature]:
    return {
        "timestamp": Feature("float32", (1,)),
        "frame_index": Feature("int64", (1,)),
        "episode_index": Feature("int64", (1,)),
        "index": Feature("int64", (1,)),
        "task_index": Feature("int64", (1,)),
    }


@dataclasses.dataclass(frozen=True)
class Info:
    """Typed ``meta/info.json``."""

    fps: int
    features: dict[str, Feature]
    robot_type: str | None = None
    codebase_version: str = CODEBASE_VERSION
    total_episodes: int = 0
    total_frames: int = 0
    total_tasks: int = 0
    chunks_size: int = DEFAULT_CHUNKS_SIZE
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_MB
    video_files_size_in_mb: int = DEFAULT_VIDEO_FILE_MB
    data_path: str = DATA_PATH
    video_path: str | None = VIDEO_PATH
    splits: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_video]

    @property
    def data_keys(self) -> list[str]:
        """Features stored as parquet columns (everything but video)."""
        return [k for k, f in self.features.items() if not f.is_video]

    @property
    def user_keys(self) -> list[str]:
        """Numeric per-frame features other than the index columns and ``intervention``."""
        skip = set(INDEX_FEATURES) | {INTERVENTION}
        return [k for k, f in self.features.items() if k not in skip and not f.is_video]

    def to_json(self) -> dict:
        return {
            "codebase_version": self.codebase_version,
            "robot_type": self.robot_type,
            "total_episodes": self.total_episodes,
            "total_frames": self.total_frames,
            "total_tasks": self.total_tasks,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb,
            "fps": self.fps,
            "splits": self.splits,
            "data_path": self.data_path,
            "video_path": self.video_path if self.video_keys else None,
            "features": {k: f.to_json() for k, f in self.features.items()},
        }


def parse_version(v: str) -> tuple[int, int]:
    s = str(v).lstrip("v")
    try:
        parts = [int(p) for p in s.split(".")[:2]]
    except ValueError:
        return (-1, -1)
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def read_info(root: Path) -> Info:
    """Parse and check ``meta/info.json``; typed errors for absent, corrupt or too-new files."""
    path = Path(root) / INFO_PATH
    if Path(root).exists() and not Path(root).is_dir():
        raise MissingMetaError(
            root, "is a file, not a dataset directory", "point at the dataset root folder"
        )
    if not Path(root).is_dir():
        raise MissingMetaError(root, "dataset directory does not exist")
    if not path.is_file():
        raise MissingMetaError(
            path,
            "meta/info.json is missing, so this is not a LeRobot v3.0 dataset",
            "point at the dataset root (the folder holding meta/ and data/)",
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"invalid JSON ({e})", "restore it from a copy") from e
    except OSError as e:
        raise CorruptFileError(path, f"cannot be read ({e.strerror or e})") from e
    if not isinstance(raw, dict):
        raise CorruptFileError(path, f"expected a JSON object, got {type(raw).__name__}")
    version = raw.get("codebase_version")
    got = parse_version(version) if version is not None else None
    if got is None or got[0] < 0:
        raise SchemaMismatchError(path, f"codebase_version: expected 'v3.0', got {version!r}")
    if got > parse_version(CODEBASE_VERSION):
        raise VersionError(
            path,
            f"codebase_version is {version!r}, newer than {CODEBASE_VERSION!r} which this "
            "anyskill reads",
            "upgrade anyskill, or convert the dataset to v3.0 with LeRobot's tools",
        )
    if got < parse_version(CODEBASE_VERSION):
        raise VersionError(
            path,
            f"codebase_version is {version!r}, older than {CODEBASE_VERSION!r}",
            "convert it with LeRobot's `lerobot.scripts.convert_dataset_v21_to_v30`",
        )
    for key in ("fps", "features", "total_episodes", "total_frames"):
        if key not in raw:
            raise SchemaMismatchError(path, f"required field {key!r} is missing")
    fps = raw["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf"):
        raise SchemaMismatchError(
            path,
            f"fps: expected a positive number of frames per second, got {fps!r}",
            "set it to the rate the data was recorded at",
        )
    for key, least in (("total_episodes", 0), ("total_frames", 0), ("total_tasks", 0)):
        _check_count(path, raw, key, least)
    _check_count(path, raw, "chunks_size", 1)
    feats_raw = raw["features"]
    if not isinstance(feats_raw, dict):
        raise SchemaMismatchError(path, f"features: expected an object, got {feats_raw!r}")
    features = {k: Feature.from_json(path, k, v) for k, v in feats_raw.items()}
    for k in INDEX_FEATURES:
        if k not in features:
            raise SchemaMismatchError(path, f"features: standard column {k!r} is missing")
    for k, f in features.items():
        if f.dtype == "image":
            raise SchemaMismatchError(
                path,
                f"features[{k!r}] has dtype 'image' (per-frame PNG); anyskill reads camera "
                "streams stored as 'video' only",
                "re-encode the images to video with LeRobot before loading",
            )
    return Info(
        fps=int(fps) if float(fps).is_integer() else fps,
        features=features,
        robot_type=raw.get("robot_type"),
        codebase_version=str(version),
        total_episodes=int(raw["total_episodes"]),
        total_frames=int(raw["total_frames"]),
        total_tasks=int(raw.get("total_tasks", 0)),
        chunks_size=int(raw.get("chunks_size", DEFAULT_CHUNKS_SIZE)),
        data_files_size_in_mb=as_number(raw.get("data_files_size_in_mb", DEFAULT_DATA_FILE_MB)),
        video_files_size_in_mb=int(raw.get("video_files_size_in_mb", DEFAULT_VIDEO_FILE_MB)),
        data_path=str(raw.get("data_path", DATA_PATH)),
        video_path=raw.get("video_path"),
        splits=dict(raw.get("splits") or {}),
    )


def _check_count(path: Path, raw: dict, key: str, least: int) -> None:
    if key not in raw:
        return
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not float(v).is_integer():
        raise SchemaMismatchError(path, f"{key}: expected an integer, got {v!r}")
    if v < least:
        raise SchemaMismatchError(path, f"{key}: expected an integer >= {least}, got {v!r}")


# --------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any, durable: bool = True) -> None:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temp file in the same directory,
    which is fsynced and renamed over ``path``; then the directory is fsynced, so after a
    crash ``path`` holds either the old or the new content, never a mix.

    ``durable=False`` skips both fsyncs: the rename is still atomic, which is all a killed
    *process* can observe (the page cache survives it), but after an OS crash or power loss
    recent writes may be lost or reordered."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda p: p.write_bytes(data), durable)


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode(), durable)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def chunk_file(n: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) indices of the ``n``-th file of a stream."""
    return n // chunks_size, n % chunks_size


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def as_number(x: Any) -> float | int:
    """An integral number as int (info.json stays as LeRobot writes it), else float."""
    x = float(x)
    return int(x) if x.is_integer() else x
