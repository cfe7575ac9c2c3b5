"""Helpers for the episode-store tests: a deterministic small dataset."""

from __future__ import annotations

import numpy as np

from anyskill.data.format import vector_feature, video_feature
from anyskill.data.writer import EpisodeWriter


def state_of(e: int, t: int) -> np.ndarray:
    return np.array([e, t, np.sin(e + 0.1 * t), -t * 0.5], np.float32)


def action_of(e: int, t: int) -> np.ndarray:
    return np.array([0.01 * t, -e, e * t], np.float32)


FEATURES = {"observation.state": vector_feature(4), "action": vector_feature(3)}


def write_dataset(root, lengths, images: bool = False, **create_kwargs) -> EpisodeWriter:
    feats = dict(FEATURES)
    if images:
        feats["observation.images.cam"] = video_feature(16, 16, 10)
    w = EpisodeWriter.create(root, feats, fps=10, **create_kwargs)
    append(w, lengths, images)
    return w


def append(w: EpisodeWriter, lengths, images: bool = False) -> None:
    sources = ("demonstration", "autonomous", "corrected")
    for n in lengths:
        e = w.total_episodes
        for t in range(n):
            frame = {"observation.state": state_of(e, t), "action": action_of(e, t)}
            if images:
                frame["observation.images.cam"] = np.full(
                    (16, 16, 3), (e * 40 + t * 8) % 250, np.uint8
                )
            w.add_frame(frame, task=f"task {e % 3}", intervention=(t % 4 == 1))
        w.end_episode(
            success=(None if e % 5 == 4 else e % 2 == 0),
            source=sources[e % 3],
            policy_version=f"v{e // 2}",
        )
