"""Scripted experts for every tabletop task family: noisy, diverse, and able to act from any
state, so one function serves as the teleoperator that records demonstrations and as the
corrector that takes over a failing policy.

The expert is stateless: each action is computed from the current physics state alone.
Diversity comes from a per-episode *style* drawn from the episode's seed (pushing speed,
approach clearance, which side to walk around an object, the push point's lateral offset,
which unsorted object to take first: the lowest slot or the one nearest its zone) plus
Gaussian action noise on every step.

What the expert does in each family is that family's ``expert_target`` (``families/``):
walk the pusher to a point, or push an object slot to a point, selected by the task row's
code; this module holds the two skills, ``goto`` and ``push``.

Pushing follows the classic quasi-static strategy for a point pusher: get behind the object
on the line from the goal through the object (walking around it if the pusher is in front),
then push along that line while steering the pusher back onto it, slowing down near the goal.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from anyskill.envs.base import State
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import Tabletop, TabletopPhysics
from anyskill.envs.tabletop.families.base import ExpertTarget
from anyskill.envs.tabletop.scene import PUSHER_RADIUS, body_reach


@dataclasses.dataclass(frozen=True)
class ExpertStyle:
    """Ranges the per-episode style is drawn from."""

    speed: tuple[float, float] = (0.65, 1.0)
    """Fraction of full speed."""
    clearance: tuple[float, float] = (0.05, 0.11)
    """Gap kept from an object while walking around it."""
    push_offset: tuple[float, float] = (-0.1, 0.1)
    """Lateral offset of the push point, as a fraction of the object's half-width."""
    goal_jitter: float = 0.06
    """Aim this far (at most) off the zone centre, per episode."""


@struct.dataclass
class EpisodeStyle:
    """One episode's style, drawn from its seed (see :meth:`ScriptedExpert.draw_style`).

    speed:         [] fraction of full speed
    clearance:     [] gap kept from an object while walking around it
    side:          [] -1 or +1: which side to walk around an object when straight in front
    push_offset:   [] lateral offset of the push point, fraction of the object's half-width
    aim:           [2] offset of the aim point from a zone's centre
    nearest_first: [] bool: sort takes the object nearest its zone first (else lowest slot)
    """

    speed: jax.Array
    clearance: jax.Array
    side: jax.Array
    push_offset: jax.Array
    aim: jax.Array
    nearest_first: jax.Array


def _unit(x, y):
    n = jnp.sqrt(x * x + y * y)
    n = jnp.maximum(n, 1e-6)
    return x / n, y / n, n


def _reach(physics: TabletopPhysics, k, ux, uy):
    """Support radius of object slot ``k`` along the unit direction ``u``."""
    return body_reach(physics.bodies, 1 + k, ux, uy)


