"""Crash-safe, incremental episode writer.

Frames of the episode in progress are kept in memory; ``end_episode`` commits the episode in
an order that makes ``meta/info.json`` the single commit point:

1. camera streams → ``videos/<key>/chunk-C/file-F.mp4`` (one episode per file),
2. the current data file rewritten with the new rows appended,
3. ``meta/tasks.parquet`` (only if the task is new), the current episodes table,
4. ``meta/info.json`` with the new totals — *the commit*,
5. ``meta/stats.json`` (pooled statistics; its ``count`` tells a reader if it is stale).

Every file is written atomically (temp file, fsync, rename, fsync of the directory), so a
process killed at any instant leaves each file either old or new, never torn. Readers trust
``info.json``'s ``total_episodes``/``total_frames`` and ignore rows past them, so a commit that
died between steps 2 and 4 is invisible; reopening the writer trims those rows, deletes
unreferenced files and recomputes stale statistics, then continues appending.

One writer at a time: a writer holds an exclusive lock on the dataset for its lifetime
(``anyskill.data.lock``; released by :meth:`EpisodeWriter.close` or when the process dies), so
a second writer is refused instead of silently overwriting the first one's commits.

Why rewrite instead of append: a parquet file is only valid once its footer is written, so
appending row groups to an open file (as LeRobot's writer does) loses the whole file on a
crash. Rewriting keeps every finished episode safe at the price of write amplification,
bounded by rolling to a new data file every ``data_files_size_in_mb`` (default 4 MB).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anyskill.data import meta, parquet
from anyskill.data.format import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_DATA_FILE_MB,
    EPISODES_PATH,
    INDEX_FEATURES,
    INFO_PATH,
    INTERVENTION,
    SOURCE_PATH,
    SOURCES,
    STATS_PATH,
    UNKNOWN_SUCCESS,
    VIDEO_PATH,
    CorruptFileError,
    DatasetExistsError,
    Feature,
    Info,
    SchemaMismatchError,
    as_number,
    atomic_write,
    atomic_write_json,
    chunk_file,
    fsync_dir,
    index_features,
    is_temp_file,
    read_info,
    write_failed,
)
from anyskill.data.lock import LOCK_NAME, WriterLock
from anyskill.data.stats import (
    FeatureStats,
    aggregate,
    compute_stats,
    flatten_episode_stats,
    image_stats,
)

#: Episodes per episodes-table file before rolling to the next one.
EPISODES_PER_META_FILE = 100


@dataclasses.dataclass(frozen=True)
class CommittedEpisode:
    """What ``end_episode`` returns: the episode is durable once this exists."""

    episode_index: int
    length: int
    from_index: int
    to_index: int
    task_index: int


class EpisodeWriter:
    """Append frames and finish episodes while a run is going.

    Create with :meth:`create` (a new dataset) or :meth:`open` (continue an existing one,
    repairing what a crash left behind). The writer holds the dataset's writer lock until
    :meth:`close` (also on leaving a ``with`` block) or until it is garbage collected."""

    def __init__(
        self,
        root: Path,
        info: Info,
        *,
        _rows: list[dict],
        _tasks: list[str],
        durable: bool = True,
        _lock: WriterLock | None = None,
    ):
        self._lock = _lock
        self.root = Path(root)
        self.info = info
        self.durable = durable
        self._tasks = list(_tasks)
        self._task_ids = {t: i for i, t in enumerate(self._tasks)}
        self._stats = meta.read_stats(self.root)
        # the data file and the episodes file being filled: their numbers in their streams
        # and their committed rows (kept in memory; each commit rewrites the whole file)
        self._meta_table: pa.Table | None = None
        if _rows:
            last = _rows[-1]
            self._data_n = last["data/chunk_index"] * info.chunks_size + last["data/file_index"]
            self._data_tables = [self._load_data_file(self._data_n)]
            self._meta_n = _meta_n(last, info)
            mc, mf = chunk_file(self._meta_n, info.chunks_size)
            self._meta_table = parquet.read_table(
                self.root / EPISODES_PATH.format(chunk_index=mc, file_index=mf), "episodes table"
            )
        else:
            self._data_n, self._data_tables, self._meta_n = 0, [], 0
        self._data_bytes = sum(t.nbytes for t in self._data_tables)
        self._schema = parquet.frame_schema(info.features)
        self._frames: dict[str, list] = {}
        self._task: str | None = None

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        root: Path | str,
        features: Mapping[str, Feature],
        fps: int,
        robot_type: str | None = None,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_MB,
        source_env: dict | None = None,
        durable: bool = True,
    ) -> EpisodeWriter:
        """A new empty dataset at ``root`` (which must not exist or be empty).

        ``features``: the per-frame features the caller provides (e.g. ``observation.state``,
        ``action``, camera keys); the index columns and ``intervention`` are added here.
        ``source_env``: optional ``{"env": name, ...}`` noting which built-in env recorded the
        data, so ``anyskill data render`` can redraw states. ``durable=False`` skips fsync:
        still safe when the process is killed, not when the machine loses power."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DatasetExistsError(
                root, "exists and is a file, not a dataset directory", "choose a new path"
            )
        if root.exists() and any(root.iterdir()):
            raise DatasetExistsError(
                root, "output directory exists and is not empty", "choose a new path"
            )
        reserved = set(INDEX_FEATURES) | {INTERVENTION, "task"}
        clash = sorted(reserved & set(features))
        if clash:
            raise ValueError(f"feature names {clash} are reserved (filled in by the writer)")
        for k, f in features.items():
            if not f.is_video and len(f.shape) != 1:
                raise ValueError(
                    f"feature {k!r}: non-video features must be 1-D [D], got shape {f.shape}"
                )
        all_features = dict(features)
        all_features[INTERVENTION] = Feature("bool", (1,))
        all_features.update(index_features())
        info = Info(
            fps=int(fps),
            features=all_features,
            robot_type=robot_type,
            data_files_size_in_mb=as_number(data_files_size_in_mb),
            splits={"train": "0:0"},
        )
        # Build the empty dataset beside ``root`` and rename it into place, so a crash during
        # creation leaves either nothing or a complete empty dataset. The lock is taken before
        # the rename (it moves with the directory), so no other writer ever sees it unlocked.
        tmp = None
        lock = None
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".creating", dir=root.parent)
            )
            lock = WriterLock.acquire(tmp)
            meta.write_tasks(tmp, [])
            if source_env is not None:
                atomic_write_json(tmp / SOURCE_PATH, source_env)
            atomic_write_json(tmp / INFO_PATH, info.to_json())
            try:
                os.replace(tmp, root)  # also replaces an empty directory
            except OSError as e:
                if root.is_dir() and any(root.iterdir()):
                    raise DatasetExistsError(
                        root,
                        "another writer created a dataset here at the same moment",
                        "choose a new path, or continue that dataset once it is finished",
                    ) from e
                raise
            lock.path = root / LOCK_NAME
            fsync_dir(root.parent)
        except BaseException as e:
            if lock is not None:
                lock.release()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise write_failed(root, e, "cannot create the dataset") from e
            raise
        return cls(root, info, _rows=[], _tasks=[], durable=durable, _lock=lock)

    @classmethod
    def open(cls, root: Path | str, durable: bool = True) -> EpisodeWriter:
        """Continue writing an existing dataset, first undoing any half-finished commit.

        Raises :class:`DatasetLockedError` (naming the holder) while another writer has it."""
        root = Path(root)
        read_info(root)  # a path that is no dataset gets that error, and no lock file
        lock = WriterLock.acquire(root)
        try:
            # read under the lock: the last writer may have committed until a moment ago
            info = read_info(root)
            if info.codebase_version != CODEBASE_VERSION:
                raise SchemaMismatchError(
                    root / INFO_PATH, f"cannot append to {info.codebase_version}"
                )
            rows = meta.read_episode_rows(root, info.total_episodes)
            tasks = meta.read_tasks(root)
            from anyskill.data.reader import check_episode_rows

            check_episode_rows(root, info, rows, len(tasks))
            w = cls.__new__(cls)
            w.root, w.info = root, info
            try:
                w._recover(rows, tasks)
            except OSError as e:
                raise write_failed(
                    root, e, "cannot repair what an interrupted write left behind"
                ) from e
            cls.__init__(
                w,
                root,
                w.info,
                _rows=rows[-1:],
                _tasks=tasks[: info.total_tasks],
                durable=durable,
                _lock=lock,
            )
        except BaseException:
            lock.release()
            raise
        return w

    def _recover(self, rows: list[dict], tasks: list[str]) -> None:
        """Remove what a commit that never reached info.json left behind."""
        root, info = self.root, self.info
        for p in root.rglob("*.tmp"):
            if is_temp_file(p):
                p.unlink(missing_ok=True)
        last_data = (
            rows[-1]["data/chunk_index"] * info.chunks_size + rows[-1]["data/file_index"]
            if rows
            else -1
        )
        last_meta = (
            rows[-1]["meta/episodes/chunk_index"] * info.chunks_size
            + rows[-1]["meta/episodes/file_index"]
            if rows
            else -1
        )
        # data: trim the last file to committed rows; delete files past it
        data_files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
        _trim(data_files, info.chunks_size, last_data, "data file", "index", info.total_frames)
        _trim(
            meta.episode_files(root),
            info.chunks_size,
            last_meta,
            "episodes table",
            "episode_index",
            info.total_episodes,
        )
        for key in info.video_keys:
            for p in (root / "videos" / key).glob("chunk-*/file-*.mp4"):
                if _file_number(p, info.chunks_size) >= info.total_episodes:
                    p.unlink()
        if len(tasks) > info.total_tasks:
            meta.write_tasks(root, tasks[: info.total_tasks])
        stats = meta.read_stats(root)
        counts = (
            {int(s.count.sum()) for k, s in stats.items() if not info.features[k].is_video}
            if stats
            else set()
        )
        if rows and counts != {info.total_frames}:
            full = meta.read_episode_rows(root, info.total_episodes, with_stats=True)
            meta.write_stats(root, _stats_from_rows(full, info))

    def _load_data_file(self, n: int) -> pa.Table:
        c, f = chunk_file(n, self.info.chunks_size)
        path = self.root / DATA_PATH.format(chunk_index=c, file_index=f)
        return parquet.read_table(path, "data file")

    # ----------------------------------------------------------------- recording

    @property
    def total_episodes(self) -> int:
        return self.info.total_episodes

    @property
    def total_frames(self) -> int:
        return self.info.total_frames

    @property
    def frames_in_episode(self) -> int:
        return len(self._frames.get(INTERVENTION, []))

    def add_frame(
        self, frame: Mapping[str, np.ndarray], task: str, intervention: bool = False
    ) -> None:
        """Append one frame of the episode in progress.

        ``frame`` maps every declared feature (``observation.state``, ``action``, camera keys)
        to its value; ``task`` is the instruction (constant within an episode);
        ``intervention``: a human was in control for this frame."""
        expected = set(self.info.user_keys) | set(self.info.video_keys)
        got = set(frame)
        if got != expected:
            raise SchemaMismatchError(
                self.root / INFO_PATH,
                f"add_frame: features missing {sorted(expected - got)}, unexpected "
                f"{sorted(got - expected)}; meta/info.json declares {sorted(expected)}",
            )
        if intervention and INTERVENTION not in self.info.features:
            raise SchemaMismatchError(
                self.root / INFO_PATH,
                f"add_frame: intervention=True but this dataset has no {INTERVENTION!r} feature "
                "(written by another tool); record interventions into a new dataset",
            )
        if self._task is None:
            self._task = task
        elif task != self._task:
            raise ValueError(
                f"add_frame: task changed within an episode ({self._task!r} -> {task!r}); "
                "end the episode first"
            )
        checked = {}
        for k, v in frame.items():
            f = self.info.features[k]
            arr = np.asarray(v)
            want = (f.shape if not f.is_scalar else (1,)) if not f.is_video else f.shape
            shape = arr.shape if not (f.is_scalar and arr.shape == ()) else (1,)
            dtype = np.dtype("uint8" if f.is_video else f.dtype)
            if shape != want or not np.can_cast(arr.dtype, dtype, "same_kind"):
                raise SchemaMismatchError(
                    self.root / INFO_PATH,
                    f"add_frame: feature {k!r} expected shape {want} {dtype}, got shape "
                    f"{arr.shape} {arr.dtype}",
                )
            checked[k] = arr.reshape(want).astype(dtype, copy=False)
        for k, v in checked.items():
            self._frames.setdefault(k, []).append(v)
        self._frames.setdefault(INTERVENTION, []).append(bool(intervention))

    def add_episode(
        self,
        frames: Mapping[str, np.ndarray],
        task: str,
        intervention: np.ndarray | None = None,
        **end_kwargs,
    ) -> CommittedEpisode:
        """Add a whole episode at once: ``frames[key]`` is ``[T, *shape]``; then
        ``end_episode(**end_kwargs)``."""
        if self.frames_in_episode:
            raise ValueError("add_episode: an episode is already in progress")
        lengths = {k: len(v) for k, v in frames.items()}
        if len(set(lengths.values())) != 1:
            raise SchemaMismatchError(
                self.root / INFO_PATH, f"add_episode: features have different lengths {lengths}"
            )
        t = next(iter(lengths.values()))
        iv = np.zeros(t, bool) if intervention is None else np.asarray(intervention, bool)
        try:
            for i in range(t):
                self.add_frame({k: v[i] for k, v in frames.items()}, task, bool(iv[i]))
            return self.end_episode(**end_kwargs)
        except BaseException:
            self.discard_episode()
            raise

    def discard_episode(self) -> None:
        """Drop the frames of the episode in progress."""
        self._frames, self._task = {}, None

    def end_episode(
        self,
        success: bool | None = None,
        source: str = "demonstration",
        policy_version: str = "",
        episode_info: Mapping[str, int | float | str] | None = None,
    ) -> CommittedEpisode:
        """Commit the episode in progress; once this returns, it survives any crash.

        ``success``: the episode's label (None = unknown); ``source``: demonstration,
        autonomous or corrected; ``policy_version``: which policy acted (free text);
        ``episode_info``: extra scalar columns for the episodes table (e.g. ``env_seed``).

        If the file system refuses a write (disk full, read-only) this raises
        :class:`WriteFailedError`: the episodes committed before are intact, and what the failed
        commit wrote is invisible to readers and removed by the next :meth:`open`. The frames
        stay in progress, so ``end_episode`` can be retried."""
        if self._lock is not None and not self._lock.held:
            raise ValueError(f"{self.root}: end_episode on a closed writer; open the dataset again")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        for k in episode_info or {}:
            if k in _EPISODE_COLUMNS or k.startswith(("stats/", "videos/", "data/", "meta/")):
                raise ValueError(f"episode_info key {k!r} clashes with a standard column")
        length = self.frames_in_episode
        if length == 0:
            raise ValueError("end_episode: the episode has no frames (call add_frame first)")
        info, root = self.info, self.root
        ep = info.total_episodes
        start = info.total_frames
        task = self._task or ""
        new_task = task not in self._task_ids
        task_index = self._task_ids.get(task, len(self._tasks))

        cols: dict[str, np.ndarray] = {k: np.stack(v) for k, v in self._frames.items()}
        cols[INTERVENTION] = np.asarray(self._frames[INTERVENTION], bool)
        cols["frame_index"] = np.arange(length, dtype=np.int64)
        cols["timestamp"] = (cols["frame_index"] / info.fps).astype(np.float32)
        cols["episode_index"] = np.full(length, ep, np.int64)
        cols["index"] = np.arange(start, start + length, dtype=np.int64)
        cols["task_index"] = np.full(length, task_index, np.int64)

        row: dict = {"episode_index": ep, "tasks": [task], "length": length}
        labels = {
            "success": UNKNOWN_SUCCESS if success is None else int(bool(success)),
            "source": source,
            "policy_version": str(policy_version),
            **(episode_info or {}),
        }
        try:
            c = self._commit(cols, row, labels, task, new_task)
        except OSError as e:
            raise write_failed(
                e.filename or root,
                e,
                f"episode {ep} was not saved (the {ep} episodes before it are intact)",
            ) from e
        # the episode is committed: only now does the writer's state move on
        self._tasks = c.tasks
        self._task_ids[task] = task_index
        self._data_n, self._data_tables, self._data_bytes = c.data_n, c.data_tables, c.data_bytes
        self._meta_n, self._meta_table = c.meta_n, c.meta_table

        # 5. stats
        self._stats = {
            k: aggregate([self._stats[k], s]) if k in self._stats else s for k, s in c.stats.items()
        }
        self.discard_episode()
        try:
            meta.write_stats(root, self._stats, self.durable)
        except OSError as e:
            raise write_failed(
                root / STATS_PATH,
                e,
                f"episode {ep} was saved but the statistics could not be updated (reopening "
                "the dataset with a writer recomputes them)",
            ) from e
        return CommittedEpisode(ep, length, start, start + length, task_index)

    def _commit(self, cols: dict, row: dict, labels: dict, task: str, new_task: bool) -> _Committed:
        """Steps 1-4 of ``end_episode``. Of the writer's state only ``self.info`` changes (at
        the commit); the rest is returned, so a write that fails leaves the writer as it was."""
        info, root = self.info, self.root
        ep, start, length = row["episode_index"], info.total_frames, row["length"]

        # 1. videos
        from anyskill.data.video import encode_mp4

        vc, vf = chunk_file(ep, info.chunks_size)
        for key in info.video_keys:
            path = root / VIDEO_PATH.format(video_key=key, chunk_index=vc, file_index=vf)
            atomic_write(path, lambda p, key=key: encode_mp4(p, cols[key], info.fps), self.durable)
            row[f"videos/{key}/chunk_index"] = vc
            row[f"videos/{key}/file_index"] = vf
            row[f"videos/{key}/from_timestamp"] = 0.0
            row[f"videos/{key}/to_timestamp"] = length / info.fps

        # 2. data file
        table = pa.Table.from_arrays(
            [parquet.to_arrow(info.features[k], cols[k]) for k in self._schema.names],
            schema=self._schema,
        )
        data_n, tables, data_bytes = self._data_n, self._data_tables, self._data_bytes
        if tables and data_bytes + table.nbytes > info.data_files_size_in_mb * 2**20:
            data_n, tables, data_bytes = data_n + 1, [], 0
        dc, df = chunk_file(data_n, info.chunks_size)
        tables = tables + [table]
        parquet.write_table(
            root / DATA_PATH.format(chunk_index=dc, file_index=df),
            pa.concat_tables(tables).combine_chunks(),
            self.durable,
        )

        # 3. tasks, episodes table
        tasks = self._tasks + [task] if new_task else self._tasks
        if new_task:
            meta.write_tasks(root, tasks, self.durable)
        ep_stats = {k: compute_stats(cols[k]) for k in info.data_keys} | {
            k: image_stats(cols[k]) for k in info.video_keys
        }
        row.update(
            {
                "data/chunk_index": dc,
                "data/file_index": df,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
            }
        )
        meta_n, meta_table = self._meta_n, self._meta_table
        if meta_table is not None and meta_table.num_rows >= EPISODES_PER_META_FILE:
            meta_n, meta_table = meta_n + 1, None
        mc, mf = chunk_file(meta_n, info.chunks_size)
        row["meta/episodes/chunk_index"] = mc
        row["meta/episodes/file_index"] = mf
        row.update(labels)
        row.update(flatten_episode_stats(ep_stats))
        meta_table = _append_row(meta_table, row)
        meta.write_episode_table(root, mc, mf, meta_table, self.durable)

        # 4. commit
        new_info = dataclasses.replace(
            info,
            total_episodes=ep + 1,
            total_frames=start + length,
            total_tasks=len(tasks),
            splits={"train": f"0:{ep + 1}"},
        )
        atomic_write_json(root / INFO_PATH, new_info.to_json(), self.durable)
        self.info = new_info
        return _Committed(
            tasks, data_n, tables, data_bytes + table.nbytes, meta_n, meta_table, ep_stats
        )

    def close(self) -> None:
        """Discard the episode in progress (nothing else is buffered) and release the writer
        lock; the writer cannot commit afterwards."""
        self.discard_episode()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: Episodes-table columns the writer fills in (``episode_info`` may not use these names).
