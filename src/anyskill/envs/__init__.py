"""Pure-JAX environments and the registry that names them."""

from __future__ import annotations

import functools

from anyskill.envs.base import Env, State
from anyskill.envs.maze import LAYOUTS, PointMaze
from anyskill.envs.tabletop import FAMILIES, Tabletop
from anyskill.names import unknown_name

#: env name -> constructor taking keyword overrides. Names are what ``--env`` accepts.
REGISTRY = {f"pointmaze-{name}": functools.partial(PointMaze, layout_name=name) for name in LAYOUTS}
#: tabletop: one env per task family, and "tabletop" drawing from all of them; each takes
#: ``split="train" | "heldout" | "all"``, ``num_objects``, ``image_size`` ... as overrides.
REGISTRY["tabletop"] = functools.partial(Tabletop, families=FAMILIES, name="tabletop")
for _family in FAMILIES:
    REGISTRY[f"tabletop-{_family}"] = functools.partial(
        Tabletop, families=(_family,), name=f"tabletop-{_family}"
    )


def make(name: str, **overrides) -> Env:
    """Build a registered environment, e.g. ``make("pointmaze-u")``."""
    if name not in REGISTRY:
        raise unknown_name("env", name, REGISTRY)
    return REGISTRY[name](**overrides)


def eval_env_name(name: str) -> str:
    """The far-goal evaluation variant of an env, if it has one (else the env itself)."""
    return name if name.endswith("-eval") or f"{name}-eval" not in REGISTRY else f"{name}-eval"


__all__ = ["Env", "State", "PointMaze", "Tabletop", "REGISTRY", "make", "eval_env_name"]