@dataclasses.dataclass(frozen=True)
class ScriptedExpert:
    """``expert(state, key) -> action`` for one env of ``env`` (``vmap`` for a batch)."""

    env: Tabletop
    noise: float = 0.1
    """Std of the Gaussian noise added to every action (before clipping to [-1, 1])."""
    style: ExpertStyle = ExpertStyle()

    def __call__(self, state: State, key: jax.Array) -> jax.Array:
        return self.act(state.physics, key)

    def draw_style(self, physics: TabletopPhysics) -> EpisodeStyle:
        u = jax.random.uniform(jax.random.key(physics.seed), (7,))

        def lerp(rng, v):
            return rng[0] + (rng[1] - rng[0]) * v

        st = self.style
        return EpisodeStyle(
            speed=lerp(st.speed, u[0]),
            clearance=lerp(st.clearance, u[1]),
            side=jnp.where(u[2] < 0.5, -1.0, 1.0),
            push_offset=lerp(st.push_offset, u[3]),
            aim=jnp.stack(
                [(2.0 * u[4] - 1.0) * st.goal_jitter, (2.0 * u[5] - 1.0) * st.goal_jitter]
            ),
            nearest_first=u[6] < 0.5,
        )

    def act(self, physics: TabletopPhysics, key: jax.Array) -> jax.Array:
        """Walk or push as the task's family says (its ``expert_target``), plus noise,
        clipped to [-1, 1]."""
        style = self.draw_style(physics)

        def family_target(family: F.TaskFamily) -> ExpertTarget:
            target = family.expert_target(physics, style)
            target = ExpertTarget(
                jnp.asarray(target.goal, jnp.float32),
                jnp.asarray(target.slot, jnp.int32),
                jnp.asarray(target.walk, bool),
            )
            if target.goal.shape != (2,) or target.slot.shape != () or target.walk.shape != ():
                raise ValueError(
                    f"task family {family.name!r}: expert_target must give goal [2], slot [] "
                    f"and walk [], got {target.goal.shape}, {target.slot.shape}, "
                    f"{target.walk.shape}"
                )
            return target

        # Every family's target, then one push and one walk: the families choose what to do,
        # the skills run once (and the actions are the ones of the single-function expert).
        target = F.dispatch(physics.task[T.FAMILY], F.registered(), family_target)
        push = self.push(physics, target.slot, target.goal, style)
        walk = self.goto(physics.bodies.pos[0], target.goal, style.speed)
        action = jnp.where(target.walk, walk, push)
        action = action + self.noise * jax.random.normal(key, (2,))
        return jnp.clip(action, -1.0, 1.0)

    def goto(self, p: jax.Array, target: jax.Array, speed) -> jax.Array:
        """Action walking the pusher at ``p`` to ``target``, at ``speed`` (a fraction of full
        speed), slowing down proportionally near it."""
        dx, dy, dist = _unit(target[0] - p[0], target[1] - p[1])
        # Proportional slow-down near the target: no overshoot at 10 Hz control.
        v = jnp.minimum(speed, dist * self.env.control_hz / self.env.max_speed * 0.8)
        return jnp.stack([dx, dy]) * v

    def push(self, physics: TabletopPhysics, k, goal: jax.Array, style: EpisodeStyle) -> jax.Array:
        """Action pushing object slot ``k`` towards ``goal`` (the quasi-static strategy of
        the module docstring): approach behind it, then push along the line to the goal."""
        b = physics.bodies
        p, o = b.pos[0], b.pos[1 + k]
        ux, uy, dist = _unit(goal[0] - o[0], goal[1] - o[1])
        # An object against a wall cannot be pushed away from it (the push point would be
        # inside the wall): push it along the wall instead. Zones touch the walls, so sliding
        # along the wall reaches them.
        half = self.env.sim.table_half - PUSHER_RADIUS - 0.01
        gap0 = _reach(physics, k, ux, uy) + PUSHER_RADIUS
        blocked_x = jnp.abs(o[0] - ux * gap0) > half
        blocked_y = jnp.abs(o[1] - uy * gap0) > half
        slide = blocked_x ^ blocked_y
        ux2, uy2, _ = _unit(jnp.where(blocked_x, 0.0, ux), jnp.where(blocked_y, 0.0, uy))
        ux, uy = jnp.where(slide, ux2, ux), jnp.where(slide, uy2, uy)
        px_, py_ = -uy, ux  # perpendicular to the push line
        along = _reach(physics, k, ux, uy)
        across = _reach(physics, k, px_, py_)
        wx, wy = p[0] - o[0], p[1] - o[1]
        w_along = wx * ux + wy * uy
        w_across = wx * px_ + wy * py_
        offset = style.push_offset * across
        # Behind the object: a pusher on the push line touching a rotated bar's face sits
        # closer than the bar's corner support ``along``, hence the generous margin.
        behind = w_along < -0.4 * (along + PUSHER_RADIUS)
        aligned = behind & (jnp.abs(w_across - offset) < 0.7 * across)
        # Approach: the point behind the object on the push line, or first a waypoint beside
        # the object when the pusher is in front of it (walking around, on its current side).
        gap = along + PUSHER_RADIUS + style.clearance
        ax = jnp.clip(o[0] - ux * gap + px_ * offset, -half, half)
        ay = jnp.clip(o[1] - uy * gap + py_ * offset, -half, half)
        side = jnp.where(jnp.abs(w_across) > 0.02, jnp.sign(w_across), style.side)
        wide = across + PUSHER_RADIUS + style.clearance
        sx = jnp.clip(o[0] + side * px_ * wide - ux * gap, -half, half)
        sy = jnp.clip(o[1] + side * py_ * wide - uy * gap, -half, half)
        in_front = w_along > -(along + PUSHER_RADIUS) * 0.7
        tx = jnp.where(in_front, sx, ax)
        ty = jnp.where(in_front, sy, ay)
        approach = self.goto(p, jnp.stack([tx, ty]), style.speed)
        # Push: along the line, steering the pusher back onto it; slow near the goal.
        err = w_across - offset
        vx, vy, _ = _unit(ux - 8.0 * px_ * err, uy - 8.0 * py_ * err)
        speed = style.speed * jnp.clip(dist / 0.25, 0.35, 1.0)
        pushing = jnp.stack([vx, vy]) * speed
        return jnp.where(aligned, pushing, approach)


def expert_rollout(
    env: Tabletop, expert: ScriptedExpert, key: jax.Array, num_envs: int, num_steps: int
):
    """Run the expert on ``num_envs`` envs for ``num_steps``; returns per-step states."""
    k_reset, k_act = jax.random.split(key)
    state = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))

    def step(state, k):
        actions = jax.vmap(expert)(state, jax.random.split(k, num_envs))
        nxt = jax.vmap(env.step)(state, actions)
        return nxt, (nxt, actions)

    return jax.lax.scan(step, state, jax.random.split(k_act, num_steps))


def success_by_family(
    env: Tabletop, expert: ScriptedExpert, key: jax.Array, episodes_per_family: int = 64
) -> dict[str, float]:
    """Expert success rate per family: the first episode of every env, one family at a time."""
    out = {}
    for f in env.families:
        fam_env = dataclasses.replace(env, families=(f,))
        fam_expert = dataclasses.replace(expert, env=fam_env)
        n_steps = F.get(f).episode_length

        @jax.jit
        def run(key, fam_env=fam_env, fam_expert=fam_expert, n_steps=n_steps):
            _, (states, _) = expert_rollout(fam_env, fam_expert, key, episodes_per_family, n_steps)
            done = states.terminated | states.truncated
            first_end = jnp.argmax(done, axis=0)
            return jnp.take_along_axis(states.success, first_end[None], axis=0)[0]

        out[f] = float(jnp.mean(run(jax.random.fold_in(key, T.family_code(f)))))
    return out
