"""Read an episode store (written by anyskill or LeRobot v3.0) as memory-mapped columns.

Opening a dataset streams its parquet files once into a column cache of ``.npy`` files
(``$ANYSKILL_CACHE`` or ``~/.cache/anyskill/datasets``), keyed by the dataset's path, totals
and data-file sizes and modification times; later opens map the cache (``np.load(mmap_mode=
"r")``) so a 10^7-frame dataset opens in milliseconds and uses page cache, not heap. Streaming
checks every file against ``meta/info.json`` on the way (types, index ranges), so a dataset
that opens is consistent.

Only committed data is read: rows past ``info.json``'s totals (left by a crashed commit) are
ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from anyskill.data import meta, parquet
from anyskill.data.format import (
    DATA_PATH,
    EPISODE_ANNOTATIONS_PATH,
    FRAME_ANNOTATIONS_DIR,
    INTERVENTION,
    UNKNOWN_SUCCESS,
    VIDEO_PATH,
    CorruptFileError,
    Info,
    MissingMetaError,
    NonFiniteError,
    SchemaMismatchError,
    atomic_write,
    fsync_dir,
    read_info,
)
from anyskill.data.stats import FeatureStats

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
#: Episode columns an annotation may not replace (they describe where frames are).
_STRUCTURAL = {"episode_index", "length", "dataset_from_index", "dataset_to_index", "tasks"}


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Per-episode table, all arrays ``[E]``.

    start/stop: frame range ``[start, stop)`` in the dataset's global ``index``; success:
    1, 0 or -1 (unknown), after annotations; source, policy_version: as recorded (LeRobot
    datasets without them read as ``demonstration`` and ``""``)."""

    index: np.ndarray
    length: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    task_index: np.ndarray
    success: np.ndarray
    source: np.ndarray
    policy_version: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


