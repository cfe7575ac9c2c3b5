"""gather: push the named object next to a second named object (code 3, 100 steps, the
relational family)."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp

from anyskill.envs.tabletop.families.base import (
    COLOUR,
    COLOUR2,
    HELDOUT_COMBOS,
    SHAPE,
    ExpertTarget,
    TaskFamily,
    target_slots,
)
from anyskill.envs.tabletop.grammar import Construction, Grammar
from anyskill.envs.tabletop.physics import Bodies
from anyskill.envs.tabletop.scene import COLOURS, SHAPES, body_reach, surface_gap

#: two objects count as "next to" each other when the gap between their surfaces is below this
GATHER_GAP = 0.05


@dataclasses.dataclass(frozen=True)
class Gather(TaskFamily):
    """Success: the surfaces of the two named objects are less than GATHER_GAP apart. Goal:
    the first object beside the second (the anchor), on the side it starts from. Expert:
    push the first object towards the anchor's centre.

    Held out besides the last phrasing: the objects of ``HELDOUT_COMBOS`` next to any object
    of the colour after theirs (red block next to a green anything, ...)."""

    def task_rows(self) -> list[tuple[int, ...]]:
        n_c, n_s = len(COLOURS), len(SHAPES)
        return [
            self.row(colour=c, shape=s, colour2=c2, shape2=s2, phrasing=p)
            for c, s, c2, s2, p in itertools.product(
                range(n_c), range(n_s), range(n_c), range(n_s), range(len(self.templates))
            )
            if c != c2
        ]

    def is_heldout(self, row) -> bool:
        combo = (row[COLOUR], row[SHAPE], row[COLOUR2])
        return super().is_heldout(row) or combo in HELDOUT_COMBOS

    def goal(self, env, physics) -> tuple[jax.Array, jax.Array]:
        b = physics.bodies
        obj = b.pos[1:]
        t1, t2 = physics.targets[0], physics.targets[1]
        anchor = obj[jnp.maximum(t2, 0)]
        away = obj[jnp.maximum(t1, 0)] - anchor
        away = away / jnp.maximum(jnp.sqrt(away[0] ** 2 + away[1] ** 2), 1e-6)
        is_target = jnp.arange(env.num_objects) == t1
        return b.pos[0], jnp.where(is_target[:, None], gather_spot(b, t1, t2, away), obj)

    def success(self, env, physics) -> jax.Array:
        t1, t2 = target_slots(physics)
        return surface_gap(physics.bodies, 1 + t1, 1 + t2) < GATHER_GAP

    def expert_target(self, physics, style) -> ExpertTarget:
        t1, t2 = target_slots(physics)
        return ExpertTarget.push(t1, physics.bodies.pos[1:][t2])


def gather_spot(b: Bodies, t1, t2, away) -> jax.Array:
    """Where object ``t1`` goes to lie beside object ``t2`` along the unit direction ``away``,
    both keeping their orientation: at a surface gap of GATHER_GAP / 2.

    Starts where the two support radii along ``away`` meet, then slides along ``away`` until
    the surface gap (the gather predicate's own measure) is the target. Each correction moves
    every axis' separation by at most its own size, so the gap never undershoots the target.
    """
    i, j = 1 + jnp.maximum(t1, 0), 1 + jnp.maximum(t2, 0)
    anchor = b.pos[j]
    target = 0.5 * GATHER_GAP
    dist = body_reach(b, i, away[0], away[1]) + body_reach(b, j, away[0], away[1]) + target
    for _ in range(4):
        gap = surface_gap(b.replace(pos=b.pos.at[i].set(anchor + away * dist)), i, j)
        dist = dist - jnp.maximum(gap - target, 0.0)
    return anchor + away * dist


FAMILY = Gather(
    name="gather",
    code=3,
    templates=(
        "push the {colour} {shape} next to the {colour2} {shape2}",
        "move the {colour} {shape} so it touches the {colour2} {shape2}",
        "bring the {colour} {shape} to the {colour2} {shape2}",
        "put the {colour} {shape} beside the {colour2} {shape2}",
        "nudge the {colour} {shape} against the {colour2} {shape2}",  # held out
    ),
    episode_length=100,
    min_objects=2,
    grammar=Grammar(
        constructions=(
            Construction("imperative", "<pre> <verb> <obj> <next> <anchor> <post>"),
            Construction("purpose", "<pre> <verb> <obj> so <that> it <touches> <anchor>"),
            Construction("fronted_goal", "<next> <anchor>, <pre> <verb> <obj>"),
            Construction("declarative", "<obj> <belongs> <anchor>"),
            Construction("want", "<i_want> <obj> <done_next> <anchor>"),
            # held out: relative clauses, clefts, passives (their words all occur above)
            Construction(
                "relative",
                "<pre> <verb> <obj> <next> <anchor> <post>",
                heldout=True,
                rules={
                    "obj": ("the {shape} that is {colour}",),
                    "anchor": ("the {shape2} that is {colour2}", "the {colour2} {shape2}"),
                },
            ),
            Construction("cleft", "it is <anchor> that <obj> <should_end>", heldout=True),
            Construction("passive", "<obj> <must_be> <moved> <next> <anchor> <post>", heldout=True),
        ),
        rules={
            "obj": ("the {colour} {shape}",),
            "anchor": ("the {colour2} {shape2}",),
            "verb": ("push", "move", "bring", "put", "slide", "shove", "nudge"),
            "next": ("next to", "beside", "against", "up against", "right next to"),
            "that": ("that", ""),
            "touches": ("touches", "is next to", "ends up next to", "sits beside", "is against"),
            "belongs": (
                "should be next to",
                "belongs beside",
                "should touch",
                "has to end up next to",
                "needs to go next to",
                "must be against",
            ),
            "done_next": ("<next>", "<moved> <next>"),
            "moved": ("pushed", "moved", "brought", "put", "slid", "shoved", "nudged"),
            "should_end": (
                "should go next to",
                "should touch",
                "should end up beside",
                "must touch",
            ),
        },
    ),
)
