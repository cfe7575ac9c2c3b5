"""Built-in servable policies: stand-ins until trained checkpoints exist.

``expert:tabletop-reach``
    A proportional controller that reads everything it needs from the observation vector
    (pusher position, zone positions) and the instruction (which zone): it returns an
    open-loop chunk planned by integrating the pusher's velocity command, so it behaves like
    a chunking policy under latency (a late chunk is still a plan that starts where the
    observation was taken). Succeeds on ``tabletop-reach``; used to measure success and
    smoothness against delay.

``random-mlp``
    A JAX MLP with random weights over the state and the flattened camera image, jitted and
    batched. Its forward pass costs real compute (width x depth), so it measures what
    batching concurrent requests buys.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from anyskill.policies.base import IMAGE, PROMPT, STATE, Batch, ChunkPolicy, InputSpec, PolicySpec

PROMPT_MAX_BYTES = 256  # words (InputSpec.max_length counts words)


def _tabletop_layout(env_name: str, num_objects: int):
    from anyskill import envs
    from anyskill.envs.tabletop import Tabletop
    from anyskill.envs.tabletop import tasks as T

    env = envs.make(env_name, num_objects=num_objects)
    if not isinstance(env, Tabletop):
        raise ValueError(f"{env_name} is not a tabletop env")
    return env, T.COLOURS


@dataclasses.dataclass(frozen=True)
class ReachController(ChunkPolicy):
    """``expert:tabletop-reach``: chunks of a proportional controller toward the named zone.

    Observation layout (``envs/tabletop/env.py``): ``obs[0:2]`` pusher position,
    ``obs[-8:]`` the (x, y) of the red, green, blue and yellow zones."""

    num_objects: int = 3
    """Object slots of the env (sets ``obs_dim = 4 + 14 * num_objects + 8``)."""
    horizon: int = 10
    """Actions per chunk."""
    gain: float = 3.0
    """Velocity command per unit of position error."""
    aim_jitter: float = 0.05
    """Each chunk aims this far (Gaussian std, table units) off the zone centre, so that
    consecutive chunks disagree a little, as a learned policy's do; 0 makes every chunk
    continue the previous one exactly (and chunk blending moot)."""
    seed: int = 0
    speed: float = 0.5
    """Largest command, as a fraction of the action bound 1. Deliberately unhurried: at full
    speed most reach episodes end inside their first chunk, leaving no chunk boundaries (and
    no slack for an outage) to measure."""

    def __post_init__(self):
        env, colours = _tabletop_layout("tabletop-reach", self.num_objects)
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0 < self.speed <= 1:
            raise ValueError(f"speed must be in (0, 1], got {self.speed}")
        object.__setattr__(self, "_colours", colours)
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))
        object.__setattr__(self, "_step", env.max_speed / env.control_hz)
        object.__setattr__(
            self,
            "spec",
            PolicySpec(
                inputs=(
                    InputSpec(STATE, (env.obs_dim,), "float32", "tabletop observation vector"),
                    InputSpec(PROMPT, (), "str", "instruction", max_length=PROMPT_MAX_BYTES),
                ),
                action_dim=env.action_dim,
                action_horizon=self.horizon,
                control_hz=env.control_hz,
                name="expert:tabletop-reach",
            ),
        )

    pad_batches = False  # numpy: nothing to compile

    def target(self, obs: dict[str, Any]) -> np.ndarray | None:
        """The zone centre the instruction names, or None when it names no zone colour."""
        words = re.findall(r"[a-z]+", obs[PROMPT].lower())
        named = [w for w in words if w in self._colours]
        if not named:
            return None
        zones = np.asarray(obs[STATE], np.float32)[-8:].reshape(4, 2)
        return zones[self._colours.index(named[-1])]

    def act(self, obs: Batch, key=None) -> np.ndarray:
        """Chunks toward the named zones. The aim jitter comes from the controller's own
        generator (seeded by ``seed``), not from ``key``: it stands in for a learned policy's
        chunk-to-chunk disagreement, which the latency benchmarks measure per seed."""
        spec = self.spec
        n = len(obs[PROMPT])
        out = np.zeros((n, spec.action_horizon, spec.action_dim), np.float32)
        for i in range(n):
            row = {STATE: obs[STATE][i], PROMPT: obs[PROMPT][i]}
            goal = self.target(row)
            if goal is None:  # no zone named: hold still rather than guess
                continue
            if self.aim_jitter:
                goal = goal + self._rng.normal(0.0, self.aim_jitter, 2).astype(np.float32)
            pos = np.asarray(row[STATE], np.float32)[:2].copy()
            for h in range(spec.action_horizon):
                a = np.clip(self.gain * (goal - pos), -self.speed, self.speed)
                out[i, h] = a
                pos = pos + a * self._step
        return out


@dataclasses.dataclass(frozen=True)
class RandomMLP(ChunkPolicy):
    """``random-mlp``: a jitted MLP with random weights over state + image -> action chunk.

    Batches are padded to the next power of two so at most log2(max batch) programs are
    compiled (``warmup`` compiles them before the server accepts clients)."""

    obs_dim: int = 54
    """State size (54 = tabletop with 3 object slots)."""
    image_size: int = 64
    """Side of the square uint8 camera image; 0 drops the image input."""
    width: int = 256
    """Hidden units per layer (256 x 4 with a 64 px image: ~2.5 ms per forward pass of one
    observation on the 2-core dev machine, ~4.5 ms for 16)."""
    depth: int = 4
    """Hidden layers."""
    horizon: int = 10
    action_dim: int = 2
    control_hz: float = 10.0
    execute_horizon: int | None = None
    """Actions of each chunk a client should execute before replanning (announced in the
    server's metadata); None: the whole chunk."""
    seed: int = 0

    def __post_init__(self):
        import jax
        import jax.numpy as jnp

        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {self.width} and {self.depth}")
        inputs = [InputSpec(STATE, (self.obs_dim,), "float32", "state vector")]
        if self.image_size:
            inputs.append(
                InputSpec(IMAGE, (self.image_size, self.image_size, 3), "uint8", "RGB camera")
            )
        inputs.append(InputSpec(PROMPT, (), "str", "instruction", max_length=PROMPT_MAX_BYTES))
        spec = PolicySpec(
            inputs=tuple(inputs),
            action_dim=self.action_dim,
            action_horizon=self.horizon,
            control_hz=self.control_hz,
            name=f"random-mlp(w{self.width},d{self.depth})",
            execute_horizon=self.execute_horizon,
        )
        d_in = self.obs_dim + 3 * self.image_size**2
        sizes = [d_in] + [self.width] * self.depth + [self.horizon * self.action_dim]
        keys = jax.random.split(jax.random.key(self.seed), len(sizes) - 1)
        params = [
            (
                jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a),
                jnp.zeros((b,), jnp.float32),
            )
            for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
        ]

        def forward(params, state, image):
            x = state
            if image is not None:
                x = jnp.concatenate([x, image.reshape(len(image), -1) / 255.0], axis=-1)
            for w, b in params[:-1]:
                x = jax.nn.relu(x @ w + b)
            w, b = params[-1]
            return jnp.tanh(x @ w + b).reshape(-1, self.horizon, self.action_dim)

        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_forward", jax.jit(forward))

    def act(self, obs: Batch, key=None) -> np.ndarray:
        """Deterministic (random *weights*, fixed at construction): ``key`` is unused."""
        image = np.asarray(obs[IMAGE]) if self.image_size else None
        return np.asarray(self._forward(self._params, np.asarray(obs[STATE]), image))
