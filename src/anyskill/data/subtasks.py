"""Subtask annotations of an episode store (issue 27): for every frame, which step of its
task the episode works on, as canonical text — written after the fact, frames untouched.

One sidecar per dataset, ``meta/anyskill/subtasks.parquet`` (written atomically: temp file,
fsync, rename), one row per annotated frame in the dataset's frame order:

    episode_index  int64   the frame's episode (checked against the data on read)
    frame_index    int64   the frame's index in its episode (checked too)
    subtask_index  int32   index into the subtask table; -1: no subtask active

and the subtask table in the file's schema metadata (``anyskill.subtasks``, JSON):
``texts`` (canonical text of each subtask, e.g. "push the red block into the red zone"),
``rows`` (the structured form: a tabletop task row per subtask, ``[-1] * 7`` when the
labeller has none) and ``labeller``. A dataset without the file loads and trains as before;
frames past the annotated ones (episodes appended later) read as :data:`UNLABELLED`.

:func:`annotate_subtasks` labels a tabletop dataset (``anyskill data annotate-subtasks``):
each episode's task from its instruction (template or grammar text,
``tasks.parse_instruction``) and its frames' ``observation.state`` (the tabletop
observation), labelled by :func:`anyskill.envs.tabletop.subtasks.label_episode`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from anyskill.data import parquet
from anyskill.data.format import SUBTASKS_PATH, SchemaMismatchError
from anyskill.data.reader import Dataset

#: a frame with no active subtask (its task is done)
NO_SUBTASK = -1
#: a frame the annotation does not cover
UNLABELLED = -2
_META_KEY = b"anyskill.subtasks"
ROW_WIDTH = 7


@dataclasses.dataclass(frozen=True)
class SubtaskAnnotation:
    """A dataset's subtask labels.

    index:    [N] int32 per frame: index into ``texts`` (NO_SUBTASK: none active,
              UNLABELLED: not annotated)
    texts:    canonical text of each subtask
    rows:     [S, 7] int32 structured form of each subtask (a tabletop task row)
    labeller: what produced the labels
    """

    index: np.ndarray
    texts: tuple[str, ...]
    rows: np.ndarray
    labeller: str

    @property
    def labelled(self) -> np.ndarray:
        """``[N]`` bool: frames the annotation covers."""
        return self.index != UNLABELLED

    def text(self, frame: int) -> str | None:
        """The subtask text of a frame ("" when none is active, None when unlabelled)."""
        k = int(self.index[frame])
        return None if k == UNLABELLED else "" if k == NO_SUBTASK else self.texts[k]


def path_of(ds: Dataset) -> Path:
    return ds.root / SUBTASKS_PATH


def write_subtasks(
    ds: Dataset, index, texts, rows=None, labeller: str = "", durable: bool = True
) -> None:
    """Write the subtask labels of the first ``len(index)`` frames of ``ds`` (replacing any
    earlier ones, atomically). ``index`` ``[n <= N]``: per frame an index into ``texts`` or
    NO_SUBTASK; ``rows`` ``[len(texts), 7]`` their structured form (default: none)."""
    index = np.asarray(index, np.int64).reshape(-1)
    texts = tuple(str(t) for t in texts)
    rows = (
        np.full((len(texts), ROW_WIDTH), -1, np.int64)
        if rows is None
        else np.asarray(rows, np.int64).reshape(-1, ROW_WIDTH)
    )
    where = path_of(ds)
    if len(index) > ds.num_frames:
        raise ValueError(f"{where}: {len(index)} labels for a dataset of {ds.num_frames} frames")
    if len(rows) != len(texts):
        raise ValueError(f"{where}: {len(rows)} subtask rows for {len(texts)} texts")
    bad = (index < NO_SUBTASK) | (index >= len(texts))
    if bad.any():
        f = int(np.argmax(bad))
        raise ValueError(
            f"{where}: frame {f} has subtask index {index[f]}, expected -1 (none) or an index "
            f"into the {len(texts)} subtask texts"
        )
    n = len(index)
    table = pa.table(
        {
            "episode_index": np.asarray(ds.column("episode_index")[:n], np.int64).reshape(-1),
            "frame_index": np.asarray(ds.column("frame_index")[:n], np.int64).reshape(-1),
            "subtask_index": index.astype(np.int32),
        }
    )
    meta = {"texts": list(texts), "rows": rows.tolist(), "labeller": labeller}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    parquet.write_table(where, table, durable)


def check_table(where: Path, t: pa.Table, num_frames: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The checks that need only the file (``anyskill data validate`` runs them): columns,
    the subtask table in the metadata, no more rows than frames, indices inside the table.
    Returns ``(texts, rows)``."""
    fix = "re-run `anyskill data annotate-subtasks`"
    for col in ("episode_index", "frame_index", "subtask_index"):
        if col not in t.column_names:
            raise SchemaMismatchError(where, f"column {col!r} is missing (has {t.column_names})")
    try:
        meta = json.loads((t.schema.metadata or {})[_META_KEY])
        texts = tuple(str(x) for x in meta["texts"])
        rows = np.asarray(meta["rows"], np.int32).reshape(-1, ROW_WIDTH)
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaMismatchError(
            where, f"schema metadata {_META_KEY.decode()!r} is missing or malformed ({e})", fix
        ) from None
    if t.num_rows > num_frames:
        raise SchemaMismatchError(
            where, f"{t.num_rows} labelled frames, the dataset has {num_frames}", fix
        )
    index = t.column("subtask_index").to_numpy()
    if len(texts) != len(rows) or (index >= len(texts)).any() or (index < NO_SUBTASK).any():
        raise SchemaMismatchError(
            where, f"subtask indices outside the table of {len(texts)} subtasks", fix
        )
    return texts, rows


