"""Task instances of the tabletop suite: the table of rows an env draws from, instructions,
the held-out split, and family name <-> code.

A *task instance* is one row of integers ``[family, colour, shape, zone, colour2, shape2,
phrasing]`` (unused entries are -1; layout in :mod:`anyskill.envs.tabletop.families.base`),
where ``family`` is the family's stable code. Each family (``families/``, looked up by name
in its registry) enumerates its rows and says which are held out: a row is held out when its
phrasing is the family's held-out phrasing (the last template) or its object x zone
combination is one the family holds out. Training data must come from ``split="train"``
only; ``split="heldout"`` measures generalization to unseen object x zone combinations and
unseen phrasings.

This module reads the registry and keeps the names callers used before families were files:
``FAMILIES`` (names ordered by code), ``TEMPLATES``, ``EPISODE_LENGTH`` and ``MIN_OBJECTS``
are computed from the registry each time they are read, so they include families registered
later. Select a family by :func:`family_code` / :func:`family_name`, never by a position.
"""

from __future__ import annotations

import functools

import numpy as np

from anyskill.envs.tabletop import families
from anyskill.envs.tabletop.families.base import (  # noqa: F401  (the row layout, public here)
    COLOUR,
    COLOUR2,
    FAMILY,
    HELDOUT_COMBOS,
    PHRASING,
    ROW_WIDTH,
    SHAPE,
    SHAPE2,
    ZONE,
    TaskFamily,
    rows_as_array,
)
from anyskill.envs.tabletop.scene import (  # noqa: F401  (the vocabulary, public here)
    COLOUR_RGB,
    COLOURS,
    SHAPE_BOUND,
    SHAPE_GEOMETRY,
    SHAPES,
)
from anyskill.names import unknown_name

#: the phrasing index held out in every built-in family (each has 5 templates, the last held
#: out); a family's own is ``family.heldout_phrasing``
HELDOUT_PHRASING = 4

SPLITS = ("train", "heldout", "all")


def family_code(name: str) -> int:
    """The code task rows of family ``name`` carry (unknown name -> "did you mean")."""
    return families.get(name).code


def family_name(code: int) -> str:
    """The name of the family whose task rows carry ``code``."""
    return families.by_code(int(code)).name


def task_table(names: tuple[str, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    """All instances of the families ``names`` in ``split``: ``(rows [R, 7] int32,
    family_offsets [len(names) + 1])``; rows of family ``i`` are
    ``rows[offsets[i]:offsets[i + 1]]``."""
    if split not in SPLITS:
        raise unknown_name("task split", split, SPLITS)
    return _task_table(tuple(families.get(n) for n in names), split)


@functools.cache
def _task_table(fams: tuple[TaskFamily, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    # keyed on the family objects, not names: a name re-registered with other rows is new
    blocks, offsets = [], [0]
    for family in fams:
        rows = family.task_rows()
        if split != "all":
            rows = [r for r in rows if family.is_heldout(r) == (split == "heldout")]
        blocks.append(rows_as_array(rows))
        offsets.append(offsets[-1] + len(rows))
    return np.concatenate(blocks), np.array(offsets, np.int32)


def _as_row(row) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(row).tolist())


def instruction(row) -> str:
    """The instruction of one task row."""
    row = _as_row(row)
    return families.by_code(row[FAMILY]).instruction(row)


def is_heldout(row) -> bool:
    """Whether a task row belongs to the held-out split."""
    row = _as_row(row)
    return families.by_code(row[FAMILY]).is_heldout(row)


def __getattr__(name: str):
    # Computed on every read so that families registered after import are included.
    registered = families.registered()
    if name == "FAMILIES":
        return tuple(f.name for f in registered)
    if name == "TEMPLATES":
        return {f.name: f.templates for f in registered}
    if name == "EPISODE_LENGTH":
        return {f.name: f.episode_length for f in registered}
    if name == "MIN_OBJECTS":
        return {f.name: f.min_objects for f in registered}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