class Dataset:
    """A read-only snapshot of an episode store.

    ``columns[key]``: ``[N]`` or ``[N, D]`` arrays (memory-mapped) for every non-video feature;
    ``episodes``: :class:`Episodes`; ``tasks``: instruction strings by ``task_index``."""

    def __init__(
        self,
        root: Path,
        info: Info,
        rows: list[dict],
        tasks: list[str],
        columns: dict[str, np.ndarray],
    ):
        self.root = root
        self.info = info
        self.tasks = tasks
        self.columns = columns
        self._rows = rows
        self.episodes = self._episode_table(rows)

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, root: Path | str, cache_dir: Path | str | None = None, mmap: bool = True
    ) -> Dataset:
        """Open the dataset at ``root``. ``mmap=False`` loads columns into memory instead of
        using the on-disk cache (for read-only places or tiny datasets)."""
        root = Path(root)
        info = read_info(root)
        rows = meta.read_episode_rows(root, info.total_episodes)
        tasks = meta.read_tasks(root)
        check_episode_rows(root, info, rows, len(tasks))
        if mmap:
            columns = _cached_columns(root, info, rows, cache_dir)
        else:
            columns = _read_columns(root, info, rows, sink=None)
        return cls(root, info, rows, tasks, columns)

    def _episode_table(self, rows: list[dict]) -> Episodes:
        n = len(rows)
        task_ids = {t: i for i, t in enumerate(self.tasks)}
        success = np.array(
            [UNKNOWN_SUCCESS if r.get("success") is None else int(r["success"]) for r in rows],
            np.int8,
        )
        ann = self.episode_annotations()
        if "success" in ann:
            s = ann["success"]
            success = np.where(np.isnan(s), success, s).astype(np.int8)
        return Episodes(
            index=np.arange(n, dtype=np.int64),
            length=np.array([r["length"] for r in rows], np.int64).reshape(n),
            start=np.array([r["dataset_from_index"] for r in rows], np.int64).reshape(n),
            stop=np.array([r["dataset_to_index"] for r in rows], np.int64).reshape(n),
            task_index=np.array(
                [task_ids.get((r["tasks"] or [""])[0], -1) for r in rows], np.int64
            ).reshape(n),
            success=success,
            source=np.array([r.get("source") or "demonstration" for r in rows], dtype=object),
            policy_version=np.array([r.get("policy_version") or "" for r in rows], dtype=object),
        )

    # ----------------------------------------------------------------- access

    @property
    def num_frames(self) -> int:
        return self.info.total_frames

    @property
    def num_episodes(self) -> int:
        return self.info.total_episodes

    def __len__(self) -> int:
        return self.num_frames

    def column(self, key: str) -> np.ndarray:
        if key not in self.columns:
            raise KeyError(f"no column {key!r}; columns: {sorted(self.columns)}")
        return self.columns[key]

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """All non-video columns of episode ``e``."""
        s, t = int(self.episodes.start[e]), int(self.episodes.stop[e])
        return {k: np.asarray(v[s:t]) for k, v in self.columns.items()}

    def episode_video(self, e: int, key: str) -> np.ndarray:
        """Decoded frames ``[T, H, W, 3] uint8`` of camera ``key`` for episode ``e``."""
        from anyskill.data.video import decode_range

        if key not in self.info.video_keys:
            raise KeyError(f"no camera {key!r}; cameras: {self.info.video_keys}")
        r = self._rows[e]
        path = self.root / VIDEO_PATH.format(
            video_key=key,
            chunk_index=r[f"videos/{key}/chunk_index"],
            file_index=r[f"videos/{key}/file_index"],
        )
        return decode_range(
            path, float(r[f"videos/{key}/from_timestamp"]), int(r["length"]), self.info.fps
        )

    @property
    def stats(self) -> dict[str, FeatureStats]:
        return meta.read_stats(self.root)

    @property
    def intervention(self) -> np.ndarray:
        """``[N]`` bool (all False for datasets without the column)."""
        if INTERVENTION in self.columns:
            return np.asarray(self.columns[INTERVENTION]).astype(bool)
        return np.zeros(self.num_frames, bool)

    # ----------------------------------------------------------------- annotations

    def episode_annotations(self) -> dict[str, np.ndarray]:
        """Named per-episode annotations ``[E]`` float64 (NaN where not annotated)."""
        path = self.root / EPISODE_ANNOTATIONS_PATH
        n = self.info.total_episodes
        if not path.is_file():
            return {}
        t = parquet.read_table(path, "episode annotations")
        if "episode_index" not in t.column_names:
            raise SchemaMismatchError(path, "column 'episode_index' is missing")
        idx = t.column("episode_index").to_numpy()
        out = {}
        for name in t.column_names:
            if name == "episode_index":
                continue
            vals = np.full(n, np.nan)
            keep = idx < n
            vals[idx[keep]] = t.column(name).to_numpy(zero_copy_only=False)[keep]
            out[name] = vals
        return out

    def annotate_episodes(self, name: str, values, episodes=None) -> None:
        """Label episodes after the fact (``success``, a return, a human rating ...).

        Writes only ``meta/anyskill/episode_annotations.parquet`` (atomic replace); frame data
        and the episodes table are never rewritten. ``success`` overrides the recorded label
        (1, 0, or -1 for unknown); other names are free."""
        _check_name(name)
        if name in _STRUCTURAL:
            raise ValueError(f"{name!r} describes where frames are and cannot be annotated")
        n = self.info.total_episodes
        episodes = np.arange(n) if episodes is None else np.asarray(episodes, np.int64).reshape(-1)
        values = np.broadcast_to(np.asarray(values, np.float64), episodes.shape)
        if len(episodes) and (episodes.min() < 0 or episodes.max() >= n):
            raise ValueError(
                f"episode indices must be in [0, {n}), got {episodes.min()}..{episodes.max()}"
            )
        if name == "success" and not np.isin(values, (-1, 0, 1)).all():
            raise ValueError(f"success annotations must be 1, 0 or -1, got {np.unique(values)}")
        ann = self.episode_annotations()
        col = ann.get(name, np.full(n, np.nan))
        col[episodes] = values
        ann[name] = col
        table = pa.table({"episode_index": np.arange(n, dtype=np.int64), **ann})
        parquet.write_table(self.root / EPISODE_ANNOTATIONS_PATH, table)
        if name == "success":
            self.episodes = self._episode_table(self._rows)

    def annotate_frames(self, name: str, values) -> None:
        """Per-frame annotations ``[n <= N]`` (``value``, ``advantage`` ...) for the first ``n``
        frames, in ``meta/anyskill/frame_annotations/<name>.parquet`` (atomic replace)."""
        _check_name(name)
        values = np.asarray(values, np.float32).reshape(-1)
        if len(values) > self.num_frames:
            raise ValueError(
                f"{name}: {len(values)} values for a dataset of {self.num_frames} frames"
            )
        path = self.root / FRAME_ANNOTATIONS_DIR / f"{name}.parquet"
        parquet.write_table(path, pa.table({name: values}))

    def frame_annotation(self, name: str) -> np.ndarray:
        """``[N]`` float32, NaN for frames the annotation does not cover."""
        path = self.root / FRAME_ANNOTATIONS_DIR / f"{name}.parquet"
        if not path.is_file():
            raise KeyError(f"no frame annotation {name!r}; have {self.frame_annotation_names()}")
        t = parquet.read_table(path, "frame annotation")
        if name not in t.column_names:
            raise SchemaMismatchError(path, f"column {name!r} is missing")
        v = t.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        out = np.full(self.num_frames, np.nan, np.float32)
        out[: min(len(v), self.num_frames)] = v[: self.num_frames]
        return out

    def frame_annotation_names(self) -> list[str]:
        d = self.root / FRAME_ANNOTATIONS_DIR
        return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []

    # ----------------------------------------------------------------- summaries

    def summary(self) -> dict:
        """Episodes, frames, tasks and success rate by source (``anyskill data info``)."""
        ep = self.episodes
        by_source = {}
        for src in sorted(set(ep.source.tolist())):
            m = ep.source == src
            labelled = m & (ep.success >= 0)
            by_source[src] = {
                "episodes": int(m.sum()),
                "frames": int(ep.length[m].sum()),
                "labelled": int(labelled.sum()),
                "success_rate": float(ep.success[labelled].mean()) if labelled.any() else None,
            }
        return {
            "path": str(self.root),
            "codebase_version": self.info.codebase_version,
            "robot_type": self.info.robot_type,
            "fps": self.info.fps,
            "episodes": self.num_episodes,
            "frames": self.num_frames,
            "tasks": len(self.tasks),
            "features": {k: f"{f.dtype}{list(f.shape)}" for k, f in self.info.features.items()},
            "intervention_frames": int(self.intervention.sum()),
            "by_source": by_source,
            "frame_annotations": self.frame_annotation_names(),
            "episode_annotations": sorted(self.episode_annotations()),
        }


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"annotation name must match {_NAME.pattern}, got {name!r}")


