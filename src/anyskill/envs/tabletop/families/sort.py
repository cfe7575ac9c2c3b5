"""sort: every object into the zone of its own colour, one after another (code 2, 200 steps,
the long-horizon family)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from anyskill.envs.tabletop.families.base import ExpertTarget, Subtask, TaskFamily, own_zones
from anyskill.envs.tabletop.families.push import FAMILY as PUSH
from anyskill.envs.tabletop.grammar import Construction, Grammar
from anyskill.envs.tabletop.scene import ZONE_HALF, in_zone


@dataclasses.dataclass(frozen=True)
class Sort(TaskFamily):
    """Success: every present object's centre is inside the zone of its colour. Goal: each
    present object at its zone's centre. Expert: push one unsorted object home at a time,
    taking the lowest slot first or the one nearest its zone (per-episode style)."""

    def task_rows(self) -> list[tuple[int, ...]]:
        return [self.row(phrasing=p) for p in range(len(self.templates))]

    def subtasks(self, row, colour, shape) -> tuple[Subtask, ...]:
        """One push per present object: "push the red block into the red zone" (the push
        family's task, its zone the object's own colour), moving that slot."""
        return tuple(
            Subtask(PUSH.row(colour=int(c), shape=int(s), zone=int(c), phrasing=0), (k, -1))
            for k, (c, s) in enumerate(zip(colour, shape, strict=True))
            if c >= 0
        )

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
    grammar=Grammar(
        constructions=(
            Construction("imperative", "<pre> <vp> <post>"),
            Construction("purpose", "<pre> <verb> <all> so <that> <each> <ends> <own>"),
            Construction("fronted_goal", "<to> <own_pl>, <pre> <verb> <all>"),
            Construction("declarative", "<tidy> <each> <belongs> <own>"),
            Construction("want", "<i_want> <all> <done_to> <own_pl>"),
            # held out: relative clauses, clefts, passives (their words all occur above)
            Construction(
                "relative",
                "<pre> <verb> <each> <to> the <zone_n> that <has> its colour <post>",
                heldout=True,
            ),
            Construction("cleft", "it is <own> that <each> <should_end>", heldout=True),
            Construction("passive", "<all> <must_be_pl> <moved_to> <own_pl> <post>", heldout=True),
        ),
        rules={
            "each": ("every object", "each object", "every piece", "each piece", "every item"),
            "all": ("all objects", "all the objects", "all pieces", "all the pieces", "all items"),
            "own": (
                "the <zone_n> of its colour",
                "the <zone_n> with the same colour",
                "its own colour's <zone_n>",
                "its matching <zone_n>",
            ),
            "own_pl": (
                "their matching <zones_n>",
                "the <zones_n> of their colours",
                "the <zones_n> with the same colours",
            ),
            "vp": (
                "sort <each> into <own>",
                "sort <all> into <own_pl>",
                "sort <all> by colour",
                "put <each> in <own>",
                "move <all> to <own_pl>",
                "push <each> into <own>",
                "bring <all> to <own_pl>",
                "tidy up the table by colour",
                "put <each> where it belongs",
            ),
            "zones_n": ("zones", "areas", "squares", "regions", "corners"),
            "verb": ("sort", "move", "push", "slide", "shove"),
            "that": ("that", ""),
            "ends": ("ends up in", "is in", "sits in", "is inside"),
            "to": ("into", "over to", "to"),
            "tidy": ("", "", "tidy up:", "sort the table:"),
            "belongs": (
                "goes to",
                "should go into",
                "belongs in",
                "has to end up in",
                "must be in",
            ),
            "done_to": ("in", "inside", "<moved_to>"),
            "moved_to": ("sorted into", "moved to", "pushed into", "put in", "brought to"),
            "has": ("has", "is"),
            "should_end": ("should go into", "should end up in", "belongs in", "must go into"),
            "must_be_pl": ("should be", "must be", "need to be"),
        },
        variants=64,  # one content (no objects named): the variety is all in the grammar
    ),
)
