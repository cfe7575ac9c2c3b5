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
    INSTRUCTIONS,
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

#: ``heldout-language``: held-out phrasings or constructions of training object x zone
#: combinations; ``heldout-combination``: held-out combinations in training phrasings (both
#: are parts of ``heldout``; families without held-out combinations have none of the latter)
SPLITS = ("train", "heldout", "all", "heldout-language", "heldout-combination")


def family_code(name: str) -> int:
    """The code task rows of family ``name`` carry (unknown name -> "did you mean")."""
    return families.get(name).code


def family_name(code: int) -> str:
    """The name of the family whose task rows carry ``code``."""
    return families.by_code(int(code)).name


def task_table(
    names: tuple[str, ...], split: str, instructions: str = "templates"
) -> tuple[np.ndarray, np.ndarray]:
    """All instances of the families ``names`` in ``split``: ``(rows [R, 7] int32,
    family_offsets [len(names) + 1])``; rows of family ``i`` are
    ``rows[offsets[i]:offsets[i + 1]]``. ``instructions``: ``"templates"`` (the five fixed
    phrasings) or ``"grammar"`` (each family's instruction grammar, see ``grammar.py``)."""
    if split not in SPLITS:
        raise unknown_name("task split", split, SPLITS)
    if instructions not in INSTRUCTIONS:
        raise unknown_name("instruction source", instructions, INSTRUCTIONS)
    return _task_table(tuple(families.get(n) for n in names), split, instructions)


def in_split(family: TaskFamily, row: tuple[int, ...], split: str) -> bool:
    """Whether ``row`` of ``family`` belongs to ``split`` (see :data:`SPLITS`)."""
    if split == "all":
        return True
    if split == "train":
        return not family.is_heldout(row)
    if split == "heldout":
        return family.is_heldout(row)
    language, combination = family.heldout_language(row), _heldout_combination(family, row)
    if split == "heldout-language":
        return language and not combination
    if split == "heldout-combination":
        return combination and not language
    raise unknown_name("task split", split, SPLITS)


def _heldout_combination(family: TaskFamily, row: tuple[int, ...]) -> bool:
    """Held out for its objects and zone (whatever its phrasing): the row with a training
    phrasing in its place is held out."""
    return family.is_heldout((*row[:PHRASING], 0))


@functools.cache
def _task_table(
    fams: tuple[TaskFamily, ...], split: str, instructions: str
) -> tuple[np.ndarray, np.ndarray]:
    # keyed on the family objects, not names: a name re-registered with other rows is new
    blocks, offsets = [], [0]
    for family in fams:
        rows = [r for r in family.instruction_rows(instructions) if in_split(family, r, split)]
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


def content(row) -> tuple[int, ...]:
    """What a row asks for, without its phrasing: ``(family, colour, shape, zone, colour2,
    shape2)`` — equal for every phrasing (template or grammar) of one task."""
    return _as_row(row)[:PHRASING]


@functools.cache
def _contents_by_text() -> dict[str, tuple[int, ...] | None]:
    out: dict[str, tuple[int, ...] | None] = {}
    for family in families.registered():
        for instructions in INSTRUCTIONS:
            if instructions == "grammar" and family.grammar is None:
                continue
            for row in family.instruction_rows(instructions):
                text, c = family.instruction(row), row[:PHRASING]
                out[text] = c if out.get(text, c) == c else None  # None: ambiguous
    return out


def parse_instruction(text: str) -> tuple[int, ...] | None:
    """The content (:func:`content`) of the task whose template or grammar instruction is
    ``text``, or None for a text no registered family produces (another env's task, or
    one two tasks share). Families registered later than the first call are not seen."""
    return _contents_by_text().get(" ".join(str(text).split()))


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
