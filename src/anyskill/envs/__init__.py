"""Pure-JAX environments and the registry that names them."""

from __future__ import annotations

import difflib

from anyskill.envs.base import Env, State
from anyskill.envs.maze import LAYOUTS, PointMaze

#: env name -> constructor. Names are what ``--env`` accepts.
REGISTRY = {f"pointmaze-{name}": (lambda n=name: PointMaze(layout_name=n)) for name in LAYOUTS}


def make(name: str, **overrides) -> Env:
    """Build a registered environment, e.g. ``make("pointmaze-u")``."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown env {name!r}.{hint} Known envs: {', '.join(sorted(REGISTRY))}")
    if overrides:
        layout = name.removeprefix("pointmaze-")
        return PointMaze(layout_name=layout, **overrides)
    return REGISTRY[name]()


def eval_env_name(name: str) -> str:
    """The far-goal evaluation variant of an env, if it has one (else the env itself)."""
    return name if name.endswith("-eval") or f"{name}-eval" not in REGISTRY else f"{name}-eval"


__all__ = ["Env", "State", "PointMaze", "REGISTRY", "make", "eval_env_name"]
