"""Rollout videos of any policy or expert on any built-in task (``anyskill render``).

The episodes are run by :func:`anyskill.rollout.rollout`, so anything that acts is a
:class:`~anyskill.policies.base.Policy`. The built-in ``expert``, ``random`` and ``zero``
are :class:`~anyskill.rollout.StatePolicy` objects: they read the simulator's state (the
privileged ``env/state`` field a pure-JAX env offers), and run inside the jitted scan that
steps the envs, one program per render.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from anyskill.envs.base import Env
from anyskill.envs.maze import PointMaze
from anyskill.envs.tabletop import Tabletop
from anyskill.rollout import StatePolicy, expert_policy, random_policy, rollout, zero_policy

POLICIES = ("expert", "random", "zero")


def builtin_policy(env: Env, name: str, noise: float = 0.1) -> StatePolicy:
    """``expert`` (tabletop), ``random`` or ``zero``."""
    if name == "expert":
        if not isinstance(env, Tabletop):
            raise ValueError(
                f"{env.name} has no scripted expert (only tabletop tasks do); use --policy "
                "random, zero, or a run directory written by `anyskill train crl`"
            )
        return expert_policy(env, noise=noise)
    if name == "random":
        return random_policy(env)
    if name == "zero":
        return zero_policy(env)
    raise ValueError(
        f"unknown policy {name!r}: use one of {', '.join(POLICIES)} or a run directory"
    )


def caption_frame(frame: np.ndarray, text: str, ok: bool, width_chars: int) -> np.ndarray:
    """``frame`` with up to three lines of ``text`` under it (green when ``ok``)."""
    lines = textwrap.wrap(text, width_chars)[:3]
    h = 12 * 3 + 6  # always room for three lines, so every tile has the same height
    img = Image.new("RGB", (frame.shape[1], frame.shape[0] + h), (255, 255, 255))
    img.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(img)
    colour = (30, 130, 50) if ok else (40, 40, 40)
    for i, line in enumerate(lines):
        draw.text((3, frame.shape[0] + 3 + 12 * i), line, fill=colour)
    return np.asarray(img)


def render_rollouts(
    env: Env,
    policy: Any,
    key: jax.Array,
    episodes: int = 4,
    size: int = 192,
    steps: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Frames ``[T, H, W, 3]`` of ``episodes`` tiled side by side, and a summary.

    Tabletop episodes are drawn by the JAX camera with the instruction under each tile (green
    once it has been fulfilled); the episode keeps running after success so the end state
    stays in view. Mazes are drawn with their walls, goal and trail. ``success`` in the
    summary: the fraction of episodes that succeeded at some step.
    """
    from anyskill.envs.render import render_maze_frames, tile_frames

    if isinstance(env, Tabletop):
        env = dataclasses.replace(env, terminate_on_success=False)
    elif not isinstance(env, PointMaze):
        raise ValueError(f"no renderer for {type(env).__name__}")
    steps = steps or env.episode_length
    tabletop = isinstance(env, Tabletop)
    ep = rollout(
        env,
        policy,
        key,
        num_envs=episodes,
        horizon=steps,
        replan_every=1,
        record_images=size if tabletop else 0,
    )
    # ever[:, t]: succeeded in one of the states 0..t (state t + 1 follows reward t)
    live = np.arange(ep.reward.shape[1])[None] < ep.length[:, None]
    won = (ep.reward > 0) & live
    ever = np.maximum.accumulate(np.pad(won, ((0, 0), (1, 0))), axis=1)
    summary = {
        "env": env.name,
        "episodes": episodes,
        "steps": steps,
        "success": float(ever[:, -1].mean()),
    }
    if tabletop:
        summary["instructions"] = list(ep.task)
        clips = [
            np.stack(
                [
                    caption_frame(ep.images[i, t], ep.task[i], bool(ever[i, t]), size // 6)
                    for t in range(int(ep.length[i]))
                ]
            )
            for i in range(episodes)
        ]
    else:
        # the positions of every frame, then the one the episode ended on
        pos = np.asarray(env.achieved_goal(ep.state))
        end = np.asarray(env.achieved_goal(ep.final_state))
        clips = [
            render_maze_frames(
                env,
                np.concatenate([pos[i, : int(ep.length[i])], end[i : i + 1]]),
                ep.goal[i, 0],
                size=size,
            )
            for i in range(episodes)
        ]
    return tile_frames(clips, cols=min(4, episodes)), summary


def save_rollout_video(frames: np.ndarray, path: Path, fps: float = 10.0) -> Path:
    from anyskill.envs.render import save_video

    return save_video(frames, path, fps=fps)