_EPISODE_COLUMNS = frozenset(meta.EPISODE_COLUMNS) | {"success", "source", "policy_version"}


@dataclasses.dataclass(frozen=True)
class _Committed:
    """The writer's state after a commit (see ``EpisodeWriter._commit``)."""

    tasks: list[str]
    data_n: int
    data_tables: list[pa.Table]
    data_bytes: int
    meta_n: int
    meta_table: pa.Table
    stats: dict[str, FeatureStats]


def _append_row(table: pa.Table | None, row: dict) -> pa.Table:
    new = meta.episode_table([row])
    if table is None:
        return new
    try:
        # one chunk per column: parquet writes many tiny chunks very slowly
        return pa.concat_tables([table, new], promote_options="permissive").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a column changed type: rebuild
        return meta.episode_table(table.to_pylist() + [row])


def _meta_n(row: dict, info: Info) -> int:
    return row["meta/episodes/chunk_index"] * info.chunks_size + row["meta/episodes/file_index"]


def _file_number(path: Path, chunks_size: int) -> int:
    c = int(path.parent.name.split("-")[1])
    f = int(path.stem.split("-")[1])
    return c * chunks_size + f


def _stats_from_rows(rows: list[dict], info: Info) -> dict[str, FeatureStats]:
    """Dataset statistics pooled from the per-episode stats in the episodes table."""
    out: dict[str, FeatureStats] = {}
    for key in info.features:
        parts = []
        for r in rows:
            d = {
                s: r[f"stats/{key}/{s}"]
                for s in ("mean", "std", "min", "max", "count", "q01", "q10", "q50", "q90", "q99")
                if f"stats/{key}/{s}" in r and r[f"stats/{key}/{s}"] is not None
            }
            if "mean" in d:
                parts.append(FeatureStats.from_json(d))
        if parts:
            out[key] = aggregate(parts)
    return out


def load_source_env(root: Path) -> dict | None:
    path = Path(root) / SOURCE_PATH
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"invalid JSON ({e})", "restore it from a copy") from e
    if not isinstance(raw, dict):
        raise CorruptFileError(path, f"expected a JSON object, got {type(raw).__name__}")
    return raw


__all__ = ["CommittedEpisode", "EpisodeWriter", "EPISODES_PATH", "load_source_env"]


def _trim(files, chunks_size: int, last: int, what: str, column: str, total: int) -> None:
    """Drop the uncommitted tail of a file series: files past ``last`` are deleted, rows of
    file ``last`` with ``column >= total`` are cut (atomically rewritten)."""
    for p in files:
        n = _file_number(p, chunks_size)
        if n > last:
            p.unlink()
        elif n == last:
            t = parquet.read_table(p, what)
            keep = pc.less(t.column(column), total)
            if not pc.all(keep).as_py():
                parquet.write_table(p, t.filter(keep))
