"""reach: move the pusher into the named zone (code 0, 40 steps)."""

from __future__ import annotations

import dataclasses
import itertools

import jax

from anyskill.envs.tabletop.families.base import ExpertTarget, TaskFamily, named_zone
from anyskill.envs.tabletop.grammar import Construction, Grammar
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
    grammar=Grammar(
        constructions=(
            Construction("imperative", "<pre> <go_vp> <post>"),
            Construction("purpose", "<pre> move <agent> so <that> it <ends> <zone_np> <post>"),
            Construction("fronted_goal", "<to> <zone_np>, <pre> <go>"),
            Construction("declarative", "<agent> <belongs> <zone_np>"),
            Construction("want", "<i_want> <agent> <done_to> <zone_np>"),
            # held out: relative clauses, clefts, passives (their words all occur above)
            Construction(
                "relative",
                "<pre> <go_vp> <post>",
                heldout=True,
                rules={"zone_np": ("the <zone_n> that is {zone}",)},
            ),
            Construction("cleft", "it is <zone_np> that <agent> <should_end>", heldout=True),
            Construction("passive", "<agent> <must_be> <moved_to> <zone_np> <post>", heldout=True),
        ),
        rules={
            "agent": ("the gripper", "the pusher", "the end effector"),
            "go_vp": (
                "go to <zone_np>",
                "head to <zone_np>",
                "head over to <zone_np>",
                "move to <zone_np>",
                "move <agent> to <zone_np>",
                "move <agent> into <zone_np>",
                "bring <agent> to <zone_np>",
                "put <agent> in <zone_np>",
                "reach <zone_np>",
                "reach <zone_np> with <agent>",
            ),
            "go": ("go", "head over", "move <agent>", "bring <agent>", "move there"),
            "that": ("that", ""),
            "ends": ("ends up in", "is in", "is inside"),
            "to": ("into", "over to", "to"),
            "belongs": (
                "should go to",
                "should be in",
                "needs to go to",
                "has to end up in",
                "must go to",
            ),
            "done_to": ("in", "inside", "<moved_to>"),
            "moved_to": ("moved to", "moved into", "brought to", "put in"),
            "should_end": ("should go to", "should end up in", "must go to", "should be in"),
        },
    ),
)
