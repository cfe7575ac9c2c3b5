"""Rollout videos of any policy or expert on any built-in task (``anyskill render``).

A *policy function* here is ``act(state, key) -> action`` for one env (vmapped inside), so a
scripted expert, a random policy and a trained network all plug in the same way.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from anyskill.envs.base import Env, State
from anyskill.envs.maze import PointMaze
from anyskill.envs.tabletop import ScriptedExpert, Tabletop

PolicyFn = Callable[[State, jax.Array], jax.Array]
POLICIES = ("expert", "random", "zero")


def builtin_policy(env: Env, name: str, noise: float = 0.1) -> PolicyFn:
    """``expert`` (tabletop), ``random`` or ``zero``."""
    if name == "expert":
        if not isinstance(env, Tabletop):
            raise ValueError(
                f"{env.name} has no scripted expert (only tabletop tasks do); use --policy "
                "random, zero, or a run directory written by `anyskill train crl`"
            )
        return ScriptedExpert(env, noise=noise)
    if name == "random":
        return lambda state, key: env.random_actions(key)
    if name == "zero":
        return lambda state, key: jnp.zeros(env.action_dim)
    raise ValueError(
        f"unknown policy {name!r}: use one of {', '.join(POLICIES)} or a run directory"
    )


def rollout(env: Env, policy: PolicyFn, key: jax.Array, episodes: int, steps: int):
    """``steps`` steps of ``episodes`` envs; returns the states ``[steps + 1, episodes]``."""
    k_reset, k_act = jax.random.split(key)
    start = jax.vmap(env.reset)(jax.random.split(k_reset, episodes))

    def step(state, k):
        action = jax.vmap(policy)(state, jax.random.split(k, episodes))
        nxt = jax.vmap(env.step)(state, action)
        return nxt, nxt

    _, states = jax.lax.scan(step, start, jax.random.split(k_act, steps))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), start, states)


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
    policy: PolicyFn,
    key: jax.Array,
    episodes: int = 4,
    size: int = 192,
    steps: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Frames ``[T, H, W, 3]`` of ``episodes`` tiled side by side, and a summary.

    Tabletop episodes are drawn by the JAX camera with the instruction under each tile (green
    once it has been fulfilled); the episode keeps running after success so the end state
    stays in view. Mazes are drawn with their walls, goal and trail.
    """
    from anyskill.envs.render import render_maze_frames, tile_frames

    if isinstance(env, Tabletop):
        env = dataclasses.replace(env, terminate_on_success=False)
    steps = steps or env.episode_length
    states = jax.jit(rollout, static_argnums=(0, 1, 3, 4))(env, policy, key, episodes, steps)
    success = np.asarray(states.success)  # [T+1, N]
    # states[t] with ``truncated`` already belongs to the next episode: stop one frame before.
    trunc = np.asarray(states.truncated)
    last = np.where(trunc.any(0), trunc.argmax(0) - 1, steps)
    ever = np.maximum.accumulate(success, axis=0)
    summary = {
        "env": env.name,
        "episodes": episodes,
        "steps": steps,
        "success": float(ever[-1].mean()),
    }
    if isinstance(env, Tabletop):
        first = jax.tree.map(lambda x: x[0], states)
        texts = env.instruction(first)
        summary["instructions"] = texts
        imgs = jax.jit(jax.vmap(jax.vmap(lambda p: env.render_image(p, size))))(states.physics)
        imgs = np.asarray(imgs)  # [T+1, N, H, W, 3]
        clips = []
        for i in range(episodes):
            frames = [
                caption_frame(imgs[t, i], texts[i], bool(ever[t, i]), size // 6)
                for t in range(last[i] + 1)
            ]
            clips.append(np.stack(frames))
    elif isinstance(env, PointMaze):
        # final_obs: the last position of an episode even on the step that auto-resets it.
        pos = np.asarray(env.achieved_goal(states.final_obs))
        goals = np.asarray(states.goal)
        clips = [
            render_maze_frames(env, pos[: last[i] + 2, i], goals[0, i], size=size)
            for i in range(episodes)
        ]
    else:
        raise ValueError(f"no renderer for {type(env).__name__}")
    return tile_frames(clips, cols=min(4, episodes)), summary


def save_rollout_video(frames: np.ndarray, path: Path, fps: float = 10.0) -> Path:
    from anyskill.envs.render import save_video

    return save_video(frames, path, fps=fps)
