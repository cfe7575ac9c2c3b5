"""reach: move the pusher into the named zone (code 0, 40 steps)."""

from __future__ import annotations

import dataclasses
import itertools

import jax

from anyskill.envs.tabletop.families.base import ExpertTarget, TaskFamily, named_zone
from anyskill.envs.tabletop.scene import COLOURS, in_zone


@dataclasses.dataclass(frozen=True)
class Reach(TaskFamily):
    """Success: the pusher's centre is inside the named zone. Goal: the pusher at the zone's
    centre. Expert: walk there, slowing down near the aim point."""

    def task_rows(self) -> list[tuple[int, ...]]:
        return [
            self.row(zone=z, phrasing=p)
            for z, p in itertools.product(range(len(COLOURS)), range(len(self.templates)))
        ]

    def goal(self, env, physics) -> tuple[jax.Array, jax.Array]:
        return named_zone(physics), physics.bodies.pos[1:]

    def success(self, env, physics) -> jax.Array:
        return in_zone(physics.bodies.pos[0], named_zone(physics))

    def expert_target(self, physics, style) -> ExpertTarget:
        return ExpertTarget.walk_to(named_zone(physics) + style.aim)


FAMILY = Reach(
    name="reach",
    code=0,
    templates=(
        "move the gripper to the {zone} zone",
        "go to the {zone} area",
        "reach the {zone} square",
        "put the end effector in the {zone} zone",
        "head over to the {zone} region",  # held out
    ),
    episode_length=40,
    min_objects=0,
)
