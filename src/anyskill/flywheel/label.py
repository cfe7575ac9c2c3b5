"""``anyskill label DATASET``: a person labels episodes as success or failure.

Each unlabelled episode (success ``-1``; every episode with ``all_episodes``) is shown — its
camera video written to ``DATASET/labels/episode_NNNNNN.gif``, or a text summary when the
dataset has no camera — and the labeller answers ``y`` / ``n`` / ``s`` (skip) / ``q`` (quit).
Every answer is saved at once as a ``success`` annotation (a side file; frames are never
rewritten), so quitting or a crash loses nothing already answered.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
import tyro

from anyskill.data.reader import Dataset

PROMPT = "success? [y]es/[n]o/[s]kip/[q]uit: "
ANSWERS = {"y": 1, "yes": 1, "n": 0, "no": 0, "s": None, "skip": None}


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Label episodes of an episode store as success or failure, one by one."""

    path: tyro.conf.Positional[Path]
    """Dataset root (e.g. RUN_DIR/data of a flywheel run)."""
    all_episodes: bool = False
    """Also show episodes that already have a label (and let the answer replace it)."""
    video: bool = True
    """Write each episode's camera video to DATASET/labels/ for viewing."""


def label_episodes(
    cfg: LabelConfig, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> dict:
    """Ask for each episode's label; returns counts ``{labelled, skipped, remaining}``."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    ds = Dataset.open(cfg.path)
    ep = ds.episodes
    todo = np.arange(ds.num_episodes) if cfg.all_episodes else np.flatnonzero(ep.success < 0)
    print(f"{len(todo)} episode(s) to label in {cfg.path}", file=stdout)
    cams = list(ds.info.video_keys)
    labelled = skipped = 0
    for n, e in enumerate(todo):
        e = int(e)
        task = ds.tasks[int(ds.columns["task_index"][int(ep.start[e])])] if ds.tasks else ""
        print(
            f"\n[{n + 1}/{len(todo)}] episode {e}: {task!r}, {int(ep.length[e])} frames, "
            f"source {ep.source[e]}, policy {ep.policy_version[e] or '-'}, "
            f"current label {int(ep.success[e])}",
            file=stdout,
        )
        if cams and cfg.video:
            from anyskill.envs.render import save_video

            path = save_video(
                ds.episode_video(e, cams[0]), cfg.path / "labels" / f"episode_{e:06d}.gif"
            )
            print(f"video: {path}", file=stdout)
        while True:
            print(PROMPT, end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:  # end of input: stop like quit
                answer = "q"
            else:
                answer = line.strip().lower()
            if answer in ("q", "quit"):
                remaining = len(todo) - n
                print(f"stopped; {remaining} episode(s) left unlabelled", file=stdout)
                return {"labelled": labelled, "skipped": skipped, "remaining": remaining}
            if answer in ANSWERS:
                break
            print(f"please answer y, n, s or q (got {answer!r})", file=stdout)
        value = ANSWERS[answer]
        if value is None:
            skipped += 1
            continue
        ds.annotate_episodes("success", np.array([value], np.int8), episodes=np.array([e]))
        labelled += 1
    return {"labelled": labelled, "skipped": skipped, "remaining": 0}
