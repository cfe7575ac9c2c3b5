"""What a tabletop task family is: :class:`TaskFamily`, the task-row layout, and the
held-out object combinations the families that name objects share.

A *task instance* is one row of ``ROW_WIDTH`` integers ``[family, colour, shape, zone,
colour2, shape2, phrasing]`` (unused entries are -1): ``family`` is the family's stable
:attr:`TaskFamily.code`, ``colour``/``shape`` name the first object the instruction talks
about, ``zone`` a zone by its colour, ``colour2``/``shape2`` a second object, ``phrasing``
the template. Rows are what datasets and env states store, so a family's code and row
enumeration order must never change once data was recorded with them.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.envs.tabletop.grammar import GRAMMAR_BASE, Grammar
from anyskill.envs.tabletop.scene import COLOURS, SHAPES

if TYPE_CHECKING:
    from anyskill.envs.tabletop.env import Tabletop, TabletopPhysics
    from anyskill.envs.tabletop.expert import EpisodeStyle

FAMILY, COLOUR, SHAPE, ZONE, COLOUR2, SHAPE2, PHRASING = range(7)
ROW_WIDTH = 7

# Held-out (colour, shape, colour) combinations, documented in docs/tasks.md: the shape index
# is the colour index mod 3 and the second colour is the one after it in COLOURS, e.g.
# (red, block, green), (green, disc, blue), (blue, bar, yellow), (yellow, block, red).
# push holds out "object -> zone of that colour", gather "object next to any object of it".
HELDOUT_COMBOS = frozenset(
    (c, c % len(SHAPES), (c + 1) % len(COLOURS)) for c in range(len(COLOURS))
)

#: the placeholders a template may use, and the row columns that fill them
PLACEHOLDERS = {"zone", "colour", "shape", "colour2", "shape2"}
#: where instruction text comes from (``Tabletop.instructions``): the fixed templates (phrasing
#: 0..len(templates)-1, the default) or the family's grammar (phrasing GRAMMAR_BASE + id)
INSTRUCTIONS = ("templates", "grammar")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class TaskFamily(abc.ABC):
    """One family of tabletop tasks: its instructions, its instances and held-out split,
    its goal state, its success predicate and how the scripted expert solves it.

    Subclass it in one file of ``families/`` (see ``families/__init__.py``) and implement
    :meth:`task_rows`, :meth:`goal`, :meth:`success` and :meth:`expert_target`. The jit-side
    methods see one env's (unbatched) physics; the env computes every registered family's
    and selects by the task row's code, so every family's output must have the same shape
    and dtype (checked when the env traces them).
    """

    name: str
    """Registry name (lowercase, ``[a-z][a-z0-9_]*``); the env drawing only this family is
    ``tabletop-{name}``."""
    code: int
    """Stable integer stored in column ``FAMILY`` of task rows (datasets, env states, seeds).
    Unique among registered families; never change or reuse the code of a released family."""
    templates: tuple[str, ...]
    """Instruction phrasings; placeholders ``{zone}``, ``{colour}``, ``{shape}``,
    ``{colour2}``, ``{shape2}``. The last one is held out (``split="heldout"`` only)."""
    episode_length: int
    """Control steps (10 Hz) before the episode is truncated."""
    min_objects: int = 0
    """Objects the family needs on the table; an episode places at least ``max(this, 1)``."""
    grammar: Grammar | None = None
    """Instruction grammar (``anyskill.envs.tabletop.grammar``) for ``instructions="grammar"``
    rows; None: the family has templates only."""

    def __post_init__(self):
        what = f"task family {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"task family name must be lowercase letters, digits or '_' starting with a "
                f"letter, got {self.name!r}"
            )
        if not isinstance(self.code, int) or isinstance(self.code, bool) or self.code < 0:
            raise ValueError(f"{what}: code must be an int >= 0, got {self.code!r}")
        object.__setattr__(self, "templates", tuple(self.templates))
        if len(self.templates) < 2:
            raise ValueError(
                f"{what}: needs at least 2 templates (the last is held out), got "
                f"{len(self.templates)}"
            )
        for t in self.templates:
            used = set(re.findall(r"{(\w*)}", t))
            if used - PLACEHOLDERS:
                raise ValueError(
                    f"{what}: template {t!r} uses unknown placeholders {sorted(used - PLACEHOLDERS)}; "
                    f"known: {sorted(PLACEHOLDERS)}"
                )
        if not isinstance(self.episode_length, int) or self.episode_length < 1:
            raise ValueError(f"{what}: episode_length must be >= 1, got {self.episode_length!r}")
        if not 0 <= self.min_objects <= len(COLOURS):
            raise ValueError(
                f"{what}: min_objects must be between 0 and {len(COLOURS)}, got "
                f"{self.min_objects!r}"
            )

    # ---- task instances (host, numpy) -----------------------------------------------------
    @property
    def heldout_phrasing(self) -> int:
        """The phrasing index that only the held-out split uses (the last template)."""
        return len(self.templates) - 1

    def row(
        self, *, colour=-1, shape=-1, zone=-1, colour2=-1, shape2=-1, phrasing: int
    ) -> tuple[int, ...]:
        """One task row of this family (unnamed entries -1)."""
        return (self.code, colour, shape, zone, colour2, shape2, phrasing)

    @abc.abstractmethod
    def task_rows(self) -> list[tuple[int, ...]]:
        """Every instance of the family, train and held out, in a fixed order (see
        :meth:`row`). The order is part of the contract: envs draw rows by index."""

    def instruction_rows(self, instructions: str = "templates") -> list[tuple[int, ...]]:
        """Every instance with instructions from ``instructions``: :meth:`task_rows` for
        ``"templates"``; for ``"grammar"`` each distinct content of those rows (objects and
        zone) once per grammar id, phrasing ``GRAMMAR_BASE + id``, in :meth:`task_rows`'
        order of contents."""
        if instructions not in INSTRUCTIONS:
            from anyskill.names import unknown_name

            raise unknown_name("instruction source", instructions, INSTRUCTIONS)
        rows = self.task_rows()
        if instructions == "templates":
            return rows
        if self.grammar is None:
            raise ValueError(
                f"task family {self.name!r} has no instruction grammar; use "
                "instructions='templates' or give the family a grammar"
            )
        contents = list(dict.fromkeys(r[:PHRASING] for r in rows))
        return [(*c, GRAMMAR_BASE + g) for c in contents for g in range(self.grammar.size)]

    def is_heldout(self, row: tuple[int, ...]) -> bool:
        """Whether a row of this family belongs to the held-out split; by default only its
        held-out phrasing (a template row) or held-out construction (a grammar row) does."""
        return self.heldout_language(row)

    def heldout_language(self, row: tuple[int, ...]) -> bool:
        """Whether the row's phrasing is held out: the last template, or a held-out grammar
        construction."""
        if row[PHRASING] >= GRAMMAR_BASE:
            return self._grammar(row).construction(row[PHRASING] - GRAMMAR_BASE).heldout
        return row[PHRASING] == self.heldout_phrasing

    def _grammar(self, row) -> Grammar:
        if self.grammar is None:
            raise ValueError(
                f"task family {self.name!r}: row {tuple(row)} has grammar phrasing "
                f"{row[PHRASING]} (>= {GRAMMAR_BASE}) but the family has no grammar"
            )
        return self.grammar

    def instruction(self, row: tuple[int, ...]) -> str:
        """The row's template (or grammar expansion, for phrasings >= ``GRAMMAR_BASE``)
        filled in with the names of its objects and zone."""
        names = {}
        if row[COLOUR] >= 0:
            names["colour"], names["shape"] = COLOURS[row[COLOUR]], SHAPES[row[SHAPE]]
        if row[ZONE] >= 0:
            names["zone"] = COLOURS[row[ZONE]]
        if row[COLOUR2] >= 0:
            names["colour2"], names["shape2"] = COLOURS[row[COLOUR2]], SHAPES[row[SHAPE2]]
        if row[PHRASING] >= GRAMMAR_BASE:
            return self._grammar(row).render(tuple(row), names)
        return self.templates[row[PHRASING]].format(**names)

    def subtasks(
        self, row: tuple[int, ...], colour: np.ndarray, shape: np.ndarray
    ) -> tuple[Subtask, ...]:
        """The subtasks task ``row`` decomposes into on a table whose object slots hold
        ``colour``/``shape`` (``[N]``, -1 absent): each one a task of its own whose predicate
        ends it (see ``anyskill.envs.tabletop.subtasks``, which orders and times them). By
        default one: the task itself, in its canonical (first template) phrasing."""
        slots = [
            _slot_of(colour, shape, row[c], row[s]) for c, s in ((COLOUR, SHAPE), (COLOUR2, SHAPE2))
        ]
        return (Subtask((*row[:PHRASING], 0), (slots[0], slots[1])),)

    # ---- inside jit: one env, unbatched ---------------------------------------------------
    @abc.abstractmethod
    def goal(self, env: Tabletop, physics: TabletopPhysics) -> tuple[jax.Array, jax.Array]:
        """A state that satisfies the instruction: ``(pusher [2], objects [N, 2])``
        positions; objects the instruction does not move stay where they are."""

    @abc.abstractmethod
    def success(self, env: Tabletop, physics: TabletopPhysics) -> jax.Array:
        """The instruction's predicate on the current state, a bool scalar."""

    @abc.abstractmethod
    def expert_target(self, physics: TabletopPhysics, style: EpisodeStyle) -> ExpertTarget:
        """What the scripted expert does from this state: walk the pusher to a point or push
        an object slot to a point (it adds noise and clips). ``style`` is the episode's
        style (speed, aim offset, ...)."""


