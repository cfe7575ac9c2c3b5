"""The registry of tabletop task families, looked up by name (or by the code in a task row).

Every module of this package except ``base`` is a family file: it defines one
:class:`~anyskill.envs.tabletop.families.base.TaskFamily` instance called ``FAMILY``, which
is registered when the package is imported. Everything about a family lives in its file:
name, stable code, templates, task rows and held-out rule, episode length, goal state,
success predicate and the scripted expert's behaviour.

How to add a family (one new file plus its tests):

1. Create ``families/<name>.py`` with a ``TaskFamily`` subclass implementing ``task_rows``
   (every instance, via ``self.row(...)``), ``goal``, ``success`` and ``expert_target`` (and
   ``is_heldout`` if more than the last phrasing is held out), and
   ``FAMILY = YourFamily(name=..., code=..., templates=(...), episode_length=...,
   min_objects=...)``. Pick a ``code`` no registered family uses (``by_code`` lists them);
   it is stored in datasets, so never change it afterwards.
2. Add tests next to the others in ``tests/envs/tabletop/`` (the predicate on hand-built
   states, and that the expert solves it). Nothing else changes: the env ``tabletop-<name>``
   appears, the mixed ``tabletop`` env draws it too, and ``tasks``, the env and the expert
   find it here. ``tests/envs/tabletop/test_families.py`` registers a toy family from a test
   file with :func:`register` the same way.

Inside jit, behaviour is selected with :func:`dispatch` over every registered family: each
family's branch is computed and one is selected (``lax.select_n``, as ``lax.switch`` does
under ``vmap``) over the families ordered by code, the branch found by comparing codes,
never by a position in a list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import TypeVar

import jax
import jax.numpy as jnp

from anyskill.envs.tabletop.families.base import FAMILY, PHRASING, ROW_WIDTH, TaskFamily
from anyskill.envs.tabletop.grammar import GRAMMAR_BASE
from anyskill.names import unknown_name

__all__ = [
    "TaskFamily",
    "by_code",
    "dispatch",
    "get",
    "lookup",
    "names",
    "register",
    "registered",
    "unregister",
]

_BY_NAME: dict[str, TaskFamily] = {}
#: modules of this package that are not family files
_NOT_FAMILIES = {"base"}

T = TypeVar("T")


def register(family: TaskFamily) -> TaskFamily:
    """Add ``family``; its name and code must be new. Checks its task rows (width, code
    column, phrasing range, instructions that format) so a broken family fails here, not
    inside an env."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"register() takes a TaskFamily instance, got {type(family).__name__}")
    if family.name in _BY_NAME:
        raise ValueError(
            f"task family {family.name!r} is already registered; unregister it first or "
            "choose another name"
        )
    for other in _BY_NAME.values():
        if other.code == family.code:
            raise ValueError(
                f"task family {family.name!r} has code {family.code}, already used by "
                f"{other.name!r}; codes in use: {sorted(f.code for f in _BY_NAME.values())}"
            )
    _check_rows(family)
    _BY_NAME[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests that register a toy family clean up with this)."""
    get(name)  # unknown name -> "did you mean"
    del _BY_NAME[name]


def get(name: str) -> TaskFamily:
    """The registered family called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise unknown_name("task family", name, _BY_NAME) from None


def by_code(code: int) -> TaskFamily:
    """The registered family whose task rows carry ``code``."""
    for family in _BY_NAME.values():
        if family.code == code:
            return family
    known = ", ".join(f"{f.code} ({f.name})" for f in registered())
    raise ValueError(f"no task family has code {code!r}; known codes: {known}")


def registered() -> tuple[TaskFamily, ...]:
    """Every registered family, ordered by code."""
    return tuple(sorted(_BY_NAME.values(), key=lambda f: f.code))


def names() -> tuple[str, ...]:
    """Names of the registered families, ordered by code."""
    return tuple(f.name for f in registered())


# ---- inside jit ----------------------------------------------------------------------------
def _ordered(families: Iterable[TaskFamily]) -> tuple[TaskFamily, ...]:
    unique = {f.code: f for f in families}
    if not unique:
        raise ValueError("dispatch needs at least one task family, got none")
    return tuple(unique[c] for c in sorted(unique))


def _branch(code: jax.Array, ordered: tuple[TaskFamily, ...]) -> jax.Array:
    """Index into ``ordered`` of the family whose code is ``code`` (0 when none is)."""
    codes = jnp.asarray([f.code for f in ordered], jnp.int32)
    return jnp.argmax(codes == code)


def dispatch(code: jax.Array, families: Iterable[TaskFamily], call: Callable[[TaskFamily], T]) -> T:
    """``call(family)`` for the family among ``families`` whose code is the traced ``code``.

    Every family's branch is computed and the result selected with ``lax.select_n`` over
    the families ordered by code (what ``lax.switch`` becomes under ``vmap``), so an env
    computes the same program batched or not, and each family's values come out bit for bit
    as they did when the four families were one function. Every branch must return the same
    pytree of shapes and dtypes. A code that none of them has selects the lowest code."""
    ordered = _ordered(families)
    outs = [call(f) for f in ordered]
    if len(outs) == 1:
        return outs[0]
    index = _branch(code, ordered)
    return jax.tree.map(lambda *cases: jax.lax.select_n(index, *cases), *outs)


def lookup(
    code: jax.Array, families: Iterable[TaskFamily], value: Callable[[TaskFamily], int]
) -> jax.Array:
    """``value(family)`` (a static int, e.g. the episode length) as int32 for the family
    whose code is the traced ``code``, by indexing a table of the values ordered by code."""
    ordered = _ordered(families)
    return jnp.asarray([value(f) for f in ordered], jnp.int32)[_branch(code, ordered)]


def _check_rows(family: TaskFamily) -> None:
    rows = family.task_rows()
    what = f"task family {family.name!r}"
    if not rows:
        raise ValueError(f"{what}: task_rows() returned no rows")
    for row in rows:
        if len(row) != ROW_WIDTH or row[FAMILY] != family.code:
            raise ValueError(
                f"{what}: task row {row} must have {ROW_WIDTH} entries and start with the "
                f"family's code {family.code}; build rows with family.row(...)"
            )
        if not 0 <= row[PHRASING] < len(family.templates):
            raise ValueError(
                f"{what}: task row {row} has phrasing {row[PHRASING]}, outside the "
                f"{len(family.templates)} templates"
            )
        try:
            family.instruction(row)
        except (KeyError, IndexError) as e:
            raise ValueError(
                f"{what}: task row {row} cannot fill template "
                f"{family.templates[row[PHRASING]]!r}: it names no {e}"
            ) from None
    if family.grammar is not None:
        # one expansion per construction of the first content: a slot the rows do not name
        # fails here, not in an env
        first = rows[0][:PHRASING]
        for g, c in enumerate(family.grammar.constructions):
            try:
                family.instruction((*first, GRAMMAR_BASE + g))
            except (KeyError, IndexError) as e:
                raise ValueError(
                    f"{what}: grammar construction {c.name!r} cannot be filled in for task "
                    f"row {rows[0]}: it names no {e}"
                ) from None


def _register_family_files() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, TaskFamily):
            raise TypeError(
                f"{module.__file__}: a family file must define FAMILY = <TaskFamily instance>, "
                f"got {type(family).__name__}"
            )
        register(family)


_register_family_files()
