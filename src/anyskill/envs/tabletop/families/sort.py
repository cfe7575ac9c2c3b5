"""sort: every object into the zone of its own colour, one after another (code 2, 200 steps,
the long-horizon family)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anyskill.envs.tabletop.families.base import ExpertTarget, TaskFamily, own_zones
from anyskill.envs.tabletop.scene import ZONE_HALF, in_zone


@dataclasses.dataclass(frozen=True)
class Sort(TaskFamily):
    """Success: every present object's centre is inside the zone of its colour. Goal: each
    present object at its zone's centre. Expert: push one unsorted object home at a time,
    taking the lowest slot first or the one nearest its zone (per-episode style)."""

    def task_rows(self) -> list[tuple[int, ...]]:
        return [self.row(phrasing=p) for p in range(len(self.templates))]

    def goal(self, env, physics) -> tuple[jax.Array, jax.Array]:
        obj = physics.bodies.pos[1:]
        present = physics.colour >= 0
        return physics.bodies.pos[0], jnp.where(present[:, None], own_zones(physics), obj)

    def success(self, env, physics) -> jax.Array:
        present = physics.colour >= 0
        return jnp.all(~present | in_zone(physics.bodies.pos[1:], own_zones(physics)))

    def expert_target(self, physics, style) -> ExpertTarget:
        own = own_zones(physics)
        obj = physics.bodies.pos[1:]
        present = physics.colour >= 0
        # "done" is judged a little inside the zone, so an object on the border gets pushed in
        inside = jnp.all(jnp.abs(obj - own) < ZONE_HALF * 0.8, axis=-1)
        todo = present & ~inside
        # The order must not depend on where the pusher is: a stateless expert that retargets
        # whenever another object becomes nearer to it walks back and forth between objects.
        d_zone = jnp.sum((obj - own) ** 2, axis=-1)
        order = jnp.where(style.nearest_first, d_zone, jnp.arange(obj.shape[0]) * 1.0)
        k = jnp.argmin(jnp.where(todo, order, jnp.inf))
        return ExpertTarget.push(k, own[k] + style.aim)


FAMILY = Sort(
    name="sort",
    code=2,
    templates=(
        "sort every object into the zone of its colour",
        "put each object in the zone with the same colour",
        "move all objects to their matching zones",
        "tidy up: every object goes to its own colour's zone",
        "match each piece with the area of its colour",  # held out
    ),
    episode_length=200,
    min_objects=2,
)