def read_subtasks(ds: Dataset) -> SubtaskAnnotation | None:
    """The dataset's subtask labels, or None when it has none. Labels that no longer match
    the frames (the dataset was rewritten) are refused, naming the file and the frame."""
    where = path_of(ds)
    if not where.is_file():
        return None
    t = parquet.read_table(where, "subtask annotation")
    texts, rows = check_table(where, t, ds.num_frames)
    n = t.num_rows
    for col in ("episode_index", "frame_index"):
        have = t.column(col).to_numpy()
        want = np.asarray(ds.column(col)[:n]).reshape(-1)
        if not np.array_equal(have, want):
            f = int(np.argmax(have != want))
            raise SchemaMismatchError(
                where,
                f"frame {f}: {col} {have[f]} in the labels, {want[f]} in the data",
                "the dataset changed since it was annotated; re-run "
                "`anyskill data annotate-subtasks`",
            )
    index = np.full(ds.num_frames, UNLABELLED, np.int32)
    index[:n] = t.column("subtask_index").to_numpy()
    meta = json.loads(t.schema.metadata[_META_KEY])
    return SubtaskAnnotation(index, texts, rows, str(meta.get("labeller", "")))


@dataclasses.dataclass(frozen=True)
class SubtaskSummary:
    """What :func:`annotate_subtasks` wrote: episodes and frames labelled, distinct
    subtasks, subtasks per episode and frames per subtask activation (means)."""

    path: str
    episodes: int
    frames: int
    subtasks: int
    per_episode: float
    frames_per_subtask: float


def annotate_subtasks(
    path: Path | str,
    progress: Callable[[int], None] | None = None,
    ds: Dataset | None = None,
) -> SubtaskSummary:
    """Label every episode of the tabletop dataset at ``path`` with its subtasks and write
    the sidecar (see the module docstring). ``progress(n)``: 1 per labelled episode."""
    from anyskill.envs.tabletop import tasks as T
    from anyskill.envs.tabletop.subtasks import label_episode, num_objects_of

    ds = ds or Dataset.open(path, mmap=False)
    if "observation.state" not in ds.columns:
        raise SchemaMismatchError(
            ds.root / "meta/info.json",
            "no 'observation.state' feature: subtask labels are read off the recorded states",
        )
    state = ds.column("observation.state")
    try:
        num_objects_of(state.shape[-1])
    except ValueError as e:
        raise SchemaMismatchError(
            ds.root / "meta/info.json",
            f"features['observation.state']: {e}",
            "subtask labels need a tabletop dataset (anyskill data record --env tabletop-*)",
        ) from None
    ep = ds.episodes
    index = np.full(ds.num_frames, NO_SUBTASK, np.int64)
    table: dict[tuple[int, ...], int] = {}
    counts, lengths = [], []
    for e in range(len(ep)):
        text = ds.tasks[ep.task_index[e]] if ep.task_index[e] >= 0 else ""
        content = T.parse_instruction(text)
        if content is None:
            raise ValueError(
                f"{ds.root}: episode {e}'s instruction {text!r} is no tabletop task's (template "
                "or grammar); subtask labels need to know the task"
            )
        a, b = int(ep.start[e]), int(ep.stop[e])
        labels = label_episode(np.asarray(state[a:b]), content)
        ids = np.array([table.setdefault(s.row, len(table)) for s in labels.subtasks] + [-1])
        index[a:b] = ids[labels.subtask]  # NO_SUBTASK (-1) picks the trailing -1
        counts.append(len(labels.subtasks))
        lengths += np.bincount(labels.subtask[labels.subtask >= 0]).tolist()
        if progress is not None:
            progress(1)
    rows = list(table)
    write_subtasks(
        ds,
        index,
        [T.instruction(r) for r in rows],
        np.array(rows, np.int64).reshape(-1, ROW_WIDTH),
        labeller="anyskill.envs.tabletop.subtasks",
    )
    return SubtaskSummary(
        path=str(ds.root),
        episodes=len(ep),
        frames=int(ds.num_frames),
        subtasks=len(rows),
        per_episode=float(np.mean(counts)) if counts else 0.0,
        frames_per_subtask=float(np.mean(lengths)) if lengths else 0.0,
    )
