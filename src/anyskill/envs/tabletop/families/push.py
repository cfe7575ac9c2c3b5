"""push: push the named object into the named zone (code 1, 100 steps)."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp

from anyskill.envs.tabletop.families.base import (
    COLOUR,
    HELDOUT_COMBOS,
    SHAPE,
    ZONE,
    ExpertTarget,
    TaskFamily,
    named_zone,
    target_slots,
)
from anyskill.envs.tabletop.grammar import Construction, Grammar
from anyskill.envs.tabletop.scene import COLOURS, SHAPES, in_zone


@dataclasses.dataclass(frozen=True)
class Push(TaskFamily):
    """Success: the named object's centre is inside the named zone. Goal: that object at the
    zone's centre. Expert: push it to (a per-episode aim point inside) the zone.

    Held out besides the last phrasing: the (colour, shape, zone) combinations in
    ``HELDOUT_COMBOS`` (red block -> green zone, ...)."""

    def task_rows(self) -> list[tuple[int, ...]]:
        n_c, n_s = len(COLOURS), len(SHAPES)
        return [
            self.row(colour=c, shape=s, zone=z, phrasing=p)
            for c, s, z, p in itertools.product(
                range(n_c), range(n_s), range(n_c), range(len(self.templates))
            )
        ]

    def is_heldout(self, row) -> bool:
        return super().is_heldout(row) or (row[COLOUR], row[SHAPE], row[ZONE]) in HELDOUT_COMBOS

    def goal(self, env, physics) -> tuple[jax.Array, jax.Array]:
        pos = physics.bodies.pos
        is_target = jnp.arange(env.num_objects) == physics.targets[0]
        return pos[0], jnp.where(is_target[:, None], named_zone(physics), pos[1:])

    def success(self, env, physics) -> jax.Array:
        t1, _ = target_slots(physics)
        return in_zone(physics.bodies.pos[1 + t1], named_zone(physics))

    def expert_target(self, physics, style) -> ExpertTarget:
        t1, _ = target_slots(physics)
        return ExpertTarget.push(t1, named_zone(physics) + style.aim)


FAMILY = Push(
    name="push",
    code=1,
    templates=(
        "push the {colour} {shape} into the {zone} zone",
        "move the {colour} {shape} to the {zone} area",
        "slide the {colour} {shape} onto the {zone} square",
        "put the {colour} {shape} in the {zone} zone",
        "shove the {colour} {shape} over to the {zone} region",  # held out
    ),
    episode_length=100,
    min_objects=1,
    grammar=Grammar(
        constructions=(
            Construction("imperative", "<pre> <vp> <zone_np> <post>"),
            Construction("purpose", "<pre> <verb> <obj> so <that> it <ends> <zone_np> <post>"),
            Construction("fronted_goal", "<to> <zone_np>, <pre> <verb> <obj>"),
            Construction("declarative", "<obj> <belongs> <zone_np>"),
            Construction("want", "<i_want> <obj> <done_to> <zone_np>"),
            # held out: relative clauses, clefts, passives (their words all occur above)
            Construction(
                "relative",
                "<pre> <vp> <zone_np> <post>",
                heldout=True,
                rules={"obj": ("the {shape} that is {colour}",)},
            ),
            Construction("cleft", "it is <zone_np> that <obj> <should_end>", heldout=True),
            Construction("passive", "<obj> <must_be> <moved_to> <zone_np> <post>", heldout=True),
        ),
        rules={
            "obj": ("the {colour} {shape}",),
            "vp": (
                "push <obj> into",
                "push, please, <obj> into",
                "push <obj> to",
                "move <obj> to",
                "move <obj> into",
                "slide <obj> onto",
                "slide <obj> into",
                "put <obj> in",
                "put <obj> into",
                "bring <obj> to",
                "shove <obj> over to",
                "nudge <obj> into",
            ),
            "verb": ("push", "move", "slide", "shove", "nudge"),
            "that": ("that", ""),
            "ends": ("ends up in", "is in", "sits in", "lands in", "is inside"),
            "to": ("into", "over to", "to"),
            "belongs": (
                "should go into",
                "should be in",
                "belongs in",
                "needs to go to",
                "has to end up in",
                "must go into",
            ),
            "done_to": ("in", "inside", "<moved_to>"),
            "moved_to": (
                "pushed into",
                "moved to",
                "slid onto",
                "put in",
                "brought to",
                "shoved over to",
                "nudged into",
            ),
            "should_end": ("should go into", "should end up in", "belongs in", "must go into"),
        },
    ),
)
