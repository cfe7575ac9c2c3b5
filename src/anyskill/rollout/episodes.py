"""What a rollout returns: a batch of recorded episodes, padded to a common length."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class Episodes:
    """Recorded episodes, ``[B, T, ...]`` arrays padded past each episode's ``length``.

    Frame ``t`` holds the observation *before* action ``t``; an episode's frames run through
    the step that ended it. What the padding holds is unspecified (the batch env keeps
    stepping envs whose episode has ended, so it is usually the next episode's start)."""

    state: np.ndarray
    """``[B, T, obs_dim]`` float32: the env's state observation (``observation/state``)."""
    goal: np.ndarray
    """``[B, T, goal_dim]`` float32: the commanded goal (``goal_dim`` 0 when the env has none)."""
    action: np.ndarray
    """``[B, T, action_dim]`` float32: the action executed from frame ``t``."""
    intervention: np.ndarray
    """``[B, T]`` bool: the corrector, not the policy, chose frame ``t``'s action."""
    length: np.ndarray
    """``[B]`` int: frames of each episode (through the step that ended it)."""
    success: np.ndarray
    """``[B]`` bool: the episode ended (terminated or truncated) on a successful step."""
    task: list[str]
    """``B`` instructions (``""`` when the env gives none)."""
    family: list[str] | None = None
    """``B`` task family names (tabletop), or None when the env has no task families."""
    images: np.ndarray | None = None
    """``[B, T, S, S, 3]`` uint8 camera frames of the state before each action, when recorded."""
    reward: np.ndarray | None = None
    """``[B, T]``: the env's reward for the step from frame ``t``."""
    final_state: np.ndarray | None = None
    """``[B, obs_dim]``: the observation each episode ended on (the state after its last
    action; for an episode cut short by the rollout's horizon, its latest observation)."""
    env_state: Any = None
    """The simulator's :class:`~anyskill.envs.base.State` of every frame (a pytree of
    ``[B, T, ...]`` JAX arrays: it holds PRNG keys), when the rollout was asked to record it (JAX envs only): what
    privileged relabelling (DART's noise-free expert labels) and replay need."""

    @property
    def num_episodes(self) -> int:
        return len(self.length)

    def take(self, i: int, frames: int | None = None) -> Episodes:
        """Episode ``i`` alone (a batch of one), its frames cut to ``frames`` (default: all)."""
        t = self.state.shape[1] if frames is None else frames

        def one(name: str, value: Any) -> Any:
            if value is None:
                return None
            if name in ("task", "family"):
                return [value[i]]
            if name == "env_state":
                return jax.tree.map(lambda x: x[i : i + 1, :t], value)
            if name in ("length", "success", "final_state"):
                return value[i : i + 1]
            return value[i : i + 1, :t]

        return Episodes(
            **{f.name: one(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    def frames(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` cut to its length, under LeRobot feature names (what an episode
        store holds): ``observation.state``, ``observation.goal`` (when the env has a goal),
        ``action``."""
        t = int(self.length[i])
        out = {"observation.state": self.state[i, :t]}
        if self.goal.shape[-1]:
            out["observation.goal"] = self.goal[i, :t]
        out["action"] = self.action[i, :t]
        return out


def concat(parts: list[Episodes]) -> Episodes:
    """One :class:`Episodes` from several, in order; shorter ones are padded at the end by
    repeating their last frame (padding is unspecified anyway)."""
    if len(parts) == 1:
        return parts[0]
    t = max(p.state.shape[1] for p in parts)

    def pad(x: Any) -> Any:
        if x.shape[1] == t:
            return x
        xp = np if isinstance(x, np.ndarray) else jax.numpy  # PRNG keys stay JAX arrays
        edge = xp.repeat(x[:, -1:], t - x.shape[1], axis=1)
        return xp.concatenate([x, edge], axis=1)

    def cat(name: str) -> Any:
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            if not all(v is None for v in values):
                raise ValueError(f"cannot concatenate episodes with and without {name!r}")
            return None
        if name in ("task", "family"):
            return sum((list(v) for v in values), [])
        if name in ("length", "success", "final_state"):
            return np.concatenate(values)
        if name == "env_state":
            return jax.tree.map(lambda *xs: jax.numpy.concatenate([pad(x) for x in xs]), *values)
        return np.concatenate([pad(v) for v in values])

    return Episodes(**{f.name: cat(f.name) for f in dataclasses.fields(Episodes)})
