"""Closed-loop evaluation of a chunking policy in the built-in tabletop simulator.

Every env renders its camera, the policy samples an action chunk, the first ``replan_every``
actions are executed, and so on; success is the instruction's predicate at the end of each
env's first episode. All envs run in one jitted ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.model import Obs
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import Tabletop
from anyskill.nets.transformer import tokenize

#: ``chunk_fn(params, key, obs) -> [B, H, A]`` actions in env units; ``obs.state`` is the raw
#: env observation (the policy normalizes it), the other fields are model inputs.
ChunkFn = Callable[[Any, jax.Array, Obs], jax.Array]


def instruction_tokens(env: Tabletop, max_len: int, suffix: str = ""):
    """Rows of ``env``'s task table and their instruction tokens, for lookup inside jit."""
    rows, _ = T.task_table(env.families, env.split)
    texts = [T.instruction(r) + suffix for r in rows]
    tokens, _ = tokenize(texts, max_len)
    return jnp.asarray(rows), jnp.asarray(tokens)


def lookup_tokens(rows, tokens, task_row):
    """Tokens of the instruction whose row equals ``task_row`` ([B, ROW_WIDTH])."""
    match = jnp.all(task_row[:, None, :] == rows[None], axis=-1)  # [B, R]
    return tokens[jnp.argmax(match, axis=1)]


def make_observe(env: Tabletop, num_envs: int, image_size: int, num_cameras: int, rows, tokens):
    """``observe(state) -> Obs`` for a batch of envs: camera images (one render repeated per
    camera), instruction tokens looked up from the task row, the raw state."""

    def observe(state):
        if num_cameras:
            img = jax.vmap(lambda p: env.render_image(p, image_size))(state.physics)
            images = jnp.repeat(img[:, None], num_cameras, axis=1)
        else:
            images = jnp.zeros((num_envs, 0, 1, 1, 3), jnp.uint8)
        tok = lookup_tokens(rows, tokens, state.physics.task)
        return Obs(state=state.obs, images=images, tokens=tok, text_mask=tok != 0)

    return observe


