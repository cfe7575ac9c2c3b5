"""Deploy a chunking policy in the tabletop simulator, with a corrector on call, and record.

Every env runs one episode. The policy samples an action chunk every ``replan_every`` steps;
a *corrector* (the scripted expert — the same interface a person with a gamepad would drive)
takes control of an env when its *trigger* fires and hands back after ``correction_steps``
steps. Triggers: ``stall`` (the task's goal distance has not shrunk over the last
``stall_window`` steps) or ``value`` (the value function predicts a value below
``value_threshold``, i.e. a failure coming). Only a ``corrector_fraction`` of the envs have a
corrector watching (attention is the scarce resource), and each may intervene any number of
times. Frames under correction are recorded with ``intervention=True``.

Like :mod:`anyskill.algos.vla.evaluate`, small jitted pieces are driven from Python, one per
replanning, so a transformer policy never sits inside the env's scan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.evaluate import instruction_tokens, make_observe
from anyskill.algos.vla.model import Obs
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import Tabletop
from anyskill.envs.tabletop.expert import ScriptedExpert


@dataclasses.dataclass(frozen=True)
class CorrectorConfig:
    """Who takes over a failing policy, and when."""

    kind: str = "expert"
    """expert: the scripted expert corrects; human: a person at the keyboard corrects the
    watched episodes, shown live in the terminal (see anyskill.flywheel.human); none: no
    interventions."""
    fraction: float = 0.5
    """Fraction of deployed envs with a corrector watching."""
    trigger: str = "stall"
    """stall: no progress towards the goal over stall_window steps; value: the value function
    predicts below value_threshold (falls back to stall until a value function exists);
    human: only the person decides (kind human; SPACE takes and hands back control)."""
    stall_window: int = 20
    """Steps over which the goal distance must shrink by stall_eps."""
    stall_eps: float = 0.02
    """Progress (in table units) that counts as not stalled."""
    value_threshold: float = -0.85
    """value trigger: intervene when V(s) falls below this (values are in [-1, 0])."""
    correction_steps: int = 15
    """Steps the corrector keeps control before handing back."""
    noise: float = 0.05
    """Action noise of the scripted corrector."""
    human_hz: float = 10.0
    """kind human: control steps shown per second of wall time (the env's rate is 10 Hz)."""

    def __post_init__(self):
        if self.kind not in ("expert", "human", "none"):
            raise ValueError(
                f"corrector kind must be 'expert', 'human' or 'none', got {self.kind!r}"
            )
        if self.trigger not in ("stall", "value", "human"):
            raise ValueError(
                f"corrector trigger must be 'stall', 'value' or 'human', got {self.trigger!r}"
            )
        if self.trigger == "human" and self.kind != "human":
            raise ValueError(
                "corrector trigger 'human' (a person decides) needs --corrector.kind human"
            )
        if self.human_hz < 0:
            raise ValueError(f"corrector human_hz must be >= 0, got {self.human_hz}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"corrector fraction must be in [0, 1], got {self.fraction}")
        if not self.noise >= 0:
            raise ValueError(f"corrector noise must be >= 0, got {self.noise}")
        for name in ("stall_window", "correction_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"corrector {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"corrector fraction must be in [0, 1], got {self.fraction}")


@dataclasses.dataclass
class Episodes:
    """Recorded episodes, ``[B, T, ...]`` arrays padded past each episode's ``length``."""

    state: np.ndarray
    goal: np.ndarray
    action: np.ndarray
    intervention: np.ndarray  # [B, T] bool
    length: np.ndarray  # [B] frames (through the step that ended the episode)
    success: np.ndarray  # [B] bool
    family: np.ndarray  # [B] index into tasks.FAMILIES
    task: list[str]
    images: np.ndarray | None = None  # [B, T, S, S, 3] when recorded


def stalled(dists: list, corrector: CorrectorConfig, replan_every: int):
    """The stall trigger over goal distances measured once per replanning (each entry a
    scalar or ``[B]``): no progress of ``stall_eps`` over the last ``stall_window`` steps."""
    window = max(1, corrector.stall_window // replan_every)
    if len(dists) <= window:
        return np.zeros(np.shape(dists[-1]), bool) if dists else np.bool_(False)
    return np.asarray(dists[-1] > dists[-1 - window] - corrector.stall_eps)


def goal_distance(env: Tabletop, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """Summed distance of the goal-space features (pusher + present objects) to the goal."""
    diff = (env.achieved_goal(obs) - goal).reshape(obs.shape[0], -1, 2)
    return jnp.sqrt((diff**2).sum(-1)).sum(-1)


def make_deployer(
    env: Tabletop,
    chunk_fn: Callable[[Any, jax.Array, Obs], jax.Array],
    num_envs: int,
    replan_every: int,
    image_size: int,
    num_cameras: int,
    max_text_len: int,
    prompt_suffix: str = "",
    corrector: CorrectorConfig = CorrectorConfig(kind="none"),
    value_fn: Callable[[Any, Obs], jax.Array] | None = None,
    record_images: int = 0,
    human=None,
):
    """``deploy(params, key, value_params=None) -> Episodes``.

    ``chunk_fn(params, key, obs) -> [B, H, A]`` in env units (``obs.state`` raw);
    ``value_fn(value_params, obs) -> [B]`` (raw state) enables the ``value`` trigger;
    ``record_images``: also keep ``record_images``-pixel frames of every step (for videos).
    With ``corrector.kind == "human"`` the episodes run one at a time with a person correcting
    (``human``: a :class:`~anyskill.flywheel.human.HumanCorrector`; None: the terminal)."""
    if corrector.kind == "human":
        from anyskill.flywheel.human import make_human_deployer

        return make_human_deployer(
            env,
            chunk_fn,
            num_envs,
            replan_every,
            image_size,
            num_cameras,
            max_text_len,
            prompt_suffix,
            corrector,
            value_fn,
            record_images,
            human,
        )
    rows, tokens = instruction_tokens(env, max_text_len, prompt_suffix)
    horizon = int(env.episode_length)
    n_plans = -(-horizon // replan_every)
    expert = ScriptedExpert(env, noise=corrector.noise)
    use_corrector = corrector.kind != "none"

    reset = jax.jit(lambda keys: jax.vmap(env.reset)(keys))
    obs_fn = jax.jit(make_observe(env, num_envs, image_size, num_cameras, rows, tokens))
    chunk = jax.jit(lambda params, k, obs: chunk_fn(params, k, obs)[:, :replan_every])
    dist_fn = jax.jit(lambda s: goal_distance(env, s.obs, s.goal))
    value_jit = jax.jit(value_fn) if value_fn is not None else None

    @jax.jit
    def execute(carry, actions, key):
        def act(c, inp):
            state, done, success, steps, left = c
            a_pol, k = inp
            correcting = left > 0
            if use_corrector:
                a_exp = jax.vmap(expert)(state, jax.random.split(k, num_envs))
                a = jnp.where(correcting[:, None], a_exp, a_pol)
            else:
                a = a_pol
            img = (
                jax.vmap(lambda p: env.render_image(p, record_images))(state.physics)
                if record_images
                else jnp.zeros((num_envs,), jnp.uint8)
            )
            out = (state.obs, state.goal, a, correcting & ~done, done, img)
            nxt = jax.vmap(env.step)(state, a)
            ended = nxt.terminated | nxt.truncated
            success = jnp.where(done, success, nxt.success & ended)
            steps = steps + (~done).astype(jnp.int32)
            left = jnp.maximum(left - 1, 0)
            return (nxt, done | ended, success, steps, left), out

        keys = jax.random.split(key, actions.shape[1])
        return jax.lax.scan(act, carry, (actions.swapaxes(0, 1), keys))

    def deploy(params, key, value_params=None) -> Episodes:
        k_reset, k_run, k_watch = jax.random.split(key, 3)
        state = reset(jax.random.split(k_reset, num_envs))
        s0 = state
        watched = np.array(jax.random.uniform(k_watch, (num_envs,)) < corrector.fraction)
        watched &= use_corrector
        zeros = jnp.zeros(num_envs, bool)
        carry = (
            state,
            zeros,
            zeros,
            jnp.zeros(num_envs, jnp.int32),
            jnp.zeros(num_envs, jnp.int32),
        )
        outs = []
        dists = []
        for k in jax.random.split(k_run, n_plans):
            k_chunk, k_exec = jax.random.split(k)
            state, done, _, steps, left = carry
            obs = obs_fn(state)
            if use_corrector and watched.any():
                dists.append(np.asarray(dist_fn(state)))
                if (
                    corrector.trigger == "value"
                    and value_jit is not None
                    and value_params is not None
                ):
                    fire = np.asarray(value_jit(value_params, obs)) < corrector.value_threshold
                else:
                    fire = stalled(dists, corrector, replan_every)
                fire &= watched & ~np.asarray(done) & (np.asarray(left) == 0)
                if fire.any():
                    left = jnp.where(jnp.asarray(fire), corrector.correction_steps, left)
                    carry = (state, done, carry[2], steps, left)
            carry, out = execute(carry, chunk(params, k_chunk, obs), k_exec)
            outs.append(out)
            if bool(np.asarray(carry[1]).all()):
                break
        _, _, success, _, _ = carry
        obs_t, goal_t, act_t, iv_t, was_done, img_t = (
            np.concatenate([np.asarray(o[j]) for o in outs], axis=0).swapaxes(0, 1)
            for j in range(6)
        )
        length = (~was_done).sum(1)
        texts = env.instruction(s0)
        texts = [texts] if isinstance(texts, str) else list(texts)
        return Episodes(
            state=obs_t,
            goal=goal_t,
            action=act_t,
            intervention=iv_t,
            length=length,
            success=np.asarray(success),
            family=np.asarray(s0.physics.task[:, T.FAMILY]),
            task=texts,
            images=img_t if record_images else None,
        )

    return deploy
