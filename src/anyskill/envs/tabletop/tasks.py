"""Task families, language templates and the held-out split of the tabletop suite.

A *task instance* is one row of integers ``[family, colour, shape, zone, colour2, shape2,
phrasing]`` (unused entries are -1). Its instruction is a template of the family filled in
with the names. Rows are enumerated here once, in numpy, and split into ``train`` and
``heldout``: a row is held out when its combination is in :data:`HELDOUT_COMBOS` or its
phrasing is the family's held-out phrasing (the last template). Training data must come from
``split="train"`` only; ``split="heldout"`` measures generalization to unseen
object x zone combinations and unseen phrasings.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from anyskill.names import unknown_name

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = np.array([[214, 48, 49], [46, 160, 67], [38, 98, 217], [232, 185, 20]], np.uint8)
SHAPES = ("block", "disc", "bar")
#: (half extent x, half extent y, rounding radius) of each shape's collision body
SHAPE_GEOMETRY = np.array([[0.085, 0.085, 0.015], [0.0, 0.0, 0.1], [0.13, 0.045, 0.015]])
#: radius of the disc that bounds each shape (for spawning and gather distances)
SHAPE_BOUND = np.hypot(SHAPE_GEOMETRY[:, 0], SHAPE_GEOMETRY[:, 1]) + SHAPE_GEOMETRY[:, 2]

FAMILY, COLOUR, SHAPE, ZONE, COLOUR2, SHAPE2, PHRASING = range(7)
ROW_WIDTH = 7

TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": (
        "move the gripper to the {zone} zone",
        "go to the {zone} area",
        "reach the {zone} square",
        "put the end effector in the {zone} zone",
        "head over to the {zone} region",  # held out
    ),
    "push": (
        "push the {colour} {shape} into the {zone} zone",
        "move the {colour} {shape} to the {zone} area",
        "slide the {colour} {shape} onto the {zone} square",
        "put the {colour} {shape} in the {zone} zone",
        "shove the {colour} {shape} over to the {zone} region",  # held out
    ),
    "sort": (
        "sort every object into the zone of its colour",
        "put each object in the zone with the same colour",
        "move all objects to their matching zones",
        "tidy up: every object goes to its own colour's zone",
        "match each piece with the area of its colour",  # held out
    ),
    "gather": (
        "push the {colour} {shape} next to the {colour2} {shape2}",
        "move the {colour} {shape} so it touches the {colour2} {shape2}",
        "bring the {colour} {shape} to the {colour2} {shape2}",
        "put the {colour} {shape} beside the {colour2} {shape2}",
        "nudge the {colour} {shape} against the {colour2} {shape2}",  # held out
    ),
}
FAMILIES = tuple(TEMPLATES)
#: the phrasing index held out in every family
HELDOUT_PHRASING = 4
#: minimum number of objects on the table each family needs
MIN_OBJECTS = {"reach": 0, "push": 1, "sort": 2, "gather": 2}
#: episode length (control steps at 10 Hz) per family
EPISODE_LENGTH = {"reach": 40, "push": 100, "sort": 200, "gather": 100}

# Held-out combinations, documented here and in docs/tasks.md:
#   push:   (colour, shape, zone) with zone == the colour after it in COLOURS and the shape
#           index == colour index mod 3, e.g. "red block -> green zone",
#           "green disc -> blue zone", "blue bar -> yellow zone", "yellow block -> red zone";
#   gather: (colour, shape) next to (colour2, any shape) for the same four (colour, shape)
#           with colour2 == the colour after it, e.g. "red block next to the green ...".
#   reach, sort: only the held-out phrasing.
HELDOUT_COMBOS = frozenset(
    (c, c % len(SHAPES), (c + 1) % len(COLOURS)) for c in range(len(COLOURS))
)


def _is_heldout(row: tuple[int, ...]) -> bool:
    family = FAMILIES[row[FAMILY]]
    if row[PHRASING] == HELDOUT_PHRASING:
        return True
    if family == "push":
        return (row[COLOUR], row[SHAPE], row[ZONE]) in HELDOUT_COMBOS
    if family == "gather":
        return (row[COLOUR], row[SHAPE], row[COLOUR2]) in HELDOUT_COMBOS
    return False


def _family_rows(family: str) -> list[tuple[int, ...]]:
    f = FAMILIES.index(family)
    n_c, n_s, n_p = len(COLOURS), len(SHAPES), len(TEMPLATES[family])
    rows = []
    if family == "reach":
        for z, p in itertools.product(range(n_c), range(n_p)):
            rows.append((f, -1, -1, z, -1, -1, p))
    elif family == "push":
        for c, s, z, p in itertools.product(range(n_c), range(n_s), range(n_c), range(n_p)):
            rows.append((f, c, s, z, -1, -1, p))
    elif family == "sort":
        rows = [(f, -1, -1, -1, -1, -1, p) for p in range(n_p)]
    elif family == "gather":
        for c, s, c2, s2, p in itertools.product(
            range(n_c), range(n_s), range(n_c), range(n_s), range(n_p)
        ):
            if c != c2:
                rows.append((f, c, s, -1, c2, s2, p))
    return rows


SPLITS = ("train", "heldout", "all")


@functools.cache
def task_table(families: tuple[str, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    """All instances of ``families`` in ``split``: ``(rows [R, 7] int32, family_offsets
    [len(families) + 1])``; rows of family ``i`` are ``rows[offsets[i]:offsets[i + 1]]``."""
    if split not in SPLITS:
        raise unknown_name("task split", split, SPLITS)
    blocks, offsets = [], [0]
    for family in families:
        if family not in TEMPLATES:
            raise unknown_name("task family", family, TEMPLATES)
        rows = _family_rows(family)
        if split != "all":
            rows = [r for r in rows if _is_heldout(r) == (split == "heldout")]
        blocks.append(np.array(rows, np.int32).reshape(-1, ROW_WIDTH))
        offsets.append(offsets[-1] + len(rows))
    return np.concatenate(blocks), np.array(offsets, np.int32)


def instruction(row) -> str:
    """The instruction of one task row."""
    row = [int(v) for v in np.asarray(row).tolist()]
    family = FAMILIES[row[FAMILY]]
    names = {}
    if row[COLOUR] >= 0:
        names["colour"], names["shape"] = COLOURS[row[COLOUR]], SHAPES[row[SHAPE]]
    if row[ZONE] >= 0:
        names["zone"] = COLOURS[row[ZONE]]
    if row[COLOUR2] >= 0:
        names["colour2"], names["shape2"] = COLOURS[row[COLOUR2]], SHAPES[row[SHAPE2]]
    return TEMPLATES[family][row[PHRASING]].format(**names)


def is_heldout(row) -> bool:
    """Whether a task row belongs to the held-out split."""
    return _is_heldout(tuple(int(v) for v in np.asarray(row).tolist()))