def make_rollout(
    env: Tabletop,
    chunk_fn: ChunkFn,
    num_envs: int,
    replan_every: int,
    image_size: int,
    num_cameras: int,
    max_text_len: int,
    prompt_suffix: str = "",
    record_size: int = 0,
):
    """``rollout(params, key) -> (success, family, steps)``, each ``[num_envs]``.

    Every env runs its first episode to the end (the longest family's episode length);
    ``family`` is the index in ``tasks.FAMILIES`` of the task it drew. With ``record_size``
    > 0 the rollout also returns the camera frames ``[T, num_envs, S, S, 3]`` (uint8, the
    state before each step; an env's frames past its episode's end are not meaningful) and
    the task rows ``[num_envs, ROW_WIDTH]`` the envs drew."""
    rows, tokens = instruction_tokens(env, max_text_len, prompt_suffix)
    horizon = int(max(T.EPISODE_LENGTH[f] for f in env.families))
    n_plans = -(-horizon // replan_every)

    # Three small jitted pieces driven from Python (one per replanning) rather than one scan
    # with the policy inside: XLA compiles a VLA sampler nested in the env's scan very slowly
    # (over 10 minutes on 2 CPU cores), while these compile in seconds and are reused.
    reset = jax.jit(lambda keys: jax.vmap(env.reset)(keys))
    obs_fn = jax.jit(make_observe(env, num_envs, image_size, num_cameras, rows, tokens))
    chunk = jax.jit(lambda params, k, obs: chunk_fn(params, k, obs)[:, :replan_every])

    @jax.jit
    def execute(carry, actions):
        def act(c, a):
            state, done, success, steps = c
            frame = (
                jax.vmap(lambda p: env.render_image(p, record_size))(state.physics)
                if record_size
                else None
            )
            nxt = jax.vmap(env.step)(state, a)
            ended = nxt.terminated | nxt.truncated
            success = jnp.where(done, success, nxt.success & ended)
            steps = steps + (~done).astype(jnp.int32)
            return (nxt, done | ended, success, steps), frame

        return jax.lax.scan(act, carry, actions.swapaxes(0, 1))

    def rollout(params, key):
        k_reset, k_run = jax.random.split(key)
        state = reset(jax.random.split(k_reset, num_envs))
        family = state.physics.task[:, T.FAMILY]
        zeros = jnp.zeros(num_envs, bool)
        carry = (state, zeros, zeros, jnp.zeros(num_envs, jnp.int32))
        frames = []
        for k in jax.random.split(k_run, n_plans):
            carry, f = execute(carry, chunk(params, k, obs_fn(carry[0])))
            if record_size:
                frames.append(np.asarray(f))
        _, _, success, steps = carry
        if record_size:
            return success, family, steps, np.concatenate(frames)[:horizon], state.physics.task
        return success, family, steps

    return rollout


def rollout_video(
    env: Tabletop,
    chunk_fn: ChunkFn,
    params,
    key: jax.Array,
    path,
    *,
    episodes: int,
    replan_every: int,
    image_size: int,
    num_cameras: int,
    max_text_len: int,
    size: int = 128,
) -> dict:
    """Write a video of ``episodes`` closed-loop episodes side by side, each captioned with
    its instruction (green once fulfilled); returns ``{path, instructions, success}``."""
    from anyskill.envs.render import save_video, tile_frames
    from anyskill.envs.video import caption_frame

    roll = make_rollout(
        env,
        chunk_fn,
        episodes,
        replan_every,
        image_size,
        num_cameras,
        max_text_len,
        record_size=size,
    )
    success, _, steps, frames, rows = (np.asarray(x) for x in roll(params, key))
    texts = [T.instruction(r) for r in rows]
    clips = []
    for i in range(episodes):
        n = int(steps[i])
        clip = [caption_frame(frames[t, i], texts[i], False, size // 6) for t in range(n)]
        # hold the last frame a second, captioned with the outcome
        clip += [caption_frame(frames[n - 1, i], texts[i], bool(success[i]), size // 6)] * 10
        clips.append(np.stack(clip))
    out = save_video(tile_frames(clips, cols=min(4, episodes)), path, fps=float(env.control_hz))
    return {"path": str(out), "instructions": texts, "success": success.tolist()}


@dataclasses.dataclass
class Evaluator:
    """Success per ``split/family`` of a chunking policy; compiles one rollout per split once
    and reuses it for every evaluation of a run."""

    env: Tabletop
    chunk_fn: ChunkFn
    splits: tuple[str, ...]
    episodes_per_family: int
    replan_every: int
    image_size: int
    num_cameras: int
    max_text_len: int
    prompt_suffix: str = ""

    def __post_init__(self):
        if self.episodes_per_family < 1:  # no episodes: every success rate would be NaN
            raise ValueError(
                f"episodes per task family must be >= 1, got {self.episodes_per_family}"
            )
        n = self.episodes_per_family * len(self.env.families)
        self._rollouts = {
            s: make_rollout(
                dataclasses.replace(self.env, split=s),
                self.chunk_fn,
                n,
                self.replan_every,
                self.image_size,
                self.num_cameras,
                self.max_text_len,
                self.prompt_suffix,
            )
            for s in self.splits
        }

    def __call__(self, params, key) -> dict[str, float]:
        out = {}
        for i, (split, roll) in enumerate(self._rollouts.items()):
            success, family, _ = (np.asarray(x) for x in roll(params, jax.random.fold_in(key, i)))
            rates = []
            for f in self.env.families:
                sel = family == T.FAMILIES.index(f)
                if sel.any():
                    out[f"{split}/{f}"] = float(success[sel].mean())
                    rates.append(out[f"{split}/{f}"])
            out[f"{split}/mean"] = float(np.mean(rates)) if rates else float("nan")
        return out
