"""Check every invariant of an episode store; the first broken one raises a typed error
naming the file and field (``anyskill data validate``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from anyskill.data import meta, parquet
from anyskill.data.format import (
    EPISODE_ANNOTATIONS_PATH,
    FRAME_ANNOTATIONS_DIR,
    SOURCES,
    STATS_PATH,
    SUBTASKS_PATH,
    VIDEO_PATH,
    CorruptFileError,
    MissingMetaError,
    SchemaMismatchError,
    read_info,
)
from anyskill.data.reader import check_episode_rows, check_finite, data_files, read_data_file
from anyskill.data.video import VideoProbe, probe_mp4


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``validate`` checked, and problems that do not make the dataset unreadable."""

    path: str
    episodes: int
    frames: int
    data_files: int
    video_files: int
    warnings: tuple[str, ...]


def validate(root: Path | str, deep: bool = False) -> Report:
    """Raise on the first broken invariant; ``deep`` also decodes every video."""
    root = Path(root)
    info = read_info(root)
    warnings: list[str] = []
    tasks = meta.read_tasks(root)
    rows = meta.read_episode_rows(root, info.total_episodes)
    check_episode_rows(root, info, rows, len(tasks))
    for r in rows:
        src = r.get("source")
        if src is not None and src not in SOURCES:
            raise SchemaMismatchError(
                root / "meta" / "episodes",
                f"episode {r['episode_index']}: field 'source' must be one of {SOURCES}, got {src!r}",
            )
        for t in r["tasks"]:
            if t not in tasks:
                raise SchemaMismatchError(
                    root / "meta" / "tasks.parquet",
                    f"episode {r['episode_index']}: task {t!r} is not in the tasks table",
                )
    by_file: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_file.setdefault((int(r["data/chunk_index"]), int(r["data/file_index"])), []).append(r)
    files = data_files(info, rows)
    for c, f in files:
        cols = read_data_file(root, info, c, f, by_file[(c, f)])
        check_finite(
            root / info.data_path.format(chunk_index=c, file_index=f), cols, info.user_keys
        )
    referenced = {root / info.data_path.format(chunk_index=c, file_index=f) for c, f in files}
    for p in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        if p not in referenced:
            warnings.append(
                f"{p}: not referenced by any committed episode (left by an interrupted write; "
                "reopening the writer removes it)"
            )
    nvid = 0
    for key in info.video_keys:
        seen = set()
        probes: dict[Path, VideoProbe] = {}
        for r in rows:
            path = root / VIDEO_PATH.format(
                video_key=key,
                chunk_index=r[f"videos/{key}/chunk_index"],
                file_index=r[f"videos/{key}/file_index"],
            )
            if not path.is_file():
                raise MissingMetaError(
                    path, f"video of episode {r['episode_index']} for camera {key!r} is missing"
                )
            if path not in probes:
                probes[path] = probe_mp4(path)
            _check_probe(path, probes[path], key, info, r)
            if deep:
                from anyskill.data.video import decode_range

                frames = decode_range(
                    path, float(r[f"videos/{key}/from_timestamp"]), int(r["length"]), info.fps
                )
                if frames.shape[1:] != info.features[key].shape:
                    raise SchemaMismatchError(
                        path,
                        f"camera {key!r}: expected frames {info.features[key].shape}, decoded "
                        f"{frames.shape[1:]}",
                    )
            seen.add(path)
        nvid += len(seen)
    stats = meta.read_stats(root)
    if not (root / STATS_PATH).is_file() and info.total_frames > 0:
        warnings.append(f"{root / STATS_PATH}: missing (run `anyskill data stats PATH --write`)")
    for k, s in stats.items():
        if k not in info.features:
            warnings.append(f"{root / STATS_PATH}: stats for undeclared feature {k!r}")
        elif not info.features[k].is_video and int(s.count.sum()) != info.total_frames:
            warnings.append(
                f"{root / STATS_PATH}: {k!r} count {int(s.count.sum())} != total_frames "
                f"{info.total_frames} (stale; reopen the writer or `anyskill data stats --write`)"
            )
    ann = root / EPISODE_ANNOTATIONS_PATH
    if ann.is_file():
        t = parquet.read_table(ann, "episode annotations")
        if "episode_index" not in t.column_names:
            raise SchemaMismatchError(ann, "column 'episode_index' is missing")
    fa = root / FRAME_ANNOTATIONS_DIR
    for p in sorted(fa.glob("*.parquet")) if fa.is_dir() else []:
        t = parquet.read_table(p, "frame annotation")
        if p.stem not in t.column_names:
            raise SchemaMismatchError(p, f"column {p.stem!r} is missing")
        if t.num_rows > info.total_frames:
            raise CorruptFileError(
                p, f"{t.num_rows} values for a dataset of {info.total_frames} frames"
            )
    st = root / SUBTASKS_PATH
    if st.is_file():
        from anyskill.data.subtasks import check_table

        check_table(st, parquet.read_table(st, "subtask annotation"), info.total_frames)
    return Report(
        path=str(root),
        episodes=info.total_episodes,
        frames=info.total_frames,
        data_files=len(files),
        video_files=nvid,
        warnings=tuple(warnings),
    )


def _check_probe(path: Path, probe: VideoProbe, key: str, info, r: dict) -> None:
    """The container holds the episode's frames at the declared size (no decoding)."""
    h, w = info.features[key].shape[:2]
    if probe.width is not None and (probe.height, probe.width) != (h, w):
        raise SchemaMismatchError(
            path,
            f"camera {key!r}: meta/info.json declares {h}x{w} frames, the video holds "
            f"{probe.height}x{probe.width}",
        )
    first = int(round(float(r[f"videos/{key}/from_timestamp"]) * info.fps))
    need = first + int(r["length"])
    if probe.frames is not None and probe.frames < need:
        raise CorruptFileError(
            path,
            f"camera {key!r}: the video holds {probe.frames} frames, episode "
            f"{r['episode_index']} needs {need} (frames {first}..{need - 1})",
            "the video is truncated or belongs to another episode; re-record the episode",
        )