# --------------------------------------------------------------------------- checks


def check_episode_rows(root: Path, info: Info, rows: list[dict], num_tasks: int) -> None:
    """Episode ranges tile ``[0, total_frames)`` in order; lengths and tasks agree."""
    where = Path(root) / "meta" / "episodes"
    expect = 0
    for r in rows:
        e = int(r["episode_index"])
        a, b, n = int(r["dataset_from_index"]), int(r["dataset_to_index"]), int(r["length"])
        if a != expect or b - a != n or n <= 0:
            raise SchemaMismatchError(
                where,
                f"episode {e}: dataset_from_index={a}, dataset_to_index={b}, length={n}; "
                f"expected from_index={expect} and to_index - from_index = length > 0",
            )
        expect = b
        if not r["tasks"]:
            raise SchemaMismatchError(where, f"episode {e}: 'tasks' is empty")
        s = r.get("success", UNKNOWN_SUCCESS)
        if s is not None and int(s) not in (-1, 0, 1):
            raise SchemaMismatchError(where, f"episode {e}: success must be -1, 0 or 1, got {s}")
        for key in info.video_keys:
            if f"videos/{key}/chunk_index" not in r or r[f"videos/{key}/chunk_index"] is None:
                raise SchemaMismatchError(
                    where, f"episode {e}: column 'videos/{key}/chunk_index' is missing"
                )
    if expect != info.total_frames:
        raise SchemaMismatchError(
            Path(root) / "meta" / "info.json",
            f"total_frames: episodes cover {expect} frames, info.json says {info.total_frames}",
        )
    if num_tasks < info.total_tasks:
        raise SchemaMismatchError(
            Path(root) / "meta" / "tasks.parquet",
            f"expected {info.total_tasks} tasks (info.json total_tasks), found {num_tasks}",
        )


def data_files(info: Info, rows: list[dict]) -> list[tuple[int, int]]:
    """(chunk, file) of every data file holding committed frames, in order."""
    seen: list[tuple[int, int]] = []
    for r in rows:
        cf = (int(r["data/chunk_index"]), int(r["data/file_index"]))
        if not seen or seen[-1] != cf:
            if cf in seen:
                raise SchemaMismatchError(
                    "meta/episodes", f"episode {r['episode_index']} goes back to data file {cf}"
                )
            seen.append(cf)
    return seen


