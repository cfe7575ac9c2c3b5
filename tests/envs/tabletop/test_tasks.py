"""Task rows, instructions and the held-out split: what training may never see."""

from __future__ import annotations

import string

import jax
import numpy as np
import pytest

from anyskill.envs import make
from anyskill.envs.tabletop import tasks as T

ALL = T.FAMILIES


def rows(split: str, families=ALL) -> np.ndarray:
    return T.task_table(tuple(families), split)[0]


def as_set(a: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in r) for r in a}


def combo(row) -> tuple[int, int, int] | None:
    """The (colour, shape, zone-or-colour2) combination a row is held out for, if any."""
    family = T.family_name(row[T.FAMILY])
    if family == "push":
        return int(row[T.COLOUR]), int(row[T.SHAPE]), int(row[T.ZONE])
    if family == "gather":
        return int(row[T.COLOUR]), int(row[T.SHAPE]), int(row[T.COLOUR2])
    return None


def test_splits_partition_all_rows():
    """train and heldout are disjoint, their union is 'all', and no row is duplicated."""
    train, heldout, everything = rows("train"), rows("heldout"), rows("all")
    assert len(as_set(everything)) == len(everything)
    assert as_set(train).isdisjoint(as_set(heldout))
    assert as_set(train) | as_set(heldout) == as_set(everything)
    assert len(train) + len(heldout) == len(everything)
    # per family too, with the family offsets pointing at the family's own rows
    for split in ("train", "heldout", "all"):
        table, offsets = T.task_table(ALL, split)
        for i, family in enumerate(ALL):
            block = table[offsets[i] : offsets[i + 1]]
            assert len(block) > 0 and (block[:, T.FAMILY] == T.family_code(family)).all()
            np.testing.assert_array_equal(block, rows(split, [family]))


def test_every_heldout_row_has_a_reason_and_no_train_row_has_one():
    """A held-out row uses the held-out phrasing or a held-out combination; a train row
    uses neither. Every family holds out its phrasing; push and gather also hold out all
    four documented combinations (and with every other phrasing, not just the held-out one)."""
    for row in rows("heldout"):
        assert row[T.PHRASING] == T.HELDOUT_PHRASING or combo(row) in T.HELDOUT_COMBOS, row
    for row in rows("train"):
        assert row[T.PHRASING] != T.HELDOUT_PHRASING, row
        assert combo(row) not in T.HELDOUT_COMBOS, row
    heldout = rows("heldout")
    for family in ALL:
        mine = heldout[heldout[:, T.FAMILY] == T.family_code(family)]
        assert (mine[:, T.PHRASING] == T.HELDOUT_PHRASING).any()
        if family in ("push", "gather"):
            unseen = {combo(r) for r in mine if r[T.PHRASING] != T.HELDOUT_PHRASING}
            assert unseen == set(T.HELDOUT_COMBOS)
    # the documented examples ("red block -> green zone", "green disc -> blue zone", ...)
    named = {
        (T.COLOURS.index(c), T.SHAPES.index(s), T.COLOURS.index(z))
        for c, s, z in [
            ("red", "block", "green"),
            ("green", "disc", "blue"),
            ("blue", "bar", "yellow"),
            ("yellow", "block", "red"),
        ]
    }
    assert named == set(T.HELDOUT_COMBOS)


def test_every_template_formats_for_every_row():
    """Every phrasing of every family formats with the names a row provides, with no field
    left over or missing, and fills in exactly the row's names."""
    for row in rows("all"):
        family = T.family_name(row[T.FAMILY])
        for p in range(len(T.TEMPLATES[family])):
            text = T.instruction(np.array([*row[: T.PHRASING], p], np.int32))
            assert "{" not in text and "}" not in text, text
            if row[T.COLOUR] >= 0:
                assert f"{T.COLOURS[row[T.COLOUR]]} {T.SHAPES[row[T.SHAPE]]}" in text
            if row[T.ZONE] >= 0:
                assert f"{T.COLOURS[row[T.ZONE]]} " in text
            if row[T.COLOUR2] >= 0:
                assert f"{T.COLOURS[row[T.COLOUR2]]} {T.SHAPES[row[T.SHAPE2]]}" in text
    # fields used by the templates are exactly those the rows carry, per family
    fields = {"reach": {"zone"}, "push": {"colour", "shape", "zone"}, "sort": set()}
    fields["gather"] = {"colour", "shape", "colour2", "shape2"}
    for family, templates in T.TEMPLATES.items():
        for template in templates:
            used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
            assert used == fields[family], (family, template)


def test_train_instructions_never_use_the_heldout_phrasing():
    """No train instruction equals any string of the held-out phrasing, and within a family
    the five phrasings never coincide (else holding one out would hold out nothing)."""
    heldout_phrasing = {
        T.instruction(r) for r in rows("all") if r[T.PHRASING] == T.HELDOUT_PHRASING
    }
    train = {T.instruction(r) for r in rows("train")}
    assert train.isdisjoint(heldout_phrasing)
    for family, templates in T.TEMPLATES.items():
        assert len(set(templates)) == len(templates), family
    # each train row's instruction is unique to it (the text determines the task)
    assert len(train) == len(rows("train"))


def test_resets_of_the_train_split_never_draw_a_heldout_task(resets):
    """Sampling ``reset`` (split="train", all families) never yields a held-out row, and
    reaches every family and many distinct rows."""
    tasks = np.asarray(resets.physics.task)
    assert not any(T.is_heldout(t) for t in tasks)
    assert set(tasks[:, T.FAMILY]) == {T.family_code(f) for f in ALL}
    assert len(as_set(tasks)) > 100  # 240 draws from 580 rows: not stuck on a few
    assert as_set(tasks) <= as_set(rows("train"))


def test_resets_of_the_heldout_split_draw_only_heldout_tasks():
    """``split="heldout"`` draws only held-out rows: unseen combinations *and* unseen
    phrasings both show up."""
    env = make("tabletop", split="heldout")
    reset = jax.jit(env.reset)
    key = jax.random.key(7)
    tasks = np.stack(
        [np.asarray(reset(jax.random.fold_in(key, i)).physics.task) for i in range(160)]
    )
    assert all(T.is_heldout(t) for t in tasks)
    assert as_set(tasks) <= as_set(rows("heldout"))
    assert set(tasks[:, T.FAMILY]) == {T.family_code(f) for f in ALL}
    assert (tasks[:, T.PHRASING] != T.HELDOUT_PHRASING).any()  # held out by combination
    assert (tasks[:, T.PHRASING] == T.HELDOUT_PHRASING).any()  # held out by phrasing


def test_unknown_names_get_a_suggestion():
    """Unknown split or family names raise ValueError naming the closest known name."""
    with pytest.raises(ValueError, match="unknown task split 'heldot'.*Did you mean 'heldout'"):
        T.task_table(ALL, "heldot")
    with pytest.raises(ValueError, match="unknown task family 'pussh'.*Did you mean 'push'"):
        T.task_table(("pussh",), "train")