@dataclasses.dataclass(frozen=True)
class Subtask:
    """One step of a task: a task row of its own (canonical phrasing 0; its text is
    ``tasks.instruction(row)``) and the object slots that row names on this table
    (``targets``, -1: none), which its family's ``success`` reads."""

    row: tuple[int, ...]
    targets: tuple[int, int] = (-1, -1)


def _slot_of(colour: np.ndarray, shape: np.ndarray, c: int, s: int) -> int:
    """The slot holding the object of colour ``c`` (colours are distinct on a table; -1 when
    ``c`` is -1 or no slot has it)."""
    if c < 0:
        return -1
    hit = np.flatnonzero((np.asarray(colour) == c) & ((np.asarray(shape) == s) | (s < 0)))
    return int(hit[0]) if len(hit) else -1


@struct.dataclass
class ExpertTarget:
    """One step of the scripted expert's plan, the same pytree for every family.

    goal: [2] where the pusher walks to (``walk``) or the object is pushed to
    slot: [] int32 object slot to push (ignored when walking)
    walk: [] bool: walk the pusher to ``goal`` instead of pushing
    """

    goal: jax.Array
    slot: jax.Array
    walk: jax.Array

    @classmethod
    def walk_to(cls, goal: jax.Array) -> ExpertTarget:
        return cls(goal, jnp.asarray(0, jnp.int32), jnp.asarray(True))

    @classmethod
    def push(cls, slot, goal: jax.Array) -> ExpertTarget:
        return cls(goal, jnp.asarray(slot, jnp.int32), jnp.asarray(False))


# ---- helpers the families share (inside jit) ---------------------------------------------
def named_zone(physics: TabletopPhysics) -> jax.Array:
    """``[2]`` centre of the zone the task row names (the red zone when it names none)."""
    return physics.zones[jnp.clip(physics.task[ZONE], 0, 3)]


def own_zones(physics: TabletopPhysics) -> jax.Array:
    """``[N, 2]`` centre of the zone of each object slot's own colour."""
    return physics.zones[jnp.clip(physics.colour, 0, 3)]


def target_slots(physics: TabletopPhysics) -> tuple[jax.Array, jax.Array]:
    """Object slots of the first and second named object (slot 0 when none is named)."""
    return jnp.maximum(physics.targets[0], 0), jnp.maximum(physics.targets[1], 0)


def rows_as_array(rows: list[tuple[int, ...]]) -> np.ndarray:
    """``[R, ROW_WIDTH]`` int32 (also for no rows)."""
    return np.array(rows, np.int32).reshape(-1, ROW_WIDTH)