def _read_columns(root: Path, info: Info, rows: list[dict], sink) -> dict[str, np.ndarray]:
    """Stream every data file, check it, and put its columns into ``sink[key][a:b]`` (or into
    fresh in-memory arrays when ``sink`` is None)."""
    keys = info.data_keys
    n = info.total_frames
    out = sink
    if out is None:
        out = {}
        for k in keys:
            f = info.features[k]
            shape = (n,) if f.is_scalar else (n, f.shape[0])
            out[k] = np.empty(shape, np.dtype(f.dtype))
    ep_of_file: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        ep_of_file.setdefault((int(r["data/chunk_index"]), int(r["data/file_index"])), []).append(r)
    for c, fi in data_files(info, rows):
        eps = ep_of_file[(c, fi)]
        a, b = int(eps[0]["dataset_from_index"]), int(eps[-1]["dataset_to_index"])
        for k, col in read_data_file(root, info, c, fi, eps).items():
            out[k][a:b] = col
    return out


def read_data_file(
    root: Path, info: Info, c: int, fi: int, eps: list[dict]
) -> dict[str, np.ndarray]:
    """The checked columns of data file (c, fi) for the committed episodes ``eps`` it holds."""
    keys = info.data_keys
    path = root / info.data_path.format(chunk_index=c, file_index=fi)
    if not path.is_file():
        raise MissingMetaError(
            path,
            f"data file referenced by episode {eps[0]['episode_index']} is missing",
            "restore it from a copy",
        )
    table = parquet.read_table(path, "data file")
    for k in keys:
        parquet.check_column(path, table, k, info.features[k])
    a, b = int(eps[0]["dataset_from_index"]), int(eps[-1]["dataset_to_index"])
    index = table.column("index").to_numpy()
    sel = (index >= a) & (index < b)
    if int(sel.sum()) != b - a:
        raise SchemaMismatchError(
            path,
            f"field 'index': expected the {b - a} frames {a}..{b - 1} of episodes "
            f"{eps[0]['episode_index']}..{eps[-1]['episode_index']}, found {int(sel.sum())}",
            "the file is incomplete or belongs to another dataset",
        )
    if not sel.all():
        table = table.filter(pa.array(sel))
        index = index[sel]
    order = None if (np.diff(index) > 0).all() else np.argsort(index, kind="stable")
    cols = {}
    for k in keys:
        col = parquet.to_numpy(info.features[k], table.column(k))
        cols[k] = col if order is None else col[order]
    _check_frames(path, info, cols, eps, a)
    return cols


def _check_frames(path: Path, info: Info, cols, eps: list[dict], a: int) -> None:
    idx = np.asarray(cols["index"])
    b = a + len(idx)
    if not np.array_equal(idx, np.arange(a, b)):
        bad = int(np.flatnonzero(idx != np.arange(a, b))[0])
        raise SchemaMismatchError(
            path, f"field 'index' at row {bad}: expected {a + bad}, got {int(idx[bad])}"
        )
    ep_col, fr_col, ts_col = cols["episode_index"], cols["frame_index"], cols["timestamp"]
    for r in eps:
        s, t = int(r["dataset_from_index"]) - a, int(r["dataset_to_index"]) - a
        e = int(r["episode_index"])
        if not (ep_col[s:t] == e).all():
            raise SchemaMismatchError(
                path, f"field 'episode_index' in frames {s + a}..{t + a - 1}: expected {e}"
            )
        if not np.array_equal(fr_col[s:t], np.arange(t - s)):
            raise SchemaMismatchError(
                path, f"field 'frame_index' of episode {e}: expected 0..{t - s - 1}"
            )
        ts_expect = fr_col[s:t] / info.fps
        if np.abs(ts_col[s:t] - ts_expect).max() > 1e-3:
            raise SchemaMismatchError(
                path, f"field 'timestamp' of episode {e}: expected frame_index / fps ({info.fps})"
            )


