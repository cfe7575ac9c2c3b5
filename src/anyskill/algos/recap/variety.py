"""Behaviour variety in deployment: action contrast at the same states, so that RECAP's labels
can carry information about actions.

A near-deterministic deployed policy visits each state with one action; whatever label a
frame gets then says which *episode* it came from, not which *action* was better, and a
correctly trained policy ignores the label. :class:`ChunkVariety` varies a fraction of the
chunks the policy executes — slower (every action of the chunk scaled by ``u ~ U[slow, 1]``)
and/or displaced by a constant offset (noise that stays correlated over the whole chunk, unlike
per-step noise that the physics averages away). Because the draw is per chunk, one episode
holds varied and plain chunks from similar states, and a chunk critic (``--advantage chunk``)
or the n-step advantage, centred within each episode (``--advantage-center``), can tell them
apart.

The draws come from the key the rollout gives the policy (one key, or one per env), folded
with a fixed tag: the inner policy receives the key unchanged, so its own samples are the same
as without the wrapper.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from anyskill.policies.base import Batch, ChunkPolicy, Policy

#: folded into the act key for the variety draws (the inner policy gets the key unchanged)
_TAG = 0x7A12


def _draws(key: Any, rows: int, n: int) -> np.ndarray:
    """``[rows, n]`` standard uniforms from ``key`` (one key, or one key per row)."""
    import jax

    if getattr(key, "ndim", 0) == 1 and len(key) == rows:  # one key per env
        keys = jax.vmap(lambda k: jax.random.fold_in(k, _TAG))(key)
        return np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys))
    return np.asarray(jax.random.uniform(jax.random.fold_in(key, _TAG), (rows, n)))


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkVariety(ChunkPolicy):
    """``inner``'s chunks, a ``fraction`` of them varied: scaled by ``u ~ U[slow, 1]`` (all
    actions of the chunk alike) and shifted by a per-chunk offset ``N(0, noise²)`` per
    action dimension (env units); actions of a varied chunk are clipped to ``[-clip, clip]``
    when ``clip`` is set."""

    inner: Policy
    fraction: float = 0.5
    """Fraction of chunks varied (per row, per call)."""
    slow: float = 0.5
    """Smallest speed scale of a varied chunk (1: no scaling)."""
    noise: float = 0.0
    """Standard deviation of a varied chunk's constant offset (0: none)."""
    clip: float | None = 1.0
    """Bound of a varied chunk's actions (the tabletop's action box is [-1, 1]); None: no
    clipping."""

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"variety fraction must be in [0, 1], got {self.fraction}")
        if not 0.0 <= self.slow <= 1.0:
            raise ValueError(f"variety slow must be in [0, 1] (a speed scale), got {self.slow}")
        if not self.noise >= 0.0:
            raise ValueError(f"variety noise must be >= 0, got {self.noise}")
        spec = self.inner.spec
        name = f"{spec.name}+variety({self.fraction:g},{self.slow:g},{self.noise:g})"
        object.__setattr__(self, "spec", dataclasses.replace(spec, name=name))
        object.__setattr__(self, "pad_batches", getattr(self.inner, "pad_batches", True))
        object.__setattr__(self, "infer_seed", getattr(self.inner, "infer_seed", 0))

    def act(self, obs: Batch, key: Any) -> np.ndarray:
        chunks = np.asarray(self.inner.act(obs, key), np.float32)  # [B, H, A]
        b, _, a = chunks.shape
        u = _draws(key, b, 2 + a)  # [pick, scale, offsets (as uniforms)...]
        varied = u[:, 0] < self.fraction
        scale = self.slow + (1.0 - self.slow) * u[:, 1]
        # offsets from the uniforms by the normal's inverse CDF (one draw per row)
        from scipy.special import ndtri

        offset = self.noise * ndtri(np.clip(u[:, 2:], 1e-6, 1 - 1e-6))
        out = chunks * scale[:, None, None] + offset[:, None, :]
        if self.clip is not None:
            out = np.clip(out, -self.clip, self.clip)
        return np.where(varied[:, None, None], out, chunks).astype(np.float32)


def varied(policy: Policy, fraction: float, slow: float, noise: float) -> Policy:
    """``policy`` in a :class:`ChunkVariety`, or ``policy`` itself when ``fraction`` is 0 (no
    chunk varied: the deployment is exactly the plain one)."""
    if fraction == 0.0:
        return policy
    return ChunkVariety(policy, fraction, slow, noise)


__all__ = ["ChunkVariety", "varied"]
