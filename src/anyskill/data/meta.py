"""Reading and writing the metadata tables: tasks, episodes, stats and anyskill's sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from anyskill.data import parquet
from anyskill.data.format import (
    EPISODES_PATH,
    STATS_PATH,
    TASKS_PATH,
    CorruptFileError,
    MissingMetaError,
    SchemaMismatchError,
    atomic_write_json,
)
from anyskill.data.stats import FeatureStats, stats_from_json, stats_to_json

#: Columns of the episodes table that a v3.0 reader needs.
EPISODE_COLUMNS = (
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)


def write_tasks(root: Path, tasks: list[str], durable: bool = True) -> None:
    """``meta/tasks.parquet``: the task string is the (pandas) index, ``task_index`` a column,
    as LeRobot writes it; the pandas metadata lets ``pd.read_parquet`` restore the index."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "anyskill", "version": "0.1.0"},
        "pandas_version": "2.2.0",
    }
    table = pa.table(
        {"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)), "task": pa.array(tasks)},
    ).replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    parquet.write_table(Path(root) / TASKS_PATH, table, durable)


def read_tasks(root: Path) -> list[str]:
    """Task strings ordered by ``task_index``."""
    path = Path(root) / TASKS_PATH
    if not path.is_file():
        raise MissingMetaError(path, "meta/tasks.parquet is missing", "restore it from a copy")
    table = parquet.read_table(path, "tasks table")
    names = table.column_names
    task_col = (
        "task"
        if "task" in names
        else ("__index_level_0__" if "__index_level_0__" in names else None)
    )
    if task_col is None or "task_index" not in names:
        raise SchemaMismatchError(
            path, f"expected columns 'task' (index) and 'task_index', got {names}"
        )
    tasks = table.column(task_col).to_pylist()
    idx = table.column("task_index").to_numpy()
    if sorted(idx.tolist()) != list(range(len(idx))):
        raise SchemaMismatchError(
            path, f"task_index must be 0..{len(idx) - 1} without gaps, got {sorted(idx.tolist())}"
        )
    out = [""] * len(idx)
    for t, i in zip(tasks, idx, strict=True):
        out[int(i)] = t
    return out


def episode_files(root: Path) -> list[Path]:
    """All episodes parquet files in (chunk, file) order, skipping temp files."""
    base = Path(root) / "meta" / "episodes"
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("chunk-*/file-*.parquet"))


def read_episode_rows(root: Path, total_episodes: int, with_stats: bool = False) -> list[dict]:
    """The first ``total_episodes`` rows of the episodes tables, checked for the v3.0 columns.
    Rows beyond ``total_episodes`` (written by a commit that crashed before info.json) are
    ignored. Per-episode ``stats/...`` columns are dropped unless ``with_stats``."""
    rows: list[dict] = []
    files = episode_files(root)
    if total_episodes > 0 and not files:
        raise MissingMetaError(
            Path(root) / "meta" / "episodes",
            f"meta/info.json says {total_episodes} episodes but meta/episodes/ has no files",
            "restore meta/episodes from a copy",
        )
    for path in files:
        if len(rows) >= total_episodes:
            break
        table = parquet.read_table(path, "episodes table")
        for col in EPISODE_COLUMNS:
            if col not in table.column_names:
                raise SchemaMismatchError(path, f"episodes column {col!r} is missing")
        if not with_stats:
            table = table.drop_columns([c for c in table.column_names if c.startswith("stats/")])
        rows.extend(table.to_pylist())
    rows = [r for r in rows if int(r["episode_index"]) < total_episodes]
    rows.sort(key=lambda r: int(r["episode_index"]))
    if len(rows) != total_episodes or [int(r["episode_index"]) for r in rows] != list(
        range(total_episodes)
    ):
        got = [int(r["episode_index"]) for r in rows]
        raise SchemaMismatchError(
            Path(root) / "meta" / "episodes",
            f"expected episodes 0..{total_episodes - 1} (info.json total_episodes="
            f"{total_episodes}), found {len(got)} rows"
            + (
                f" (first missing: {next(i for i in range(total_episodes) if i not in set(got))})"
                if len(got) < total_episodes
                else ""
            ),
        )
    return rows


def episode_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts, possibly with different keys) as one table; missing values are null."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})


def write_episode_table(
    root: Path, chunk: int, file: int, table: pa.Table, durable: bool = True
) -> Path:
    path = Path(root) / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
    parquet.write_table(path, table, durable)
    return path


def read_stats(root: Path) -> dict[str, FeatureStats]:
    path = Path(root) / STATS_PATH
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return stats_from_json(raw)
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise CorruptFileError(
            path, f"cannot parse stats ({e})", "recompute with `anyskill data stats PATH --write`"
        ) from e


def write_stats(root: Path, stats: dict[str, FeatureStats], durable: bool = True) -> None:
    atomic_write_json(Path(root) / STATS_PATH, stats_to_json(stats), durable)