def first_non_finite(x: np.ndarray, block: int = 1 << 20) -> int | None:
    """Row of the first NaN or ±inf in a float column ``[N]`` or ``[N, D]`` (None if all are
    finite, or the column is not float); scanned in blocks so a memory-mapped column is never
    copied whole."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    for s in range(0, len(x), block):
        part = np.asarray(x[s : s + block])
        bad = ~np.isfinite(part.reshape(len(part), -1)).all(1)
        if bad.any():
            return s + int(np.argmax(bad))
    return None


def check_finite(where: Path, cols: dict[str, np.ndarray], keys) -> None:
    """Raise :class:`NonFiniteError` naming the feature, episode and frame of the first NaN
    or infinity among ``cols[k]`` for ``k`` in ``keys`` (rows aligned with ``cols``'
    ``episode_index``, ``frame_index`` and ``index``)."""
    for k in keys:
        i = first_non_finite(cols[k])
        if i is not None:
            raise NonFiniteError(
                where,
                f"field {k!r} of episode {int(cols['episode_index'][i])} holds non-finite values "
                f"(first at frame {int(cols['frame_index'][i])} of the episode, index "
                f"{int(cols['index'][i])}); training on it fails",
                "re-record the episode, or copy the dataset without it "
                "(`anyskill data split --val-episodes E` moves it into val)",
            )


def _fingerprint(root: Path, info: Info, rows: list[dict]) -> str:
    h = hashlib.sha1()
    h.update(json.dumps(info.to_json(), sort_keys=True).encode())
    for c, f in data_files(info, rows):
        p = root / info.data_path.format(chunk_index=c, file_index=f)
        try:
            st = p.stat()
            h.update(f"{p.name}:{c}:{st.st_size}:{st.st_mtime_ns}".encode())
        except FileNotFoundError:
            h.update(f"{c}/{f}:missing".encode())
    return h.hexdigest()[:20]


def content_fingerprint(root: Path, info: Info, rows: list[dict]) -> str:
    """Like the column cache's key, plus the dataset's resolved path and every video file's
    path, size and modification time: changes when any data or video file changes, and
    differs between two copies of a dataset (a cache of decoded frames is keyed on it)."""
    h = hashlib.sha1()
    h.update(str(Path(root).resolve()).encode())
    h.update(_fingerprint(root, info, rows).encode())
    seen = set()
    for key in info.video_keys:
        for r in rows:
            p = Path(root) / VIDEO_PATH.format(
                video_key=key,
                chunk_index=r[f"videos/{key}/chunk_index"],
                file_index=r[f"videos/{key}/file_index"],
            )
            if p in seen:
                continue
            seen.add(p)
            try:
                st = p.stat()
                h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
            except FileNotFoundError:
                h.update(f"{p.relative_to(root)}:missing".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    env = os.environ.get("ANYSKILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anyskill" / "datasets"


def _cached_columns(root: Path, info: Info, rows, cache_dir) -> dict[str, np.ndarray]:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    where = base / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    fp = _fingerprint(root, info, rows)
    final = where / fp
    if not (final / "done").is_file():
        where.mkdir(parents=True, exist_ok=True)
        tmp = where / f".{fp}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        n = info.total_frames
        sink = {}
        for k in info.data_keys:
            f = info.features[k]
            shape = (n,) if f.is_scalar else (n, f.shape[0])
            sink[k] = np.lib.format.open_memmap(
                tmp / f"{k}.npy", mode="w+", dtype=np.dtype(f.dtype), shape=shape
            )
        try:
            _read_columns(root, info, rows, sink)
            for a in sink.values():
                a.flush()
            del sink
            atomic_write(tmp / "done", lambda p: p.write_text(str(root.resolve())))
            try:
                os.replace(tmp, final)
                fsync_dir(where)
            except OSError:  # another process built the same cache meanwhile
                if not (final / "done").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in where.iterdir():  # stale versions of this dataset
            if old.name != fp and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    cols = {}
    for k in info.data_keys:
        p = final / f"{k}.npy"
        try:
            # a plain ndarray view of the map: numpy.memmap's __getitem__ makes fancy
            # indexing ~10x slower than on the same memory as an ndarray
            cols[k] = np.load(p, mmap_mode="r").view(np.ndarray)
        except (OSError, ValueError) as e:
            shutil.rmtree(final, ignore_errors=True)
            raise CorruptFileError(
                p, f"column cache unreadable ({e})", "open the dataset again"
            ) from e
    return cols


def data_path(info: Info, c: int, f: int) -> str:
    return (info.data_path or DATA_PATH).format(chunk_index=c, file_index=f)
