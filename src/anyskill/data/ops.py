"""Whole-dataset operations behind ``anyskill data``: exact statistics, merge, split, render.

``merge`` and ``split`` always write a *new* dataset and only read their inputs; they refuse
an output path that exists. Episodes are copied with their labels (annotations applied),
source, policy version and per-frame annotations; camera streams are decoded and re-encoded
(one more generation of lossy compression).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyskill.data import meta
from anyskill.data.format import (
    INDEX_FEATURES,
    INTERVENTION,
    DatasetExistsError,
    SchemaMismatchError,
    atomic_write_json,
)
from anyskill.data.reader import Dataset
from anyskill.data.stats import FeatureStats, compute_stats, image_stats
from anyskill.data.writer import EpisodeWriter, load_source_env


def exact_stats(ds: Dataset, video_frames_per_episode: int = 8) -> dict[str, FeatureStats]:
    """Statistics of every feature computed from the full columns (exact quantiles); camera
    stats from a few evenly spaced frames per episode."""
    out = {k: compute_stats(np.asarray(v)) for k, v in ds.columns.items()}
    for key in ds.info.video_keys:
        frames = []
        for e in range(ds.num_episodes):
            v = ds.episode_video(e, key)
            take = np.linspace(0, len(v) - 1, min(len(v), video_frames_per_episode)).astype(int)
            frames.append(v[take])
        if frames:
            s = image_stats(np.concatenate(frames), max_frames=10**9)
            out[key] = s
    return out


def write_stats(ds: Dataset, stats: dict[str, FeatureStats]) -> None:
    meta.write_stats(ds.root, stats)


def _check_new(out: Path) -> None:
    if out.exists():
        raise DatasetExistsError(
            out, "output path already exists", "merge/split never overwrite; choose a new path"
        )


def _user_features(ds: Dataset) -> dict:
    skip = set(INDEX_FEATURES) | {INTERVENTION}
    return {k: f for k, f in ds.info.features.items() if k not in skip}


def _copy(sources: list[tuple[Dataset, np.ndarray]], out: Path) -> Dataset:
    """Write the chosen episodes of each source dataset, in order, to a new dataset."""
    first = sources[0][0]
    feats = _user_features(first)
    src_env = load_source_env(first.root)
    for ds, _ in sources[1:]:
        other = _user_features(ds)
        if {k: (f.dtype, f.shape) for k, f in other.items()} != {
            k: (f.dtype, f.shape) for k, f in feats.items()
        } or ds.info.fps != first.info.fps:
            raise SchemaMismatchError(
                ds.root / "meta" / "info.json",
                f"features/fps differ from {first.root}: expected "
                f"{ {k: f'{f.dtype}{list(f.shape)}' for k, f in feats.items()} } at "
                f"{first.info.fps} fps, got "
                f"{ {k: f'{f.dtype}{list(f.shape)}' for k, f in other.items()} } at "
                f"{ds.info.fps} fps",
                "only datasets with the same features can be merged",
            )
        if load_source_env(ds.root) != src_env:
            src_env = None
    ann_names = sorted({n for ds, _ in sources for n in ds.frame_annotation_names()})
    writer = EpisodeWriter.create(
        out, feats, fps=first.info.fps, robot_type=first.info.robot_type, source_env=src_env
    )
    ann_out: dict[str, list[np.ndarray]] = {n: [] for n in ann_names}
    for ds, eps in sources:
        anns = {
            n: (ds.frame_annotation(n) if n in ds.frame_annotation_names() else None)
            for n in ann_names
        }
        data_keys = [k for k in feats if not feats[k].is_video]
        for e in eps:
            e = int(e)
            s, t = int(ds.episodes.start[e]), int(ds.episodes.stop[e])
            frames = {k: np.asarray(ds.columns[k][s:t]) for k in data_keys}
            for key in ds.info.video_keys:
                frames[key] = ds.episode_video(e, key)
            extra = {
                k: v
                for k, v in ds._rows[e].items()
                if k in ("env_seed", "env_episode") and v is not None
            }
            succ = int(ds.episodes.success[e])
            writer.add_episode(
                frames,
                task=ds.tasks[int(ds.episodes.task_index[e])],
                intervention=ds.intervention[s:t],
                success=None if succ < 0 else bool(succ),
                source=str(ds.episodes.source[e]),
                policy_version=str(ds.episodes.policy_version[e]),
                episode_info=extra or None,
            )
            for n, a in anns.items():
                ann_out[n].append(a[s:t] if a is not None else np.full(t - s, np.nan, np.float32))
    writer.close()
    result = Dataset.open(out, mmap=False)
    for n, parts in ann_out.items():
        if parts:
            result.annotate_frames(n, np.concatenate(parts))
    return result


def merge(inputs: list[Path], out: Path) -> Dataset:
    """Concatenate the episodes of ``inputs`` (same features and fps) into a new dataset."""
    out = Path(out)
    _check_new(out)
    if not inputs:
        raise ValueError("merge needs at least one input dataset")
    sources = []
    for p in inputs:
        ds = Dataset.open(p, mmap=False)
        sources.append((ds, np.arange(ds.num_episodes)))
    return _copy(sources, out)


def split(
    path: Path, out: Path, val_fraction: float = 0.1, seed: int = 0, val_episodes=None
) -> tuple[Dataset, Dataset]:
    """Write ``out/train`` and ``out/val`` with a random (seeded) or explicit episode split."""
    out = Path(out)
    if val_episodes is None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    _check_new(out)
    ds = Dataset.open(path, mmap=False)
    n = ds.num_episodes
    if val_episodes is not None:
        val = np.unique(np.asarray(val_episodes, np.int64))
        if len(val) and (val.min() < 0 or val.max() >= n):
            raise ValueError(f"--val-episodes must be in [0, {n}), got {val.tolist()}")
    else:
        k = max(1, int(round(val_fraction * n)))
        val = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    train = np.setdiff1d(np.arange(n), val)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"split of {n} episodes leaves an empty part (val={val.tolist()})")
    out.mkdir(parents=True)
    tr = _copy([(ds, train)], out / "train")
    va = _copy([(ds, val)], out / "val")
    atomic_write_json(
        out / "split.json",
        {"source": str(path), "train": train.tolist(), "val": val.tolist(), "seed": seed},
    )
    return tr, va


def episode_frames(ds: Dataset, e: int, camera: str | None = None) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` of episode ``e``: the stored camera stream if there is one,
    else re-simulated from the recorded reset key and actions if the dataset was recorded
    from a built-in env (``anyskill data record``)."""
    cams = ds.info.video_keys
    if cams:
        key = camera or cams[0]
        return ds.episode_video(e, key)
    if camera is not None:
        raise ValueError(f"--camera {camera!r}: the dataset has no camera streams")
    src = load_source_env(ds.root)
    row = ds._rows[e]
    if src is None or row.get("env_episode") is None or "action" not in ds.columns:
        raise ValueError(
            f"{ds.root}: episode {e} has no camera stream and was not recorded from a built-in "
            "env (no meta/anyskill/source.json with env_seed/env_episode), so there is nothing "
            "to draw it from; record with --images or render from the source"
        )
    from anyskill.data.record import EXECUTED, replay_images

    s, t = int(ds.episodes.start[e]), int(ds.episodes.stop[e])
    # a DART recording labels the noise-free action; what was executed is kept beside it
    executed = EXECUTED if EXECUTED in ds.columns else "action"
    return replay_images(
        src["env"],
        int(row["env_seed"]),
        int(row["env_episode"]),
        np.asarray(ds.columns[executed][s:t]),
        int(src.get("image_size", 64)),
        str(src.get("instructions", "templates")),
    )


def render(
    ds: Dataset, episodes: list[int], out: Path, camera: str | None = None, fps=None
) -> Path:
    """Write the chosen episodes side by side (shorter ones hold their last frame)."""
    from anyskill.envs.render import save_video, tile_frames

    for e in episodes:
        if not 0 <= e < ds.num_episodes:
            raise ValueError(f"episode {e} out of range [0, {ds.num_episodes})")
    clips = [episode_frames(ds, e, camera) for e in episodes]
    frames = tile_frames(clips, cols=min(len(clips), 4))
    return Path(save_video(frames, Path(out), fps=fps or ds.info.fps))
